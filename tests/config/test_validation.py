"""Validation errors: every one at once, each as ``path: message (got value)``."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config import ConfigError
from kairos.config.model import RouteConfig
from tests.config.builders import SECRET, backend, config, errors, load, route

METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS, PATCH, TRACE"


def test_errors_in_several_routes_and_the_top_level_are_reported_together() -> None:
    raw = config(
        route(),  # valid: must not appear
        route(
            "/a/{id}",
            "/b/{id}",
            methods=["GET", "FETCH"],
            backends=[backend("http://a", 70000), backend("http://b", 8080, weight=0)],
        ),
        {
            "external_path": "users",
            "internal_path": "/u",
            "methods": ["GET"],
            "host": "http://files",
            "port": 21,
        },
        route("/r", "/r", methods=["POST"], retry={"max_retries": 11, "backoff_multiplier": 0.5}),
        route("/w", "/w", backends=[backend("wss://stream", 443)]),
        route("/z", "/z", auth_required=True),
        version=256,
        trusted_proxies=["10.0.0.0/8", "10.0.0.300/8", "::1"],
    )
    assert errors(raw) == [
        "version: must be at most 255 (got 256)",
        'trusted_proxies[1]: not an IP address or CIDR (got "10.0.0.300/8")',
        f'routers[1].methods[1]: not an HTTP method; use one of {METHODS} (got "FETCH")',
        "routers[1].backends[0].port: must be between 1 and 65535 (got 70000)",
        "routers[1].backends[1].weight: must be at least 1 (got 0)",
        "routers[2].external_path: must start with '/' (got \"users\")",
        "routers[3].retry.max_retries: must be at most 10 (got 11)",
        "routers[3].retry.backoff_multiplier: must be at least 1.0 (got 0.5)",
        "routers[4].backends[0].host: must use http:// or https:// for protocol 'http' (got \"wss://stream\")",
        "routers[5].auth_required: is true but the config has no `jwt` section and no `api_keys`",
    ]


def test_the_error_message_carries_every_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(route(backends=[backend(port=0)]), route(methods=[])))
    assert str(caught.value) == (
        "test.json: 2 error(s)\n"
        "  routers[0].backends[0].port: must be between 1 and 65535 (got 0)\n"
        "  routers[1].methods: at least one HTTP method must be specified (got [])"
    )
    assert caught.value.source == "test.json"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (config(route(backends=[backend(port="8080")])),
         'routers[0].backends[0].port: must be an integer (got "8080")'),
        (config(route(backends=[])), "routers[0].backends: at least one backend must be specified (got [])"),
        (config(route(backends=[backend(host="")])),
         'routers[0].backends[0].host: must not be empty (got "")'),
        (config(route(backends=[backend(host="http://x:8080")])),
         'routers[0].backends[0].host: put the port in `port`, not in `host` (got "http://x:8080")'),
        (config(route(backends=[backend(host="http://x/api")])),
         'routers[0].backends[0].host: must be scheme://hostname with no path, query or fragment (got "http://x/api")'),
        (config(route(backends=[backend(host="x:80")])),
         'routers[0].backends[0].host: must be scheme://hostname, e.g. http://10.0.0.5 (got "x:80")'),
        (config(route(backends=[backend(host="http://")])),
         'routers[0].backends[0].host: missing a host name after the scheme (got "http://")'),
        (config(route(backends=[backend(health_check_path="health")])),
         'routers[0].backends[0].health_check_path: must start with \'/\' (got "health")'),
        (config(route(methods="GET")), 'routers[0].methods: must be an array (got "GET")'),
        (config(route(auth_required="yes")), 'routers[0].auth_required: must be true or false (got "yes")'),
        (config(route(protocol="gopher")),
         "routers[0].protocol: must be one of 'http', 'websocket', 'ftp', 'dns' or 'llm' (got \"gopher\")"),
        (config(route(load_balancing_strategy="fastest")),
         "routers[0].load_balancing_strategy: must be one of 'round_robin', 'least_connections', 'random', "
         "'weighted' or 'ip_hash' (got \"fastest\")"),
        (config({"external_path": "/a", "internal_path": "/a", "methods": ["GET"]}),
         "routers[0]: needs `backends` (or the legacy `host` + `port`)"),
        (config(route(host="http://legacy", port=70000)),
         "routers[0].port: must be between 1 and 65535 (got 70000)"),
        (config(route(host="localhost", port=80)),
         'routers[0].host: must use http:// or https:// for protocol \'http\' (got "localhost")'),
        (config(route(), version="1"), 'version: must be an integer (got "1")'),
        (config(7), "routers[0]: must be an object (got 7)"),
        ({"version": 1, "routers": {}}, "routers: must be an array (got {})"),
        ({"version": 1}, "routers: is required (an array of routes; it may be empty)"),
    ],
)  # fmt: skip
def test_single_error_messages(raw: dict[str, Any], expected: str) -> None:
    assert errors(raw) == [expected]


def test_a_route_with_a_bad_field_still_reports_missing_backends() -> None:
    raw = config({"external_path": "/a", "internal_path": "/a", "methods": ["FETCH"]})
    assert errors(raw) == [
        f'routers[0].methods[0]: not an HTTP method; use one of {METHODS} (got "FETCH")',
        "routers[0]: needs `backends` (or the legacy `host` + `port`)",
    ]


def test_auth_check_still_runs_when_the_top_level_is_invalid() -> None:
    assert errors(config(route(auth_required=True), version=-1)) == [
        "version: must be at least 0 (got -1)",
        "routers[0].auth_required: is true but the config has no `jwt` section and no `api_keys`",
    ]


def test_auth_required_is_satisfied_by_jwt_or_api_keys() -> None:
    load(config(route(auth_required=True), jwt={"secret": SECRET}))
    load(config(route(auth_required=True), api_keys=[{"name": "ci", "keys": ["k-123"]}]))
    assert errors(config(route(auth_required=True, auth="api_key"), jwt={"secret": SECRET})) == [
        "routers[0].auth: is 'api_key' but `api_keys` is empty"
    ]


# -- protocols and backend schemes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "host", "wanted"),
    [
        ("http", "wss://x", "http:// or https://"),
        ("http", "ftp://x", "http:// or https://"),
        ("websocket", "ftp://x", "ws:// or wss:// or http:// or https://"),
        ("ftp", "ws://x", "ftp:// or ftps:// or http:// or https://"),
        ("dns", "http://8.8.8.8", "a bare IP/hostname or udp:// or tcp:// or dns:// or tls:// or https://"),
    ],
)
def test_backend_scheme_must_fit_the_protocol(protocol: str, host: str, wanted: str) -> None:
    fits = {"http": "http://ok", "websocket": "ws://ok", "ftp": "ftp://ok", "dns": "9.9.9.9"}[protocol]
    raw = config(route(protocol=protocol, backends=[backend(fits, 53), backend(host, 53)]))
    assert errors(raw) == [
        f"routers[0].backends[1].host: must use {wanted} for protocol '{protocol}' (got \"{host}\")"
    ]


def test_legacy_host_scheme_error_names_the_route_host() -> None:
    raw = config(
        {"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": "wss://x", "port": 443}
    )
    assert errors(raw) == [
        "routers[0].host: must use http:// or https:// for protocol 'http' (got \"wss://x\")"
    ]


# -- path templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/users/{id", "unbalanced '{' or '}' in segment '{id'"),
        ("/users/id}", "unbalanced '{' or '}' in segment 'id}'"),
        ("/users/{a{b}}", "unbalanced '{' or '}' in segment '{a{b}}'"),
        ("/users/{}", "empty parameter name '{}'"),
        ("/users/{user id}", "invalid parameter name {user id}: use letters, digits and '_' only"),
        ("/users/{user-id}", "invalid parameter name {user-id}: use letters, digits and '_' only"),
        ("/a/{x}/b/{x}", "parameter {x} appears twice"),
        ("/a/../admin", "path traversal: '.' and '..' segments are not allowed"),
        ("/a/./b", "path traversal: '.' and '..' segments are not allowed"),
        ("/a?x=1", "must not contain '?' or '#' (the query string is forwarded as sent)"),
        ("a/b", "must start with '/'"),
        ("/v{major}{minor}", "adjacent parameters in segment 'v{major}{minor}' are ambiguous"),
    ],
)
def test_bad_path_templates(path: str, message: str) -> None:
    assert errors(config(route(external=path))) == [f'routers[0].external_path: {message} (got "{path}")']
    assert errors(config(route(internal=path))) == [f'routers[0].internal_path: {message} (got "{path}")']


def test_internal_placeholder_must_be_defined_by_the_external_path() -> None:
    raw = config(route("/users/{id}", "/v1/{id}/files/{name}"))
    assert errors(raw) == [
        "routers[0].internal_path: uses {name}, which external_path does not define "
        '(got "/v1/{id}/files/{name}")'
    ]


def test_templates_that_are_fine() -> None:
    raw = config(
        route("/users/{id}", "/v1/user/{id}"),
        route("/files/{name}.{ext}", "/raw/{name}.{ext}"),
        route("/v{major}.{minor}/status", "/status"),  # unused external params are allowed
        route("/café/{naïve_id}", "/x/{naïve_id}"),
    )
    assert len(load(raw).config.routers) == 4


# -- sections that later issues act on: they already parse and validate ------------------------


def test_jwt_secret_rules_never_echo_the_secret() -> None:
    short = "short-but-secret-value"
    problems = errors(config(route(), jwt={"secret": short}))
    assert problems == ["jwt.secret: must be at least 32 characters (has 22)"]
    assert short not in "\n".join(problems)
    assert errors(config(route(), jwt={"secret": "please-change-this-secret"})) == [
        "jwt.secret: must be changed from the default value"
    ]
    assert errors(config(route(), jwt={"secret": "   "})) == ["jwt.secret: cannot be empty"]
    assert errors(config(route(), jwt={"secret": 123456})) == ["jwt.secret: must be a string"]
    assert errors(config(route(), jwt={"issuer": "x"})) == [
        "jwt: one of secret, public_key or jwks_url is required"
    ]


def test_top_level_jwt_secret_errors_name_the_key_written() -> None:
    problems = errors(config(route(), jwt_secret="hunter2-hunter2"))
    assert problems == ["jwt_secret: must be at least 32 characters (has 15)"]


def test_other_secrets_are_not_echoed() -> None:
    ai = {"provider": "openai", "model": "m", "api_key": 12345}
    problems = errors(config(route(), api_keys=["sk-live-should-not-leak"], ai=ai))
    assert problems == ["ai.api_key: must be a string", "api_keys[0]: must be an object"]
    assert "sk-live" not in str(problems)
    assert errors(config(route(), api_keys=[{"name": "ci", "keys": [5]}])) == [
        "api_keys[0].keys[0]: must be a string"
    ]


def test_a_list_with_bad_items_is_not_called_empty() -> None:
    assert errors(config(route(), compression={"algorithms": ["lz4"]})) == [
        "compression.algorithms[0]: must be one of 'gzip', 'brotli', 'deflate' or 'zstd' (got \"lz4\")"
    ]
    assert errors(config(route(), compression={"algorithms": []})) == [
        "compression.algorithms: must not be empty (got [])"
    ]


def test_jwt_algorithms_and_keys() -> None:
    assert errors(config(route(), jwt={"secret": SECRET, "algorithms": ["RS256"]})) == [
        "jwt: algorithm RS256 needs `public_key` or `jwks_url`"
    ]
    assert errors(config(route(), jwt={"jwks_url": "ftp://keys"})) == [
        'jwt.jwks_url: must be an http:// or https:// URL (got "ftp://keys")'
    ]
    loaded = load(
        config(route(), jwt={"jwks_url": "https://idp.example/jwks", "algorithms": ["RS256", "ES256"]})
    )
    assert loaded.config.jwt is not None and loaded.config.jwt.effective_algorithms == ("RS256", "ES256")


def test_retry_rules() -> None:
    assert errors(config(route(retry={"initial_backoff_ms": 6000, "max_backoff_ms": 5000}))) == [
        "routers[0].retry: initial_backoff_ms (6000) cannot be greater than max_backoff_ms (5000)"
    ]
    # The alias spelling reports the same rule, at the key the file uses.
    assert errors(config(route(retry_config={"base_delay_ms": 300, "max_delay_ms": 200}))) == [
        "routers[0].retry_config: initial_backoff_ms (300) cannot be greater than max_backoff_ms (200)"
    ]
    assert errors(config(route(retry={"max_retries": 11}))) == [
        "routers[0].retry.max_retries: must be at most 10 (got 11)"
    ]
    assert errors(config(route(retry={"retry_on_status_codes": [503, 42]}))) == [
        "routers[0].retry.retry_on_status_codes[1]: must be at least 100 (got 42)"
    ]
    assert load(config(route(retry={"max_retries": 10}))).config.routers[0].retry is not None


def test_transformation_rules() -> None:
    raw = config(
        route(
            request_transformation={
                "headers": [
                    {"action": "replace", "name": "X-A", "pattern": "([", "replacement": "x"},
                    {"action": "add", "name": "bad header", "value": "v"},
                    {"action": "set", "name": "X-B"},
                    {"action": "explode", "name": "X-C"},
                ],
                "path": {"pattern": "(unclosed", "replacement": "/"},
            },
            response_transformation={"status_code_mappings": [{"from": 99, "to": 1000}]},
        )
    )
    assert errors(raw) == [
        "routers[0].request_transformation.headers[0].pattern: invalid regular expression: "
        'unterminated character set at position 1 (got "([")',
        'routers[0].request_transformation.headers[1].name: not a valid HTTP header name (got "bad header")',
        "routers[0].request_transformation.headers[2]: action 'set' needs `value`",
        "routers[0].request_transformation.headers[3].action: "
        "must be one of 'add', 'set', 'remove' or 'replace' "
        '(got "explode")',
        "routers[0].request_transformation.path.pattern: invalid regular expression: "
        'missing ), unterminated subpattern at position 0 (got "(unclosed")',
        "routers[0].response_transformation.status_code_mappings[0].from: must be at least 100 (got 99)",
        "routers[0].response_transformation.status_code_mappings[0].to: must be at most 999 (got 1000)",
    ]


def test_status_mapping_conditions() -> None:
    def mapping(condition: Any) -> dict[str, Any]:
        rule = {"from": 404, "to": 200, "condition": condition}
        return config(route(response_transformation={"status_code_mappings": [rule]}))

    where = "routers[0].response_transformation.status_code_mappings[0].condition"
    assert errors(mapping({"header": "X-A", "path": "^/v1"})) == [
        f"{where}: a condition needs exactly one of `header`, `query`, `path`, `status` or `response_header`"
    ]
    assert errors(mapping({"header": "X-A", "matches": "("})) == [
        f"{where}.matches: invalid regular expression: "
        'missing ), unterminated subpattern at position 0 (got "(")'
    ]
    # One error, not one per union member (object or free text).
    assert errors(mapping(5)) == [f"{where}: must be an object (got 5)"]
    assert load(mapping("kairos-rs free text")).config.routers[0].response_transformation is not None
    assert load(mapping({"header": "X-Legacy", "equals": "1"})).config.routers[0].response_transformation


def test_ai_policy_rules() -> None:
    def policy(**fields: Any) -> dict[str, Any]:
        return config(route(backends=[backend(), backend("http://b")], ai_policy={"enabled": True, **fields}))

    assert errors(policy(strategy="anomaly_detection")) == [
        "routers[0].ai_policy.strategy: strategy 'anomaly_detection' is not implemented in Kairos yet; "
        "use one of "
        'content_analysis, semantic, latency_prediction (got "anomaly_detection")'
    ]
    assert errors(policy(strategy={"anomaly_detection": {}})) == [
        "routers[0].ai_policy.strategy: strategy 'anomaly_detection' is not implemented in Kairos yet; "
        "use one of "
        "content_analysis, semantic, latency_prediction"
    ]
    assert errors(policy(strategy="guess")) == [
        "routers[0].ai_policy.strategy: unknown strategy 'guess'; use one of content_analysis, semantic, "
        'latency_prediction (got "guess")'
    ]
    assert errors(policy(strategy="latency_prediction", fallback_backend_index=2)) == [
        "routers[0].ai_policy.fallback_backend_index: must be less than the number of backends (2) (got 2)"
    ]
    assert errors(policy(strategy="latency_prediction", fallback_backend_index=-1)) == [
        "routers[0].ai_policy.fallback_backend_index: must be at least 0 (got -1)"
    ]
    assert errors(config(route(ai_policy={"strategy": "latency_prediction"}))) == [
        "routers[0].ai_policy.enabled: is required"
    ]
    assert load(policy(strategy="latency_prediction", fallback_backend_index=1)).config.routers[0].ai_policy


def test_rate_limit_rules_report_one_error_per_value() -> None:
    base = {"requests_per_window": 10, "window_duration": 60}
    # "PerFoo" is neither a strategy name nor a Composite object: one error, not one per union member.
    assert errors(config(rate_limit={**base, "strategy": "PerFoo"})) == [
        "rate_limit.strategy: "
        "must be one of 'PerIP', 'PerUser', 'PerRoute', 'PerIPAndRoute' or 'PerUserAndRoute' "
        '(got "PerFoo")'
    ]
    assert errors(config(rate_limit={**base, "strategy": {"Composite": [{"strategy": "PerIP"}]}})) == [
        "rate_limit.strategy.Composite[0].requests_per_window: is required",
        "rate_limit.strategy.Composite[0].window_duration: is required",
    ]
    assert errors(config(rate_limit={**base, "strategy": {"Composite": []}})) == [
        "rate_limit.strategy.Composite: must list at least one rate limit (got [])"
    ]
    assert errors(config(rate_limit={"algorithm": "leaky_bucket", "requests_per_second": 0})) == [
        "rate_limit.requests_per_window: must be at least 1 (got 0)",
        "rate_limit.window_type: must be one of 'FixedWindow', 'SlidingWindow' or 'TokenBucket' "
        '(got "leaky_bucket")',
    ]
    assert errors(config(route(rate_limit={"requests_per_window": 5}))) == [
        "routers[0].rate_limit.window_duration: is required"
    ]


def test_trusted_proxies_are_checked_item_by_item() -> None:
    raw = config(
        route(), trusted_proxies=["10.0.0.0/8", "fd00::/8", "192.168.1.300", "10.0.0.0/33", 5, "127.0.0.1"]
    )
    assert errors(raw) == [
        'trusted_proxies[2]: not an IP address or CIDR (got "192.168.1.300")',
        'trusted_proxies[3]: not an IP address or CIDR (got "10.0.0.0/33")',
        "trusted_proxies[4]: must be a string (got 5)",
    ]
    assert errors(config(route(), trusted_proxies="10.0.0.0/8")) == [
        'trusted_proxies: must be an array (got "10.0.0.0/8")'
    ]
    ok = load(config(route(), trusted_proxies=["10.0.0.0/8", "::1", "172.16.0.1/12"])).config
    assert ok.trusted_proxies == ("10.0.0.0/8", "::1", "172.16.0.1/12")


def test_policy_sections_validate_their_values() -> None:
    raw = config(
        route(cache={"ttl_secs": -5}, circuit_breaker={"failure_rate_threshold": 1.5}),
        server={"port": 0},
        compression={"level": 12, "algorithms": ["lz4"]},
    )
    assert errors(raw) == [
        "server.port: must be at least 1 (got 0)",
        "compression.level: must be at most 9 (got 12)",
        "compression.algorithms[0]: must be one of 'gzip', 'brotli', 'deflate' or 'zstd' (got \"lz4\")",
        "routers[0].cache.ttl_secs: must be at least 0 (got -5)",
        "routers[0].circuit_breaker.failure_rate_threshold: must be at most 1.0 (got 1.5)",
    ]


def test_route_model_can_be_used_directly() -> None:
    """The admin API validates single routes with the model; the same rules apply."""
    with pytest.raises(ValueError, match="needs `backends`"):
        RouteConfig.model_validate({"external_path": "/a", "internal_path": "/a", "methods": ["GET"]})
    single = RouteConfig.model_validate({"external_path": "/a", "internal_path": "/a", "methods": ["get"],
                                         "host": "http://x", "port": 81})  # fmt: skip
    assert single.methods == ("GET",) and single.upstreams[0].port == 81
