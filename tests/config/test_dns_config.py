"""The `dns` section of DNS routes: kairos-rs's shape, the flat keys, and errors that name the field."""

from __future__ import annotations

from typing import Any

from kairos.config.dns import DnsConfig
from tests.config.builders import backend, config, errors, load, route


def dns_route(**extra: Any) -> dict[str, Any]:
    return route(
        "/dns", "/", protocol="dns", methods=["GET", "POST"], backends=[backend("8.8.8.8", 53)], **extra
    )


def test_kairos_rs_shape_loads_with_defaults() -> None:
    raw = config(
        route(
            "/dns",
            "/",
            protocol="dns",
            methods=["POST"],
            backends=[backend("8.8.8.8", 53), backend("1.1.1.1", 53)],
            load_balancing_strategy="round_robin",
        )
    )
    loaded = load(raw)
    (dns_route_config,) = loaded.config.routers
    assert dns_route_config.dns is None  # defaults apply at run time: every zone, the cache on
    assert [backend.hostname for backend in dns_route_config.upstreams] == ["8.8.8.8", "1.1.1.1"]
    assert DnsConfig().zones == (".",) and DnsConfig().cache.enabled


def test_flat_keys_move_into_the_dns_section() -> None:
    loaded = load(
        config(
            dns_route(
                zones=["Example.COM", "corp.internal."],
                cache={"max_entries": 100, "negative_ttl_cap": 30},
                policy="sequential",
                failover_rcodes=["servfail", "REFUSED"],
                client_rate_limit={"queries_per_second": 5},
            )
        )
    )
    (found,) = loaded.config.routers
    assert found.cache is None  # a DNS route's `cache` is its DNS cache, not the HTTP one
    assert found.dns is not None
    assert found.dns.zones == ("example.com.", "corp.internal.")
    assert found.dns.cache.max_entries == 100 and found.dns.cache.negative_ttl_cap == 30
    assert found.dns.policy == "sequential"
    assert found.dns.failover_rcodes == ("SERVFAIL", "REFUSED")
    assert found.dns.client_rate_limit is not None and found.dns.client_rate_limit.capacity == 5
    assert not loaded.warnings


def test_backend_schemes_of_dns_routes() -> None:
    hosts = [
        "9.9.9.9",
        "dns://10.0.0.53",
        "udp://10.0.0.53",
        "tcp://10.0.0.53",
        "tls://dns.quad9.net",
        "https://dns.google",
    ]
    loaded = load(
        config(route("/dns", "/", protocol="dns", methods=["POST"], backends=[backend(h, 53) for h in hosts]))
    )
    assert [backend.scheme for backend in loaded.config.routers[0].upstreams] == [
        "",
        "dns",
        "udp",
        "tcp",
        "tls",
        "https",
    ]


def test_errors_name_the_field() -> None:
    raw = config(
        dns_route(
            zones=["bad name.com"],
            cache={"min_ttl": 10, "max_ttl": 5},
            policy="nearest",
            failover_rcodes=["NOERROR"],
            client_rate_limit={"queries_per_second": 0},
        ),
        route("/x", "/x", dns={"zones": ["a.com"]}),
    )
    problems = errors(raw)
    for field in (
        "routers[0].dns.zones[0]",
        "routers[0].dns.cache",
        "routers[0].dns.policy",
        "routers[0].dns.failover_rcodes[0]",
        "routers[0].dns.client_rate_limit.queries_per_second",
        "routers[1].dns",
    ):
        assert any(problem.startswith(field + ":") for problem in problems), (field, problems)
    assert any("min_ttl (10) must not be above max_ttl (5)" in problem for problem in problems)
    assert any("applies to `dns` routes only" in problem for problem in problems)
