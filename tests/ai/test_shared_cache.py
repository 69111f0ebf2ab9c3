"""The AI-routing decision cache shared through Redis (a real redis-server): two ``AiRouter``s with the
same config stand for two replicas. A decision made by one is reused by the other without a provider
call, for the time Redis still keeps it, and copied into the other's memory; what Redis holds that is
not a valid decision is a miss; an unreachable Redis leaves each replica deciding and caching on its
own, logged once and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from kairos.ai.context import RequestContext
from kairos.ai.router import AiRouter, RoutePlan
from kairos.ai.shared_cache import KEY_PREFIX, SharedDecisionCache, decision_key
from kairos.config import load_data
from kairos.routing.route import Route, compile_route
from tests.processes import free_port

_PATHS = count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def raw(redis: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis)
    yield client
    await client.aclose()


def context(body: str) -> RequestContext:
    return RequestContext(
        method="POST", path="/support", headers={"content-type": "application/json"}, body=body
    )


def test_keys_are_namespaced_and_one_decision_is_one_slot() -> None:
    key = decision_key("http POST /support|content_analysis|openai/m|a,b|500", b"\x01" * 16)
    assert key.startswith(KEY_PREFIX) and key.endswith("01" * 16 + "}")
    tag = key[key.index("{") + 1 : key.index("}")]
    assert key_slot(key.encode()) == key_slot(("{" + tag + "}:anything").encode())
    slots = {key_slot(decision_key("sig", bytes([n]) * 16).encode()) for n in range(20)}
    assert len(slots) > 10  # decisions spread over a cluster's nodes
    assert decision_key("sig-a", b"x" * 16) != decision_key("sig-b", b"x" * 16)


@pytest.mark.anyio
async def test_a_decision_stored_by_one_replica_is_read_by_another(redis: str, raw: Redis) -> None:
    one, two = SharedDecisionCache(redis), SharedDecisionCache(redis)
    try:
        fingerprint = context("refund").fingerprint()
        assert await two.get("sig", fingerprint, 2) is None
        await one.put("sig", fingerprint, 1, 30.0)
        found = await two.get("sig", fingerprint, 2)
        assert found is not None and found[0] == 1 and 29.0 < found[1] <= 30.0
        assert await raw.get(decision_key("sig", fingerprint)) == b'{"index":1}'
        assert 29_000 < await raw.pttl(decision_key("sig", fingerprint)) <= 30_000
        assert await two.get("other-route", fingerprint, 2) is None  # another route: another key
        assert one.failures == two.failures == 0
    finally:
        await one.close()
        await two.close()


@pytest.mark.anyio
async def test_what_is_not_a_valid_decision_is_a_miss(redis: str, raw: Redis) -> None:
    cache = SharedDecisionCache(redis)
    try:
        fingerprint = context("bad values").fingerprint()
        key = decision_key("sig", fingerprint)
        for value in (b"not json", b"[1]", b'{"index": "1"}', b'{"index": true}', b'{"index": 2}', b"{}"):
            await raw.set(key, value, px=10_000)
            assert await cache.get("sig", fingerprint, 2) is None, value
        await raw.set(key, b'{"index": 0}', px=10_000)
        found = await cache.get("sig", fingerprint, 2)
        assert found is not None and found[0] == 0 and 9.5 < found[1] <= 10.0
    finally:
        await cache.close()


def ai_route(path: str) -> tuple[Route, dict[str, Any]]:
    backends = [{"host": "http://127.0.0.1", "port": 9001}, {"host": "http://127.0.0.1", "port": 9002}]
    policy = {"enabled": True, "strategy": {"content_analysis": {}}, "cache_ttl_secs": 60}
    data = {
        "version": 1,
        "ai": {"provider": "openai", "model": "m", "api_key": "sk-test", "api_base": "http://127.0.0.1:9/v1"},
        "routers": [
            {"external_path": path, "internal_path": "/", "methods": ["POST"], "backends": backends,
             "ai_policy": policy},
        ],
    }  # fmt: skip
    loaded = load_data(data, "(test)")
    return compile_route(0, loaded.config.routers[0], {}), data


def replica(url: str, path: str, answer: int | None) -> tuple[AiRouter, RoutePlan, Route, list[int]]:
    """A router for the route at ``path`` whose strategy answers ``answer`` (None: fails the test)
    and counts its calls."""
    route, data = ai_route(path)
    router = AiRouter(url)
    router.configure(load_data(data, "(test)").config)
    plan = router.plan_for(route)
    assert plan is not None and plan.strategy is not None
    calls: list[int] = []

    async def choose(context: RequestContext, deadline: float) -> int:
        calls.append(1)
        assert answer is not None, "this replica should not call the provider"
        return answer

    plan.strategy.choose = choose  # type: ignore[method-assign]
    return router, plan, route, calls


@pytest.mark.anyio
async def test_a_decision_made_by_one_router_is_reused_by_another_without_a_provider_call(
    redis: str, raw: Redis
) -> None:
    path = f"/shared-{next(_PATHS)}"
    first, plan1, route1, calls1 = replica(redis, path, 1)
    second, plan2, route2, calls2 = replica(redis, path, None)
    try:
        assert plan1.signature == plan2.signature  # same config, same identity
        request = context("I want a refund")
        decision = await first.decide(plan1, route1, request)
        assert (decision.index, decision.outcome, len(calls1)) == (1, "chosen", 1)
        key = decision_key(plan1.signature, request.fingerprint())
        for _ in range(100):  # written in the background: well within a second
            if await raw.exists(key):
                break
            await asyncio.sleep(0.01)
        assert await raw.exists(key)
        assert second.cached(plan2, context("I want a refund")) is None  # not in its memory yet
        reused = await second.decide(plan2, route2, context("I want a refund"))
        assert (reused.index, reused.outcome, calls2) == (1, "cached", [])
        assert second.cached(plan2, context("I want a refund")) == 1  # now in memory: no Redis call
        assert second.stats.decisions[(plan2.name, "cached")] == 2
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_a_shared_hit_is_not_refused_as_busy(redis: str) -> None:
    path = f"/shared-{next(_PATHS)}"
    first, plan1, _, _ = replica(redis, path, 0)
    second, plan2, route2, calls2 = replica(redis, path, None)
    try:
        assert plan1.strategy is not None and first.shared is not None
        await first.shared.put(plan1.signature, context("busy").fingerprint(), 0, 60.0)
        second.in_flight = 64  # max_concurrency provider calls in flight
        reused = await second.decide(plan2, route2, context("busy"))
        assert (reused.index, reused.outcome, calls2) == (0, "cached", [])
        missed = await second.decide(plan2, route2, context("something else"))
        assert missed.outcome == "fallback_busy" and calls2 == []
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_an_unreachable_redis_leaves_each_replica_caching_on_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    router, plan, route, calls = replica(dead, f"/shared-{next(_PATHS)}", 1)
    try:
        with caplog.at_level(logging.WARNING, logger="kairos"):
            first = await router.decide(plan, route, context("a"))
            await asyncio.sleep(0.05)  # the background write fails too
            second = await router.decide(plan, route, context("b"))
            await asyncio.sleep(0.05)
        assert (first.outcome, second.outcome, len(calls)) == ("chosen", "chosen", 2)
        assert router.cached(plan, context("a")) == 1  # the memory cache still works
        assert router.shared is not None and router.shared.failures == 4  # 2 lookups, 2 writes
        lines = [r.getMessage() for r in caplog.records if "AI decision cache" in r.getMessage()]
        assert len(lines) == 1 and "unreachable" in lines[0] and "per replica" in lines[0]
    finally:
        await router.close()
