"""Load balancing through the real gateway (uvicorn subprocess) to two real upstreams, a and b."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.config import load_data
from kairos.routing.route import compile_route
from tests.processes import Server, backend, gateway_server, route


def routes(upstream: Server, upstream_b: Server) -> list[dict[str, Any]]:
    both = [backend(upstream), backend(upstream_b)]
    return [
        route("/rr/whoami", "/whoami", both, load_balancing_strategy="round_robin"),
        route(
            "/w/whoami",
            "/whoami",
            [backend(upstream, weight=3), backend(upstream_b, weight=1)],
            load_balancing_strategy="weighted",
        ),
        route("/lc/whoami", "/whoami", both, load_balancing_strategy="least_connections"),
        route("/lc/slow", "/slow", both, load_balancing_strategy="least_connections"),
        route("/ip/echo", "/echo", both, load_balancing_strategy="ip_hash"),
    ]


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, {"version": 1, "routers": routes(upstream, upstream_b)}) as server:
        yield server


@pytest.fixture(scope="module")
def proxied_gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    config = {"version": 1, "trusted_proxies": ["127.0.0.1/32"], "routers": routes(upstream, upstream_b)}
    with gateway_server(module_tmp, config) as server:
        yield server


def server_names(gateway: Server, path: str, count: int, headers: dict[str, str] | None = None) -> list[str]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        names = []
        for _ in range(count):
            response = client.get(path, headers=headers)
            assert response.status_code == 200, response.text
            names.append(response.json()["server"])
    return names


def expected_ip_hash_server(upstream: Server, upstream_b: Server, client_ip: str) -> str:
    """What the gateway must pick: the real balancer over the same backends."""
    config = load_data({"version": 1, "routers": [routes(upstream, upstream_b)[-1]]}).config
    compiled = compile_route(0, config.routers[0], {})
    return "ab"[compiled.balancer.pick(compiled.backends, client_ip).index]


def header_values(data: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in data["headers"] if key.lower() == name]


def test_round_robin_alternates(gateway: Server) -> None:
    names = server_names(gateway, "/rr/whoami", 10)
    assert names == ["a", "b"] * 5


def test_weighted_3_to_1_is_exact(gateway: Server) -> None:
    names = server_names(gateway, "/w/whoami", 40)
    assert Counter(names) == {"a": 30, "b": 10}
    for start in range(0, 40, 4):
        assert Counter(names[start : start + 4]) == {"a": 3, "b": 1}  # smooth: never a burst of b's


def test_least_connections_avoids_the_busy_backend(gateway: Server) -> None:
    async def main() -> tuple[str, list[str], bool]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            # all idle, so the first pick of this route is a; it stays busy for 1.5 s
            slow = asyncio.create_task(client.get("/lc/slow", params={"delay": "1.5"}))
            await asyncio.sleep(0.4)  # the slow request is in flight at the gateway by now
            names = []
            for _ in range(6):
                response = await client.get("/lc/whoami")
                names.append(response.json()["server"])
            overlapped = not slow.done()
            slow_response = await slow
            return slow_response.json()["server"], names, overlapped

    slow_server, names, overlapped = asyncio.run(main())
    assert overlapped, "the quick requests must run while the slow one is in flight"
    assert slow_server == "a"
    assert names == ["b"] * 6
    # once the slow one is done both are idle again and ties rotate
    assert sorted(server_names(gateway, "/lc/whoami", 2)) == ["a", "b"]


def test_ip_hash_without_trusted_proxies_ignores_x_forwarded_for(
    gateway: Server, upstream: Server, upstream_b: Server
) -> None:
    expected = expected_ip_hash_server(upstream, upstream_b, "127.0.0.1")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for n in range(20):
            spoofed = f"198.51.100.{n}"
            data = client.get("/ip/echo", headers={"X-Forwarded-For": spoofed}).json()
            assert data["server"] == expected
            assert header_values(data, "x-forwarded-for") == ["127.0.0.1"]  # spoofed hop dropped


def test_ip_hash_with_trusted_proxy_uses_the_forwarded_client(
    proxied_gateway: Server, upstream: Server, upstream_b: Server
) -> None:
    clients = [f"203.0.113.{n}" for n in range(40)]
    seen: dict[str, set[str]] = {client: set() for client in clients}
    with httpx.Client(base_url=proxied_gateway.url, timeout=10) as client:
        for _ in range(3):
            for client_ip in clients:
                data = client.get("/ip/echo", headers={"X-Forwarded-For": client_ip}).json()
                seen[client_ip].add(data["server"])
                assert header_values(data, "x-forwarded-for") == [f"{client_ip}, 127.0.0.1"]  # chain extended
    for client_ip, servers in seen.items():
        assert servers == {expected_ip_hash_server(upstream, upstream_b, client_ip)}, client_ip
    assert set().union(*seen.values()) == {"a", "b"}


def test_ip_hash_with_trusted_proxy_takes_the_rightmost_untrusted_hop(
    proxied_gateway: Server, upstream: Server, upstream_b: Server
) -> None:
    # the client may prepend anything; the hop our trusted proxy (127.0.0.1) appended is what counts
    real = "203.0.113.99"
    expected = expected_ip_hash_server(upstream, upstream_b, real)
    with httpx.Client(base_url=proxied_gateway.url, timeout=10) as client:
        for n in range(10):
            chain = f"10.9.9.{n}, {real}, 127.0.0.1"
            data = client.get("/ip/echo", headers={"X-Forwarded-For": chain}).json()
            assert data["server"] == expected
            assert header_values(data, "x-forwarded-for") == [f"{chain}, 127.0.0.1"]
