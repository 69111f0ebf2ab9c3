"""Rate limiting through the real gateway: policies, keys, headers, Redis shared by two processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from jose import jwt

from tests.processes import Server, backend, free_port, gateway_server, route

SECRET = "a-test-secret-that-is-at-least-32-characters-long"


def fixed(count: int, seconds: int = 60, strategy: str = "PerIP", **extra: Any) -> dict[str, Any]:
    return {"strategy": strategy, "requests_per_window": count, "window_duration": seconds,
            "burst_allowance": 0, "window_type": "FixedWindow", **extra}  # fmt: skip


def token(subject: str) -> dict[str, str]:
    claims = {"sub": subject, "exp": int(time.time()) + 300}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    ws_up = [backend(upstream, scheme="ws")]
    config = {
        "version": 1,
        "jwt": {"secret": SECRET},
        "rate_limit": fixed(3),
        "routers": [
            route("/global/{id}", "/echo/global/{id}", up),
            route("/other", "/echo/other", up),
            route("/own", "/echo/own", up, rate_limit=fixed(1)),
            route("/own-too", "/echo/own-too", up, rate_limit=fixed(1)),
            route("/free", "/echo/free", up, rate_limit={"enabled": False}),
            route("/per-user", "/echo/per-user", up, auth_required=True,
                  rate_limit=fixed(2, strategy="PerUser")),
            route("/anon-user", "/echo/anon-user", up, rate_limit=fixed(2, strategy="PerUser")),
            route("/per-route/{id}", "/echo/per-route/{id}", up, rate_limit=fixed(2, strategy="PerRoute")),
            route("/bucket", "/echo/bucket", up,
                  rate_limit={"algorithm": "token_bucket", "requests_per_second": 1, "burst_size": 2}),
            route("/bucket-3", "/echo/bucket-3", up,
                  rate_limit={"algorithm": "token_bucket", "requests_per_second": 2, "burst_size": 3}),
            route("/both", "/echo/both", up, rate_limit={
                **fixed(100),
                "strategy": {"Composite": [fixed(2, strategy="PerIP"), fixed(10, strategy="PerRoute")]},
            }),
            route("/ws", "/ws", ws_up, protocol="websocket", rate_limit=fixed(1)),
        ],
    }  # fmt: skip
    with gateway_server(module_tmp, config) as server:
        yield server


def statuses(client: httpx.Client, path: str, count: int, **options: Any) -> list[int]:
    return [client.get(path, **options).status_code for _ in range(count)]


def test_admitted_responses_carry_the_limit_headers(client: httpx.Client) -> None:
    answers = [client.get("/global/1") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
    first = answers[0]
    assert first.headers["x-ratelimit-limit"] == "3"
    assert 0 < int(first.headers["x-ratelimit-reset"]) <= 60
    assert first.headers["ratelimit-policy"] == '"perip";q=3;w=60'
    assert first.headers["ratelimit"] == f'"perip";r=2;t={first.headers["x-ratelimit-reset"]}'
    assert first.json()["path"] == "/echo/global/1"  # the upstream answered

    refused = client.get("/global/2")  # the global PerIP counter spans every route using it
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "rate_limit_error" and "PerIP: 3 requests per 60s" in body["error"]
    assert body["request_id"] == refused.headers["x-request-id"] and body["timestamp"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert client.get("/other").status_code == 429


def test_builtin_endpoints_are_never_limited(client: httpx.Client) -> None:
    for path in ("/health", "/ready", "/live", "/metrics"):
        assert statuses(client, path, 6) == [200] * 6


def test_refusals_are_counted_per_route_template(client: httpx.Client) -> None:
    assert client.get("/global/99").status_code == 429  # the global quota was spent above
    metrics = client.get("/metrics").text
    assert 'kairos_rate_limited_total{route="/global/{id}"}' in metrics
    assert 'kairos_rate_limited_total{route="/other"} 1.0' in metrics


def test_a_route_policy_replaces_the_global_one_and_has_its_own_counter(client: httpx.Client) -> None:
    assert statuses(client, "/own", 2) == [200, 429]
    # Same numbers, same strategy, another route: never the same counter.
    assert statuses(client, "/own-too", 2) == [200, 429]
    assert statuses(client, "/free", 8) == [200] * 8


def test_per_user_keys_on_the_verified_identity(client: httpx.Client) -> None:
    assert statuses(client, "/per-user", 3, headers=token("alice")) == [200, 200, 429]
    assert statuses(client, "/per-user", 2, headers=token("bob")) == [200, 200]
    # An unauthenticated flood is refused by auth, not counted against anyone.
    assert statuses(client, "/per-user", 5) == [401] * 5
    assert statuses(client, "/per-user", 1, headers=token("carol")) == [200]


def test_anonymous_per_user_falls_back_to_the_client_ip(client: httpx.Client) -> None:
    assert statuses(client, "/anon-user", 3) == [200, 200, 429]


def test_a_forged_forwarded_for_does_not_buy_a_new_bucket(client: httpx.Client) -> None:
    # No trusted proxies are configured: the peer address is the client.
    answers = [client.get("/bucket", headers={"X-Forwarded-For": f"10.0.0.{n}"}) for n in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429, 429]  # burst_size 2: a bucket of 2


def test_burst_size_is_the_buckets_capacity(client: httpx.Client) -> None:
    """rps 2 + burst_size 3 admits 3 at once (actix-governor's and x/time/rate's reading), not 5."""
    answers = [client.get("/bucket-3") for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
    assert answers[0].headers["x-ratelimit-limit"] == "3"


def test_per_route_counts_the_route_not_each_concrete_path(client: httpx.Client) -> None:
    assert [client.get(f"/per-route/{n}").status_code for n in range(3)] == [200, 200, 429]


def test_token_bucket_refills(client: httpx.Client) -> None:
    time.sleep(1.1)  # the earlier test drained /bucket; at 1 token/s one is back
    assert client.get("/bucket").status_code == 200


def test_composite_applies_every_limit(client: httpx.Client) -> None:
    answers = [client.get("/both") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["ratelimit-policy"] == '"perip-1";q=2;w=60, "perroute-2";q=10;w=60'
    assert answers[2].headers["ratelimit"].startswith('"perip-1";r=0;')


def test_websocket_upgrades_are_limited_before_accept(gateway: Server) -> None:
    async def attempt() -> int:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws") as socket:
                await socket.send("hi")
                await socket.recv()
                return 101
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    assert [asyncio.run(attempt()) for _ in range(2)] == [101, 429]


# -- Redis: one limit across replicas -----------------------------------------------------------


def _fire(urls: list[str], count: int) -> list[int]:
    """``count`` concurrent requests spread over the gateways."""

    async def one(client: httpx.AsyncClient, url: str) -> int:
        return (await client.get(url)).status_code

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(*(one(client, urls[n % len(urls)]) for n in range(count)))

    return asyncio.run(main())


@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow", "TokenBucket"])
def test_two_gateways_sharing_redis_admit_exactly_the_limit(
    module_tmp: Path, upstream: Server, redis: str, window_type: str
) -> None:
    limit = {**fixed(10, 3600), "window_type": window_type, "enable_redis": True,
             "redis_key_prefix": f"shared-{window_type}"}  # fmt: skip
    config = {
        "version": 1,
        "routers": [route("/shared", "/echo/shared", [backend(upstream)], rate_limit=limit)],
    }
    env = {"KAIROS_REDIS_URL": redis}
    with (
        gateway_server(module_tmp, config, env=env) as one,
        gateway_server(module_tmp, config, env=env) as two,
    ):
        codes = _fire([f"{one.url}/shared", f"{two.url}/shared"], 40)
        assert codes.count(200) == 10 and codes.count(429) == 30
        # Each process alone would have admitted 10 of its 20.
        assert httpx.get(f"{two.url}/shared").headers["x-ratelimit-remaining"] == "0"


def test_storage_uri_selects_redis_per_policy(module_tmp: Path, upstream: Server, redis: str) -> None:
    shared = {**fixed(3), "storage_uri": redis, "redis_key_prefix": "per-policy"}
    config = {"version": 1, "routers": [route("/s", "/echo/s", [backend(upstream)], rate_limit=shared)]}
    with gateway_server(module_tmp, config) as one, gateway_server(module_tmp, config) as two:
        codes = [httpx.get(f"{server.url}/s").status_code for server in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]


def test_redis_down_fails_open_by_default_and_says_so_once(module_tmp: Path, upstream: Server) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = {
        "version": 1,
        "rate_limit": fixed(1),
        "routers": [
            route("/open", "/echo/open", [backend(upstream)]),
            route("/closed", "/echo/closed", [backend(upstream)], rate_limit=fixed(1, fail_closed=True)),
        ],
    }
    with gateway_server(module_tmp, config, env={"KAIROS_REDIS_URL": dead}) as server:
        # Admitted although the limit is 1: the limiter cannot count, so it steps aside.
        assert statuses(httpx.Client(base_url=server.url), "/open", 5) == [200] * 5
        closed = httpx.get(f"{server.url}/closed")
        assert closed.status_code == 503 and closed.json()["type"] == "rate_limit_unavailable"
        assert closed.headers["retry-after"] == "1"
        time.sleep(0.2)
        assert server.output().count("is unreachable") == 1
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "kairos_rate_limit_fail_open_total 5.0" in metrics
        assert "kairos_rate_limit_store_errors_total 6.0" in metrics  # the five admitted + the one refused
