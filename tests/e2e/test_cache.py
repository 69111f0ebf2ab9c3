"""The response cache through the real gateway (uvicorn) against a real upstream that counts hits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt

from tests.processes import Server, backend, free_port, gateway_server, route, server_process

SECRET = "a-cache-test-secret-that-is-at-least-32-characters"


def token(subject: str) -> dict[str, str]:
    claims = {"sub": subject, "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def gateway_config(upstream: Server, redis_url: str) -> dict[str, Any]:
    up = [backend(upstream)]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    return {
        "version": 1,
        "jwt": {"secret": SECRET, "algorithms": ["HS256"]},
        "routers": [
            route("/c/{name}", "/c/{name}", up, cache={"ttl_secs": 30, "coalesce": True, "max_bytes": 4096}),
            route("/short/{name}", "/c/{name}", up, cache={"ttl_secs": 1}),
            route("/tenant/{name}", "/c/{name}", up, cache={"vary_headers": ["X-Tenant"]}),
            route("/auth/{name}", "/c/{name}", up, auth_required=True, cache={"cache_authenticated": True}),
            route("/auth-plain/{name}", "/c/{name}", up, auth_required=True, cache={}),
            route("/shared/{name}", "/c/{name}", up, cache={"storage_uri": redis_url}),
            route("/dead/{name}", "/c/{name}", up, cache={"storage_uri": dead}),
            route("/plain/{name}", "/c/{name}", up),
        ],
    }


@pytest.fixture(scope="module")
def cache_upstream(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.cache_upstream", "--port", str(port)]
    with server_process(args, port, module_tmp / f"cache-upstream-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def config(cache_upstream: Server, redis: str) -> dict[str, Any]:
    return gateway_config(cache_upstream, redis)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, config: dict[str, Any]) -> Iterator[Server]:
    with gateway_server(module_tmp, config) as server:
        yield server


def hits(upstream: Server, name: str) -> int:
    return int(httpx.get(f"{upstream.url}/hits/{name}").json()["hits"])


def test_miss_then_hit_with_age(client: httpx.Client, cache_upstream: Server) -> None:
    first = client.get("/c/basic")
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    assert "age" not in first.headers and first.headers["etag"].startswith('"')
    time.sleep(1.05)
    second = client.get("/c/basic")
    assert second.headers["x-cache"] == "HIT" and int(second.headers["age"]) >= 1
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert hits(cache_upstream, "basic") == 1
    # Query parameters in another order are the same entry; another value is another one.
    assert client.get("/c/q?a=1&b=2").headers["x-cache"] == "MISS"
    assert client.get("/c/q?b=2&a=1").headers["x-cache"] == "HIT"
    assert client.get("/c/q?a=1&b=3").headers["x-cache"] == "MISS"
    # No cache block: untouched.
    assert "x-cache" not in client.get("/plain/basic").headers


def test_ttl_expiry_and_upstream_max_age(client: httpx.Client, cache_upstream: Server) -> None:
    assert client.get("/short/ttl").headers["x-cache"] == "MISS"
    assert client.get("/short/ttl").headers["x-cache"] == "HIT"
    time.sleep(1.1)
    assert client.get("/short/ttl").headers["x-cache"] == "MISS"
    assert hits(cache_upstream, "ttl") == 2
    # The upstream's s-maxage wins over max-age and over the route's ttl_secs.
    url = "/c/smax?cc=max-age%3D60,%20s-maxage%3D1"
    assert [client.get(url).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    time.sleep(1.1)
    assert client.get(url).headers["x-cache"] == "MISS"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("nostore", "cc=no-store"),
        ("private", "cc=private,%20max-age%3D60"),
        ("nocache", "cc=no-cache"),
        ("cookie", "cookie=1"),
        ("varystar", "vary=*"),
        ("error", "status=500"),
    ],
)
def test_responses_that_are_not_stored(
    client: httpx.Client, cache_upstream: Server, name: str, query: str
) -> None:
    answers = [client.get(f"/c/{name}?{query}") for _ in range(2)]
    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "MISS"]
    assert answers[1].json()["hit"] == 2 and hits(cache_upstream, name) == 2
    if name == "cookie":
        assert answers[0].cookies["session"] == "s1" and answers[1].cookies["session"] == "s2"


def test_cacheable_error_status_is_stored(client: httpx.Client, cache_upstream: Server) -> None:
    assert [client.get("/c/gone?status=404").headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert hits(cache_upstream, "gone") == 1


def test_vary_from_the_upstream_and_configured_vary_headers(client: httpx.Client) -> None:
    url = "/c/lang?vary=Accept-Language"

    def get(lang: str) -> httpx.Response:
        return client.get(url, headers={"Accept-Language": lang})

    assert [get("fr").headers["x-cache"], get("de").headers["x-cache"]] == ["MISS", "MISS"]
    french, german = get("fr"), get("de")
    assert (french.headers["x-cache"], german.headers["x-cache"]) == ("HIT", "HIT")
    assert french.json()["lang"] == "fr" and german.json()["lang"] == "de"
    tenant = [client.get("/tenant/t", headers={"X-Tenant": t}) for t in ("a", "b", "a")]
    assert [r.headers["x-cache"] for r in tenant] == ["MISS", "MISS", "HIT"]
    assert [r.json()["tenant"] for r in tenant] == ["a", "b", "a"]


def test_client_no_cache_bypasses_and_refreshes(client: httpx.Client, cache_upstream: Server) -> None:
    assert client.get("/c/fresh").json()["hit"] == 1
    fresh = client.get("/c/fresh", headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "BYPASS" and fresh.json()["hit"] == 2
    again = client.get("/c/fresh")
    assert again.headers["x-cache"] == "HIT" and again.json()["hit"] == 2  # the entry was refreshed


def test_users_never_see_each_others_responses(client: httpx.Client, cache_upstream: Server) -> None:
    alice, bob = token("alice"), token("bob")
    first = client.get("/auth/me", headers=alice)
    assert first.headers["x-cache"] == "MISS"
    for_bob = client.get("/auth/me", headers=bob)
    assert for_bob.headers["x-cache"] == "MISS" and for_bob.json()["auth"] == bob["Authorization"]
    again = client.get("/auth/me", headers=alice)
    assert again.headers["x-cache"] == "HIT" and again.json()["auth"] == alice["Authorization"]
    assert client.get("/auth/me").status_code == 401  # a hit never skips authentication
    assert hits(cache_upstream, "me") == 2
    # Without cache_authenticated an auth route stores nothing.
    plain = [client.get("/auth-plain/p", headers=alice) for _ in range(2)]
    assert [r.headers["x-cache"] for r in plain] == ["BYPASS", "BYPASS"]
    assert hits(cache_upstream, "p") == 2


def test_if_none_match_and_head(client: httpx.Client, cache_upstream: Server) -> None:
    first = client.get("/c/tagged?etag=%22v1%22")
    assert first.headers["etag"] == '"v1"'
    not_modified = client.get("/c/tagged?etag=%22v1%22", headers={"If-None-Match": 'W/"v0", "v1"'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["x-cache"] == "HIT" and not_modified.headers["etag"] == '"v1"'
    changed = client.get("/c/tagged?etag=%22v1%22", headers={"If-None-Match": '"v0"'})
    assert changed.status_code == 200 and changed.content == first.content
    head = client.head("/c/tagged?etag=%22v1%22")
    assert head.status_code == 200 and head.content == b"" and head.headers["x-cache"] == "HIT"
    assert int(head.headers["content-length"]) == len(first.content)
    assert hits(cache_upstream, "tagged") == 1
    # A HEAD miss goes upstream as HEAD and fills nothing.
    assert client.head("/c/headfirst").headers["x-cache"] == "MISS"
    assert client.get("/c/headfirst").headers["x-cache"] == "MISS"


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_a_body_over_max_bytes_streams_uncached(
    client: httpx.Client, cache_upstream: Server, chunked: str
) -> None:
    name = f"big{chunked}"
    answers = [client.get(f"/c/{name}?size=10000&chunked={chunked}") for _ in range(2)]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS"]
    assert all(a.content == b"x" * 10000 for a in answers)
    assert hits(cache_upstream, name) == 2
    small = [client.get(f"/c/small{chunked}?size=3000&chunked={chunked}") for _ in range(2)]
    assert [a.headers["x-cache"] for a in small] == ["MISS", "HIT"]
    assert small[1].content == b"x" * 3000 and small[1].headers["content-length"] == "3000"


def concurrently(gateway: Server, path: str, count: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=10) as http:
            return list(await asyncio.gather(*(http.get(path) for _ in range(count))))

    return asyncio.run(run())


def test_coalescing_makes_one_upstream_request(gateway: Server, cache_upstream: Server) -> None:
    answers = concurrently(gateway, "/c/herd?delay=0.3", 50)
    assert hits(cache_upstream, "herd") == 1
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    labels = sorted(a.headers["x-cache"] for a in answers)
    assert labels == ["HIT"] * 49 + ["MISS"]


def test_a_coalesced_upstream_error_reaches_every_waiter_uncached(
    gateway: Server, cache_upstream: Server
) -> None:
    answers = concurrently(gateway, "/c/down?delay=0.3&status=503", 20)
    assert {a.status_code for a in answers} == {503} and len({a.content for a in answers}) == 1
    assert hits(cache_upstream, "down") == 1
    assert httpx.get(f"{gateway.url}/c/down?status=503").headers["x-cache"] == "MISS"
    assert hits(cache_upstream, "down") == 2


def test_two_gateways_share_one_redis(
    module_tmp: Path, gateway: Server, config: dict[str, Any], cache_upstream: Server
) -> None:
    host = {"Host": "api.example.com"}  # replicas behind one name see the same Host
    assert httpx.get(f"{gateway.url}/shared/r", headers=host).headers["x-cache"] == "MISS"
    with gateway_server(module_tmp, config) as other:
        answer = httpx.get(f"{other.url}/shared/r", headers=host)
        assert answer.headers["x-cache"] == "HIT" and answer.json()["hit"] == 1
    assert hits(cache_upstream, "r") == 1


def test_redis_down_still_serves(client: httpx.Client, gateway: Server, cache_upstream: Server) -> None:
    answers = [client.get("/dead/x") for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert {a.headers["x-cache"] for a in answers} <= {"BYPASS", "MISS"}
    assert hits(cache_upstream, "x") == 3
    assert gateway.output().count("cache store redis at") == 1  # logged once
    metrics = client.get("/metrics").text
    assert 'kairos_cache_requests_total{result="hit"}' in metrics
    assert "kairos_cache_entries " in metrics and "kairos_cache_store_errors_total" in metrics
