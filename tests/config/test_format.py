"""The kairos-rs config.json format, as its code parses it and as its docs spell it.

Every alias must land in the same internal model as the canonical spelling, so the rest of the
gateway never has to know which one a file used.
"""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config import BackendConfig, ConfigError, GatewayConfig, RouteConfig
from kairos.config.ai import AiStrategy
from kairos.config.ratelimit import CompositeStrategy, RateLimitConfig
from kairos.config.retry import RetryConfig
from kairos.routing.route import allowed_methods
from tests.config.builders import SECRET, backend, config, load, route

# -- the canonical kairos-rs shapes -------------------------------------------------------------

KAIROS_RS_RATE_LIMIT = {
    "strategy": "PerIP",
    "requests_per_window": 100,
    "window_duration": 60,
    "burst_allowance": 20,
    "window_type": "SlidingWindow",
    "enable_redis": False,
    "redis_key_prefix": "kairos_rl",
}


def test_full_kairos_rs_document_parses_into_the_model() -> None:
    raw = config(
        route(
            "/cats/{id}",
            "/{id}",
            host="https://http.cat",
            port=443,
            protocol="http",
            load_balancing_strategy="round_robin",
            auth_required=True,
        ),
        route(
            "/api/users/{id}",
            "/v1/user/{id}",
            methods=["GET", "PUT", "DELETE"],
            backends=[
                backend("http://b1", 8080, weight=2),
                backend("http://b2", 8081, health_check_path=None),
            ],
            load_balancing_strategy="weighted",
            retry={
                "max_retries": 3,
                "initial_backoff_ms": 100,
                "max_backoff_ms": 5000,
                "backoff_multiplier": 2.0,
                "retry_on_status_codes": [502, 503, 504],
                "retry_on_connection_error": True,
            },
            request_transformation={
                "headers": [
                    {"action": "add", "name": "X-Gateway", "value": "kairos"},
                    {
                        "action": "replace",
                        "name": "Authorization",
                        "pattern": "^Token (.*)$",
                        "replacement": "Bearer $1",
                    },
                    {"action": "remove", "name": "X-Internal"},
                ],
                "path": {"pattern": "^/v1/(.*)$", "replacement": "/v2/$1"},
                "query_params": [{"action": "set", "name": "source", "value": "gw"}],
            },
            response_transformation={
                "headers": [{"action": "set", "name": "X-Served-By", "value": "kairos"}],
                "status_code_mappings": [{"from": 404, "to": 200, "condition": None}],
            },
        ),
        route(
            "/smart",
            "/",
            methods=["POST"],
            backends=[backend("http://fast", 8080), backend("http://slow", 8081)],
            ai_policy={
                "enabled": True,
                "strategy": {"content_analysis": {"model": "gpt-3.5-turbo"}},
                "provider": "openai",
                "fallback_backend_index": 1,
            },
        ),
        jwt={
            "secret": SECRET,
            "issuer": "kairos-gateway",
            "audience": "api-clients",
            "required_claims": ["sub"],
        },
        rate_limit=KAIROS_RS_RATE_LIMIT,
        ai={"provider": "OpenAI", "model": "gpt-4o"},
    )
    loaded = load(raw)
    cfg = loaded.config
    assert loaded.warnings == []
    assert cfg.version == 1
    assert cfg.jwt is not None and cfg.jwt.secret == SECRET and cfg.jwt.required_claims == ("sub",)
    assert cfg.jwt.effective_algorithms == ("HS256",)
    assert cfg.rate_limit == RateLimitConfig(
        strategy="PerIP", requests_per_window=100, window_duration=60, burst_allowance=20
    )
    assert cfg.ai is not None and cfg.ai.provider == "openai"  # lower-cased like kairos-rs

    legacy, balanced, smart = cfg.routers
    assert legacy.upstreams == (BackendConfig(host="https://http.cat", port=443),)
    assert legacy.auth_required is True
    assert [(b.host, b.port, b.weight) for b in balanced.upstreams] == [
        ("http://b1", 8080, 2),
        ("http://b2", 8081, 1),
    ]
    assert balanced.load_balancing_strategy == "weighted"
    assert balanced.retry == RetryConfig()  # exactly kairos-rs's defaults
    assert balanced.retry is not None and [balanced.retry.backoff_ms(n) for n in range(7)] == [
        100, 200, 400, 800, 1600, 3200, 5000,
    ]  # fmt: skip
    transformation = balanced.request_transformation
    assert transformation is not None and transformation.path is not None
    assert [rule.action for rule in transformation.headers] == ["add", "replace", "remove"]
    assert transformation.headers[1].regex is not None
    assert balanced.response_transformation is not None
    assert balanced.response_transformation.status_code_mappings[0].from_status == 404
    assert smart.ai_policy is not None
    assert smart.ai_policy.strategy == AiStrategy(kind="content_analysis", model="gpt-3.5-turbo")
    assert smart.ai_policy.fallback_backend_index == 1


def test_defaults_match_kairos_rs() -> None:
    cfg = load(config(route())).config
    (only,) = cfg.routers
    assert only.protocol == "http"
    assert only.load_balancing_strategy == "round_robin"
    assert only.auth_required is False
    assert only.retry is None  # absent -> no retries
    assert only.timeout_ms == 30000
    assert only.upstreams[0].weight == 1
    assert cfg.jwt is None and cfg.rate_limit is None and cfg.ai is None


@pytest.mark.parametrize(
    ("host", "port"),
    [("http://legacy.example", 80), ("https://legacy.example", 443), ("HTTPS://legacy.example", 443)],
)
def test_legacy_host_without_port_gets_the_scheme_default(host: str, port: int) -> None:
    raw = config({"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": host})
    (only,) = load(raw).config.routers
    assert only.upstreams == (BackendConfig(host=host, port=port),)


def test_legacy_websocket_host_without_port() -> None:
    raw = config(
        {
            "external_path": "/ws",
            "internal_path": "/ws",
            "methods": ["GET"],
            "protocol": "websocket",
            "host": "wss://x",
        }
    )
    assert load(raw).config.routers[0].upstreams == (BackendConfig(host="wss://x", port=443),)


def test_legacy_host_port_equals_one_backend_with_weight_1() -> None:
    legacy = load(config(route(host="http://10.0.0.5", port=8080))).config.routers[0]
    modern = load(
        config(route(backends=[{"host": "http://10.0.0.5", "port": 8080, "weight": 1}]))
    ).config.routers[0]
    assert legacy.upstreams == modern.upstreams


def test_backends_win_over_legacy_host_port() -> None:
    (only,) = load(
        config(route(host="http://old", port=1, backends=[backend("http://new", 2)]))
    ).config.routers
    assert only.upstreams == (BackendConfig(host="http://new", port=2),)


def test_methods_are_normalised_to_upper_case_without_duplicates() -> None:
    (only,) = load(config(route(methods=["get", "Post", "GET", "delete"]))).config.routers
    assert only.methods == ("GET", "POST", "DELETE")


def test_head_is_allowed_wherever_get_is() -> None:
    get_route, post_route = load(
        config(route(methods=["get"]), route("/p", "/p", methods=["POST"]))
    ).config.routers
    assert allowed_methods(get_route) == {"GET", "HEAD"}
    assert allowed_methods(post_route) == {"POST"}


@pytest.mark.parametrize(
    ("written", "protocol"),
    [("http", "http"), ("websocket", "websocket"), ("WebSocket", "websocket"), ("DNS", "dns")],
)
def test_protocol_values(written: str, protocol: str) -> None:
    host = {"http": "http://x", "websocket": "ws://x", "dns": "8.8.8.8"}[protocol]
    (only,) = load(config(route(protocol=written, backends=[backend(host, 53)]))).config.routers
    assert only.protocol == protocol


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "random", "weighted", "ip_hash"])
def test_every_load_balancing_strategy(strategy: str) -> None:
    assert (
        load(config(route(load_balancing_strategy=strategy))).config.routers[0].load_balancing_strategy
        == strategy
    )


def test_ftp_backends_on_ftp_routes_and_bare_ips_on_dns_routes() -> None:
    ftp, dns = load(
        config(
            route("/ftp", "/", protocol="ftp", backends=[backend("ftp://ftp.example.com", 21)]),
            route(
                "/dns",
                "/",
                methods=["POST"],
                protocol="dns",
                backends=[
                    backend("8.8.8.8", 53),
                    backend("2001:4860:4860::8888", 53),
                    backend("dns.example", 53),
                ],
            ),
        )
    ).config.routers
    assert ftp.upstreams[0].scheme == "ftp" and ftp.upstreams[0].hostname == "ftp.example.com"
    assert [b.hostname for b in dns.upstreams] == ["8.8.8.8", "2001:4860:4860::8888", "dns.example"]
    assert all(b.scheme == "" for b in dns.upstreams)


def test_websocket_route_accepts_ws_wss_http_https() -> None:
    hosts = ["ws://a", "wss://b", "http://c", "https://d"]
    (only,) = load(
        config(route("/ws", "/ws", protocol="websocket", backends=[backend(h, 1) for h in hosts]))
    ).config.routers
    assert [b.scheme for b in only.upstreams] == ["ws", "wss", "http", "https"]


# -- aliases: each must produce a model equal to the canonical spelling ---------------------------


def _route_model(**extra: Any) -> RouteConfig:
    return load(config(route(**extra))).config.routers[0]


def test_retry_config_is_an_alias_of_retry() -> None:
    canonical = _route_model(retry={"max_retries": 2, "initial_backoff_ms": 50})
    alias = _route_model(retry_config={"max_retries": 2, "initial_backoff_ms": 50})
    assert alias == canonical
    assert alias.retry is not None and alias.retry.max_retries == 2


def test_documented_retry_field_names_are_aliases() -> None:
    documented = _route_model(
        retry_config={
            "max_retries": 3,
            "base_delay_ms": 100,
            "max_delay_ms": 2000,
            "retryable_status_codes": [500, 502, 503, 504],
        }
    )
    canonical = _route_model(
        retry={
            "max_retries": 3,
            "initial_backoff_ms": 100,
            "max_backoff_ms": 2000,
            "retry_on_status_codes": [500, 502, 503, 504],
        }
    )
    assert documented == canonical
    assert documented.retry is not None
    # kairos-rs silently turned this into 502/503/504 with 5000 ms; Kairos honours what was written.
    assert documented.retry.retry_on_status_codes == (500, 502, 503, 504)
    assert documented.retry.max_backoff_ms == 2000


def test_empty_retry_object_means_kairos_rs_defaults() -> None:
    retry = _route_model(retry={}).retry
    assert retry is not None
    assert (retry.max_retries, retry.initial_backoff_ms, retry.max_backoff_ms, retry.backoff_multiplier) == (
        3,
        100,
        5000,
        2.0,
    )
    assert retry.retry_on_status_codes == (502, 503, 504) and retry.retry_on_connection_error is True


@pytest.mark.parametrize(
    ("readme", "canonical"),
    [
        (
            {"algorithm": "token_bucket", "requests_per_second": 100, "burst_size": 10},
            {**KAIROS_RS_RATE_LIMIT, "requests_per_window": 100, "window_duration": 1, "burst_allowance": 0,
             "burst_size": 10, "window_type": "TokenBucket"},
        ),
        (
            # config_multi_protocol.json puts the algorithm in `strategy`.
            {"strategy": "sliding_window", "requests_per_minute": 100, "burst_size": 150},
            {**KAIROS_RS_RATE_LIMIT, "requests_per_window": 100, "window_duration": 60,
             "burst_allowance": 0, "burst_size": 150},
        ),
        (
            {"algorithm": "fixed_window", "requests_per_minute": 30},
            {**KAIROS_RS_RATE_LIMIT, "requests_per_window": 30, "burst_allowance": 0,
             "window_type": "FixedWindow"},
        ),
        (
            {"strategy": "per_user", "requests_per_window": 5, "window_duration": 10},
            {**KAIROS_RS_RATE_LIMIT, "strategy": "PerUser", "requests_per_window": 5, "window_duration": 10,
             "burst_allowance": 0},
        ),
    ],
    ids=["readme-token-bucket", "multi-protocol-sliding-window", "fixed-window-per-minute",
         "snake-case-strategy"],
)  # fmt: skip
def test_readme_rate_limit_shapes_equal_the_pascal_case_form(
    readme: dict[str, Any], canonical: dict[str, Any]
) -> None:
    top_alias = load(config(rate_limit=readme)).config
    top_canonical = load(config(rate_limit=canonical)).config
    assert top_alias == top_canonical
    # The same block is accepted per route (kairos-rs's docs show it there; its code ignored it).
    assert _route_model(rate_limit=readme) == _route_model(rate_limit=canonical)


def test_composite_rate_limit_strategy() -> None:
    inner = {"strategy": "PerUser", "requests_per_window": 10, "window_duration": 1, "burst_allowance": 0,
             "window_type": "TokenBucket", "enable_redis": False, "redis_key_prefix": "rl"}  # fmt: skip
    limit = load(
        config(rate_limit={**KAIROS_RS_RATE_LIMIT, "strategy": {"Composite": [KAIROS_RS_RATE_LIMIT, inner]}})
    )
    assert limit.config.rate_limit is not None
    strategy = limit.config.rate_limit.strategy
    assert isinstance(strategy, CompositeStrategy)
    assert [part.strategy for part in strategy.composite] == ["PerIP", "PerUser"]


def test_top_level_jwt_secret_is_an_alias_of_jwt_secret() -> None:
    alias = load(config(jwt_secret=SECRET))
    canonical = load(config(jwt={"secret": SECRET}))
    assert alias.config == canonical.config
    assert alias.warnings == canonical.warnings  # no "unknown key" for the alias


def test_jwt_secret_next_to_a_jwt_section_is_reported_as_ignored() -> None:
    loaded = load(config(jwt={"secret": SECRET}, jwt_secret="something-else-entirely-but-also-long-enough"))
    assert loaded.config.jwt is not None and loaded.config.jwt.secret == SECRET
    assert "jwt_secret: ignored: the `jwt` section is used instead" in [str(w) for w in loaded.warnings]


def test_ai_policy_strategy_spellings_are_one_model() -> None:
    def strategy(value: Any) -> AiStrategy:
        policy = _route_model(ai_policy={"enabled": True, "strategy": value}).ai_policy
        assert policy is not None
        return policy.strategy

    assert (
        strategy("latency_prediction")
        == strategy({"latency_prediction": None})
        == strategy({"latency_prediction": {}})
    )
    assert strategy({"content_analysis": {"model": None}}) == strategy("content_analysis")
    assert strategy({"content_analysis": {"model": "gpt-4o"}}).model == "gpt-4o"


def test_documented_top_level_and_route_sections_are_accepted() -> None:
    raw = config(
        route(
            rate_limit={"algorithm": "token_bucket", "requests_per_second": 5, "burst_size": 2},
            cache={"enabled": True, "ttl_secs": 30},
            cors={"allowed_origins": ["https://app.example"]},
            ai_policy={
                "enabled": True,
                "strategy": "latency_prediction",
                "streaming": True,
                "fallback_providers": [{"provider": "anthropic", "model": "claude-3-haiku"}],
            },
        ),
        server={"host": "0.0.0.0", "port": 5900, "workers": 2},
        metrics={"enabled": True, "endpoint": "/metrics"},
        cors={"enabled": True, "allowed_origins": ["*"]},
        compression={"enabled": True, "level": 6, "min_size": 1024},
        ai={
            "provider": "openai",
            "model": "gpt-4o",
            "fallback_providers": [{"provider": "groq", "model": "llama"}],
        },
    )
    loaded = load(raw)
    cfg = loaded.config
    assert loaded.warnings == []  # none of these is an "unknown key"
    assert cfg.server is not None and (cfg.server.host, cfg.server.port, cfg.server.workers) == (
        "0.0.0.0",
        5900,
        2,
    )
    assert cfg.metrics is not None and cfg.metrics.path == "/metrics"
    assert cfg.cors is not None and cfg.cors.allowed_origins == ("*",)
    assert cfg.compression is not None and cfg.compression.level == 6
    assert cfg.ai is not None and cfg.ai.fallback_providers[0].provider == "groq"
    (only,) = cfg.routers
    assert only.rate_limit is not None and only.rate_limit.window_type == "TokenBucket"
    assert only.cache is not None and only.cache.ttl_secs == 30
    assert only.ai_policy is not None and only.ai_policy.streaming is True
    assert only.ai_policy.fallback_providers[0].model == "claude-3-haiku"


def test_underscore_comment_keys_are_silent_notes() -> None:
    raw = config(
        route(_comment="legacy route", retry={"_note": "defaults"}, backends=[backend(_why="primary")]),
        _comment="Kairos config",
        _version_note="v1",
    )
    loaded = load(raw)
    assert loaded.warnings == []
    assert loaded.config.routers[0].upstreams[0].host == "http://10.0.0.5"


def test_validated_config_is_immutable() -> None:
    cfg = load(config(route())).config
    assert isinstance(cfg, GatewayConfig)
    with pytest.raises(ValueError, match="frozen"):
        cfg.routers[0].methods = ("POST",)  # type: ignore[misc]  # the write the test expects to fail
    assert isinstance(cfg.routers, tuple) and isinstance(cfg.routers[0].methods, tuple)


@pytest.mark.parametrize(
    ("limit", "capacity"),
    [
        ({"algorithm": "token_bucket", "requests_per_second": 2, "burst_size": 3}, 3),
        ({"algorithm": "token_bucket", "requests_per_second": 10, "burst_size": 1}, 1),
        ({"algorithm": "sliding_window", "requests_per_minute": 100, "burst_size": 150}, 150),
        ({"algorithm": "fixed_window", "requests_per_minute": 100, "burst_size": 20}, 100),
        ({**KAIROS_RS_RATE_LIMIT, "window_type": "TokenBucket"}, 120),
        (KAIROS_RS_RATE_LIMIT, 120),
    ],
    ids=["bucket-burst", "bucket-burst-below-rate", "window-burst", "window-burst-below-rate",
         "bucket-allowance", "window-allowance"],
)  # fmt: skip
def test_burst_size_is_the_most_admitted_at_once(limit: dict[str, Any], capacity: int) -> None:
    from kairos.ratelimit.policy import compile_policy

    config = load(config_with_limit(limit)).config
    assert config.rate_limit is not None
    assert compile_policy(config.rate_limit).limits[0].capacity == capacity


def test_burst_size_and_burst_allowance_together_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load(config_with_limit({**KAIROS_RS_RATE_LIMIT, "burst_size": 5}))
    assert "burst_size" in str(caught.value.problems)


def config_with_limit(limit: dict[str, Any]) -> dict[str, Any]:
    return config(rate_limit=limit)
