"""A reload that adds the first route needing a provider: litellm is loaded in the background
while the gateway keeps serving (requests fall back meanwhile, never fail), then decisions start."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ai.test_ai_routing import REFUND, ai_header, ai_route, served_by
from tests.processes import Server, backend, free_port, gateway_server, route, server_process


@pytest.fixture(scope="module")
def provider(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.fake_llm", "--port", str(port), "--rule", "refund=1"]
    with server_process(args, port, module_tmp / f"fake-llm-reload-{port}.log") as server:
        yield server


def test_reload_adding_the_first_ai_route_loads_litellm_while_serving(
    module_tmp: Path, provider: Server, upstream: Server, upstream_b: Server
) -> None:
    two = [backend(upstream), backend(upstream_b)]
    plain: dict[str, Any] = {"version": 1, "routers": [route("/plain", "/echo", two, ("POST",))]}
    with gateway_server(module_tmp, plain, env={"KAIROS_CONFIG_WATCH": "false"}) as gateway:
        client = httpx.Client(base_url=gateway.url, timeout=30)
        assert "litellm" not in gateway.output()
        with_ai = {
            "version": 1,
            "ai": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "api_key": "sk-reloadtest-0123456789abcdef",
                "api_base": f"{provider.url}/v1",
                "timeout_ms": 1500,
            },
            "routers": [*plain["routers"], ai_route("/ai", "/echo", two, cache_ttl_secs=0)],
        }
        (module_tmp / f"config-{gateway.port}.json").write_text(json.dumps(with_ai))
        assert client.post("/api/config/reload").status_code == 200
        outcomes = []
        deadline = time.monotonic() + 120  # litellm's import: ~5 s here, more on a busy machine
        while time.monotonic() < deadline:
            response = client.post("/ai", json=REFUND)
            served_by(response)  # answered 200 while litellm loads: a fallback, never an error
            outcomes.append(ai_header(response))
            if outcomes[-1] == ("1", "chosen"):
                break
            time.sleep(0.25)
        assert outcomes[-1] == ("1", "chosen"), outcomes[-5:]
        assert client.post("/plain", json=REFUND).status_code == 200
        client.close()
