"""Every config.json shape that kairos-rs users have on disk must validate and normalise.

The shapes are exercised through the project's own fixtures (tests/fixtures/kairos_rs/, one file
per shape family, written from the kairos-rs format with hosts that can never be contacted), so the
suite passes in a bare clone. The kairos-rs files themselves live outside the repository
(``../shared/kairos-rs-configs/``, which must not be copied in); they are validated too when that
directory is next to the checkout, and that test is skipped, naming the directory, when it is not.
Nothing here starts a gateway: these backends are only validated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kairos.config import GatewayConfig, load_file
from kairos.config.ratelimit import RateLimitConfig
from kairos.config.retry import RetryConfig
from tests.conftest import SHARED_CONFIGS
from tests.processes import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "kairos_rs"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
# One fixture per shape family; tests/fixtures/kairos_rs/README.md says what each one covers.
FAMILIES = {
    "legacy_routes.json",
    "load_balancing.json",
    "multi_protocol.json",
    "ai_routing.json",
    "compose_services.json",
    "readme_quickstart.json",
}


def _corpus_params() -> list[pytest.ParameterSet]:
    """The external kairos-rs files, or one skipped case that names the missing directory.

    Computed at collection time: an empty parametrize would make pytest report a bare
    "got empty parameter set" skip that does not say what is missing.
    """
    if not SHARED_CONFIGS.is_dir():
        reason = f"{SHARED_CONFIGS} is absent (kairos-rs's own files are not part of this repository)"
    elif not (files := sorted(SHARED_CONFIGS.glob("*.json"))):
        reason = f"{SHARED_CONFIGS} holds no *.json file"
    else:
        return [pytest.param(path, id=path.name) for path in files]
    return [pytest.param(None, id="corpus-absent", marks=pytest.mark.skip(reason=reason))]


def _load(name: str) -> GatewayConfig:
    return load_file(FIXTURES / name).config


def _validate(path: Path) -> tuple[str, int]:
    """Run ``kairos validate PATH`` as a user would; returns (its last line, its route count).

    A subprocess, not load_file(): the command's exit code and summary line are the contract.
    """
    result = subprocess.run(
        [sys.executable, "-m", "kairos", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error:" not in result.stdout, result.stdout
    return result.stdout.splitlines()[-1], len(json.loads(path.read_text())["routers"])


def test_every_shape_family_has_its_fixture() -> None:
    """A deleted or renamed fixture must fail here, not silently shrink the validation below."""
    assert {path.name for path in FIXTURE_FILES} == FAMILIES, FIXTURES


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.name)
def test_kairos_validate_accepts_every_fixture(path: Path) -> None:
    """No warning either: an "unknown key, ignored" would mean a kairos-rs key was dropped."""
    last, routes = _validate(path)
    assert last == f"{path}: OK ({routes} route(s), 0 warning(s))"


@pytest.mark.parametrize("path", _corpus_params())
def test_kairos_validate_accepts_the_external_kairos_rs_files(path: Path) -> None:
    """The real files, when present, catch shapes the fixtures may have missed (warnings are fine)."""
    last, routes = _validate(path)
    assert last.startswith(f"{path}: OK ({routes} route(s), ")


def test_multi_protocol_normalises_every_shape_kairos_rs_rejected() -> None:
    """config_multi_protocol.json's shapes, which kairos-rs's own loader cannot read, must still land
    in the one internal model: README rate limit, weighted http, ws, ftp:// and bare-IP DNS backends."""
    cfg = _load("multi_protocol.json")
    # {"strategy": "sliding_window", "requests_per_minute": 90, "burst_size": 135}: burst_size stays
    # the bucket capacity (the most admitted at once), it is not added to the quota.
    assert cfg.rate_limit == RateLimitConfig(
        strategy="PerIP",
        requests_per_window=90,
        window_duration=60,
        burst_size=135,
        window_type="SlidingWindow",
    )
    assert cfg.rate_limit.burst_allowance == 0
    http, websocket, ftp, dns = cfg.routers
    assert (http.protocol, websocket.protocol, ftp.protocol, dns.protocol) == (
        "http",
        "websocket",
        "ftp",
        "dns",
    )
    assert [b.weight for b in http.upstreams] == [3, 1] and http.load_balancing_strategy == "weighted"
    assert http.retry is not None and http.retry.retry_on_status_codes == (502, 504)
    assert websocket.upstreams[0].scheme == "ws"
    # 2121, not ftp's default 21: the file's port is kept.
    assert (ftp.upstreams[0].scheme, ftp.upstreams[0].port) == ("ftp", 2121)
    assert [(b.scheme, b.hostname, b.port) for b in dns.upstreams] == [
        ("", "192.0.2.53", 53),
        ("", "198.51.100.53", 5353),
    ]


def test_legacy_routes_become_single_backends() -> None:
    """Route-level host+port (kairos-rs's original shape) must become one backend, so the proxy
    only ever deals with ``backends``; the PascalCase rate limit keeps burst_allowance as written."""
    cfg = _load("legacy_routes.json")
    pictures = next(r for r in cfg.routers if r.external_path == "/pictures/{code}")
    assert [(b.host, b.port, b.weight) for b in pictures.upstreams] == [
        ("https://images.backend-c.invalid", 8443, 1)
    ]
    # No protocol / load_balancing_strategy keys (kairos-gateway's config.json): kairos-rs defaults.
    landing = next(r for r in cfg.routers if r.external_path == "/landing/v2")
    assert (landing.protocol, landing.load_balancing_strategy) == ("http", "round_robin")
    assert [(b.host, b.port) for b in landing.upstreams] == [("https://landing.backend-b.invalid", 443)]
    assert cfg.rate_limit == RateLimitConfig(
        strategy="PerIP",
        requests_per_window=240,
        window_duration=30,
        burst_allowance=15,
        window_type="SlidingWindow",
        enable_redis=False,
        redis_key_prefix="fixture_rl",
    )
    assert cfg.rate_limit.burst_size is None
    assert cfg.jwt is not None and cfg.jwt.required_claims == ("sub",)
    assert cfg.jwt.audience == "fixture-clients"
    assert cfg.routers[-1].upstreams[0].health_check_path is None


def test_load_balancing_strategies_and_kairos_rs_retry_blocks() -> None:
    """Each strategy name and the kairos-rs retry key names must survive as written, not default."""
    cfg = _load("load_balancing.json")
    assert [r.load_balancing_strategy for r in cfg.routers] == [
        "round_robin",
        "round_robin",
        "weighted",
        "ip_hash",
        "random",
    ]
    _, mirrored, weighted, _, _ = cfg.routers
    assert [(b.host, b.port) for b in mirrored.upstreams] == [("http://orders.backend-b.invalid", 8010)] * 2
    assert [b.weight for b in weighted.upstreams] == [3, 1]
    assert weighted.retry == RetryConfig(
        max_retries=1,
        initial_backoff_ms=40,
        max_backoff_ms=400,
        backoff_multiplier=1.5,
        retry_on_status_codes=(503,),
        retry_on_connection_error=False,
    )
    assert cfg.rate_limit is not None and cfg.rate_limit.strategy == "PerIPAndRoute"
    assert cfg.jwt is not None and cfg.jwt.required_claims == ("sub", "exp", "iat")


def test_ai_routing_policy() -> None:
    """kairos-rs's externally tagged ``{"content_analysis": {"model": ...}}`` becomes kind + model."""
    cfg = _load("ai_routing.json")
    assert cfg.ai is not None and (cfg.ai.provider, cfg.ai.model) == ("openai", "gpt-4o-mini")
    (assist,) = cfg.routers
    assert assist.ai_policy is not None
    assert (assist.ai_policy.strategy.kind, assist.ai_policy.strategy.model) == (
        "content_analysis",
        "gpt-4.1-nano",
    )
    assert assist.ai_policy.fallback_backend_index == 1


def test_compose_services_keep_underscored_hosts_and_audience_list() -> None:
    """docker-compose service names hold underscores (not valid DNS labels, yet what users write);
    a list ``audience`` accepts any one of several audiences."""
    cfg = _load("compose_services.json")
    hostnames = [b.hostname for r in cfg.routers for b in r.upstreams]
    assert hostnames == ["status_api.invalid", "notify_ws.invalid"]
    assert cfg.jwt is not None and cfg.jwt.audience == ("fixture-apps", "fixture-mobile")


def test_readme_quickstart_shape() -> None:
    """The kairos-rs README's example: top-level ``jwt_secret`` and ``algorithm`` + per-second rate."""
    cfg = _load("readme_quickstart.json")
    assert cfg.jwt is not None and cfg.jwt.secret == "kairos-fixture-readme-quickstart-key-not-a-real-secret"
    # {"algorithm": "token_bucket", "requests_per_second": 25, "burst_size": 40}
    assert cfg.rate_limit == RateLimitConfig(
        strategy="PerIP",
        requests_per_window=25,
        window_duration=1,
        burst_size=40,
        window_type="TokenBucket",
    )
    assert cfg.rate_limit.burst_allowance == 0
    assert [len(r.upstreams) for r in cfg.routers] == [1, 1]
