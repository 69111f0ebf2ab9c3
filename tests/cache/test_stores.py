"""The cache stores: the in-memory LRU's bounds, the Redis store against a real redis-server."""

from __future__ import annotations

import asyncio
import time

from kairos.cache import (
    CachedResponse,
    CacheUnavailable,
    MemoryStore,
    RedisCacheStore,
    ResponseCache,
    VaryMarker,
)
from kairos.cache.entry import decode, encode
from kairos.cache.policy import store_plan
from kairos.config.policies import CacheConfig
from tests.processes import free_port


def response(body: bytes = b"body", ttl: float = 60) -> CachedResponse:
    now = time.time()
    return CachedResponse(200, [(b"content-type", b"text/plain")], body, b'"e"', now, now + ttl, 0.0, ())


def test_memory_lru_bounded_by_entries() -> None:
    async def run() -> None:
        store = MemoryStore(max_entries=3, max_bytes=10**6)
        for key in "abc":
            await store.set(key, response())
        assert await store.get("a") is not None  # a is now the most recently used
        await store.set("d", response())
        assert len(store) == 3 and await store.get("b") is None
        assert all([await store.get(key) is not None for key in "acd"])

    asyncio.run(run())


def test_memory_lru_bounded_by_bytes() -> None:
    async def run() -> None:
        store = MemoryStore(max_entries=100, max_bytes=5000)
        for key in "abcd":
            await store.set(key, response(b"x" * 1500))
        assert store.bytes <= 5000 and len(store) == 2
        assert await store.get("a") is None and await store.get("d") is not None
        await store.set("huge", response(b"x" * 6000))  # bigger than the whole store: not kept
        assert await store.get("huge") is None and len(store) == 2
        await store.set("d", response(b"y"))  # replacing an entry gives its bytes back
        assert store.bytes < 2000
        assert await store.purge("") == 2 and store.bytes == 0

    asyncio.run(run())


def test_memory_drops_stale_entries() -> None:
    async def run() -> None:
        store = MemoryStore()
        await store.set("k", response(ttl=-1))
        assert await store.get("k") is None and len(store) == 0

    asyncio.run(run())


def test_encoding_round_trip_and_garbage() -> None:
    entry = response(b"\x00\xffbinary")
    entry.vary = ("accept-language",)
    assert decode(encode(entry)) == entry
    assert decode(encode(VaryMarker(("a", "b"), 5.0))) == VaryMarker(("a", "b"), 5.0)
    assert decode(b"garbage") is None and decode(b"KC1R\x00\x00\x00\x09{bad json") is None


def test_store_plan_rules() -> None:
    now = time.time()

    def ttl(headers: list[tuple[bytes, bytes]]) -> float:
        plan = store_plan(200, headers, 60, False, now)
        assert plan is not None
        return plan.ttl

    assert ttl([]) == 60
    assert ttl([(b"cache-control", b"max-age=5, s-maxage=9")]) == 9
    assert ttl([(b"cache-control", b"max-age=10"), (b"age", b"4")]) == 6
    assert store_plan(200, [(b"cache-control", b"max-age=0")], 60, False, now) is None
    assert store_plan(206, [], 60, False, now) is None
    assert store_plan(200, [], 60, True, now) is None  # Authorization without the response's leave
    assert store_plan(200, [(b"cache-control", b"public")], 60, True, now) is not None
    assert store_plan(200, [(b"expires", b"not a date")], 60, False, now) is None
    assert store_plan(200, [], 0, False, now) is None  # ttl_secs 0: only what the upstream marks fresh


def test_redis_store_shares_entries_and_purges(redis: str) -> None:
    async def run() -> None:
        one, two = RedisCacheStore(redis), RedisCacheStore(redis)
        try:
            await one.set("r1\nGET h/a\n-", response(b"shared"))
            await one.set("r1\nGET h/b\n-", response(b"other"))
            await one.set("r2\nGET h/a\n-", response(b"route two"))
            found = await two.get("r1\nGET h/a\n-")
            assert isinstance(found, CachedResponse) and found.body == b"shared"
            assert await two.purge("r1\nGET h/a") == 1
            assert await two.get("r1\nGET h/a\n-") is None and await two.get("r1\nGET h/b\n-") is not None
            assert await two.purge("GET h/", any_route=True) == 2
            await one.set("short", response(ttl=0.2))
            await asyncio.sleep(0.3)
            assert await one.get("short") is None  # Redis expired it
        finally:
            await one.close()
            await two.close()

    asyncio.run(run())


def test_redis_store_down_is_unavailable_and_recovers_the_flag() -> None:
    async def run() -> None:
        store = RedisCacheStore(f"redis://127.0.0.1:{free_port()}/0")
        try:
            try:
                await store.get("k")
                raise AssertionError("expected CacheUnavailable")
            except CacheUnavailable:
                pass
            assert not store.available() and store.failures == 1
            await store.set("k", response())  # swallowed
        finally:
            await store.close()

    asyncio.run(run())


def test_response_cache_purge_by_route_and_prefix() -> None:
    async def run() -> None:
        cache = ResponseCache()
        config = CacheConfig()
        one = cache.store_for("http GET,HEAD /a", config)
        two = cache.store_for("http GET,HEAD /b", config)
        await one.set("http GET,HEAD /a\nGET h/a?x=1\n-", response())
        await one.set("http GET,HEAD /a\nGET h/a2\n-", response())
        await two.set("http GET,HEAD /b\nGET h/b\n-", response())
        assert cache.memory_entries == 3
        assert await cache.purge(route="/a", key_prefix="h/a?") == 1
        assert await cache.purge(key_prefix="h/b") == 1
        assert await cache.purge() == 1 and cache.memory_entries == 0

    asyncio.run(run())
