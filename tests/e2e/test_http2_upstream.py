"""Backends marked ``"http2": true`` go through the httpx engine and really speak HTTP/2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Server, backend, free_port, gateway_server, route, server_process


@pytest.fixture(scope="module")
def h2_upstream(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "hypercorn", "tests.servers.h2_upstream:app", "--bind", f"127.0.0.1:{port}"]
    with server_process(args, port, module_tmp / "h2.log") as server:
        yield server


def test_http2_backend_uses_http2(module_tmp: Path, h2_upstream: Server, upstream: Server) -> None:
    config = {
        "version": 1,
        "routers": [
            route("/h2/{id}", "/items/{id}", [backend(h2_upstream, http2=True)], ("GET", "POST")),
            route("/h1", "/echo", [backend(upstream)]),
        ],
    }
    with (
        gateway_server(module_tmp, config) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as client,
    ):
        response = client.post("/h2/7?q=1", content=b"x" * 100_000, headers={"X-Request-ID": "h2-test"})
        assert response.status_code == 200
        data = response.json()
        assert data["http_version"] == "2"
        assert data["path"] == "/items/7"
        assert data["query_string"] == "q=1"
        assert data["body_bytes"] == 100_000
        assert data["x_request_id"] == "h2-test"
        # The default engine still serves HTTP/1.1 backends beside it.
        assert client.get("/h1").json()["server"] == "a"
