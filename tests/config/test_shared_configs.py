"""Every config.json that kairos-rs ships must validate (validate only: their backends are remote)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kairos.config import load_file
from kairos.config.ratelimit import RateLimitConfig
from tests.conftest import SHARED_CONFIGS
from tests.processes import ROOT

SHARED_FILES = sorted(SHARED_CONFIGS.glob("*.json"))


def test_the_shared_configs_are_there() -> None:
    names = {path.name for path in SHARED_FILES}
    assert {"config.json", "config_multi_protocol.json", "config_ai_test.json"} <= names, SHARED_CONFIGS


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda path: path.name)
def test_kairos_validate_accepts_every_shared_config(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kairos", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    routes = len(json.loads(path.read_text())["routers"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{path}: OK ({routes} route(s), ")
    assert "error:" not in result.stdout


def test_config_multi_protocol_normalises_every_shape_kairos_rs_rejected() -> None:
    cfg = load_file(SHARED_CONFIGS / "config_multi_protocol.json").config
    # {"strategy": "sliding_window", "requests_per_minute": 100, "burst_size": 150}
    assert cfg.rate_limit == RateLimitConfig(
        strategy="PerIP",
        requests_per_window=100,
        window_duration=60,
        burst_allowance=150,
        window_type="SlidingWindow",
    )
    http, websocket, ftp, dns = cfg.routers
    assert (http.protocol, websocket.protocol, ftp.protocol, dns.protocol) == (
        "http",
        "websocket",
        "ftp",
        "dns",
    )
    assert [b.weight for b in http.upstreams] == [2, 1] and http.load_balancing_strategy == "weighted"
    assert ftp.upstreams[0].scheme == "ftp" and ftp.upstreams[0].port == 21
    assert [(b.hostname, b.port) for b in dns.upstreams] == [("8.8.8.8", 53), ("1.1.1.1", 53)]


def test_config_json_legacy_routes_become_single_backends() -> None:
    cfg = load_file(SHARED_CONFIGS / "config.json").config
    cats = next(r for r in cfg.routers if r.external_path == "/cats/{id}")
    assert [(b.host, b.port, b.weight) for b in cats.upstreams] == [("https://http.cat", 443, 1)]
    assert cfg.rate_limit is not None and cfg.rate_limit.window_type == "SlidingWindow"
    assert cfg.jwt is not None and cfg.jwt.required_claims == ("sub",)


def test_config_ai_test_policy() -> None:
    (smart,) = load_file(SHARED_CONFIGS / "config_ai_test.json").config.routers
    assert smart.ai_policy is not None
    assert (smart.ai_policy.strategy.kind, smart.ai_policy.strategy.model) == (
        "content_analysis",
        "gpt-3.5-turbo",
    )
    assert smart.ai_policy.fallback_backend_index == 0
