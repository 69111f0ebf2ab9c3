"""The memory store and the Redis store (a real redis-server) give the same answers.

Scenarios that do not depend on elapsed time run against both stores; refill and decay are
checked exactly on the memory store with a controlled clock (the Redis script mirrors its code).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kairos.config.ratelimit import RateLimitConfig
from kairos.ratelimit.memory import MemoryStore
from kairos.ratelimit.policy import Limit, compile_policy
from kairos.ratelimit.redis_store import RedisStore, StoreUnavailable
from kairos.ratelimit.verdict import Verdict
from tests.processes import free_port

Store = MemoryStore | RedisStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def limit(window_type: str, per_window: int, seconds: int, burst: int = 0, strategy: str = "PerIP") -> Limit:
    config = RateLimitConfig.model_validate(
        {"strategy": strategy, "requests_per_window": per_window, "window_duration": seconds,
         "burst_allowance": burst, "window_type": window_type}
    )  # fmt: skip
    return compile_policy(config).limits[0]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url: str = request.getfixturevalue("redis")
    redis_store = RedisStore(url)
    await redis_store._client.flushdb()
    yield redis_store
    await redis_store.close()


async def hits(store: Store, keys: list[str], limits: list[Limit], count: int) -> list[list[Verdict]]:
    return [await store.acquire(keys, limits) for _ in range(count)]


@pytest.mark.anyio
@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow", "TokenBucket"])
async def test_capacity_is_requests_per_window_plus_burst(store: Store, window_type: str) -> None:
    rule = limit(window_type, 3, 60, burst=2)
    verdicts = [v[0] for v in await hits(store, ["k"], [rule], 7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    refused = verdicts[5]
    # A sliding window may wait into the next window, while the full one's weight decays.
    assert 0 < refused.retry_after <= (120 if window_type == "SlidingWindow" else 60)
    assert refused.remaining == 0


@pytest.mark.anyio
async def test_keys_are_independent(store: Store) -> None:
    rule = limit("FixedWindow", 1, 60)
    assert (await store.acquire(["a"], [rule]))[0].allowed
    assert not (await store.acquire(["a"], [rule]))[0].allowed
    assert (await store.acquire(["b"], [rule]))[0].allowed


@pytest.mark.anyio
async def test_a_composite_counts_nothing_when_one_limit_refuses(store: Store) -> None:
    tight, loose = limit("FixedWindow", 2, 60), limit("TokenBucket", 5, 60)
    rounds = await hits(store, ["t", "l"], [tight, loose], 6)
    assert [all(v.allowed for v in verdicts) for verdicts in rounds] == [True, True] + [False] * 4
    # The four refused requests were not taken from the loose limit: 3 of its 5 are left.
    assert rounds[-1][1].allowed and rounds[-1][1].remaining == 2  # would-be remaining if admitted
    assert (await store.acquire(["l"], [loose]))[0].remaining == 2


@pytest.mark.anyio
async def test_token_bucket_refills_steadily_in_real_time(store: Store) -> None:
    rule = limit("TokenBucket", 20, 1)  # bucket of 20, 20 tokens/s
    started = time.monotonic()
    drained = [v[0].allowed for v in await hits(store, ["k"], [rule], 25)]
    assert drained.count(True) >= 20
    refused = await store.acquire(["k"], [rule])
    assert not refused[0].allowed and 0 < refused[0].retry_after <= 0.05 + 1e-3
    await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    admitted = sum(v[0].allowed for v in await hits(store, ["k"], [rule], 20))
    # ~4 tokens came back in 0.2 s; never more than what the elapsed time can refill.
    assert 2 <= admitted <= math.ceil(elapsed * 20) + 1


@pytest.mark.anyio
async def test_redis_unreachable_raises_store_unavailable_fast() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    rule = limit("FixedWindow", 1, 60)
    with pytest.raises(StoreUnavailable):
        await store.acquire(["k"], [rule])
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):  # no new connection attempt while marked down
        await store.acquire(["k"], [rule])
    assert time.monotonic() - started < 0.05
    assert store.failures == 2
    await store.close()


# -- exact arithmetic on the memory store with a controlled clock ---------------------------------


def memory(clock: Callable[[], float], **options: Any) -> MemoryStore:
    return MemoryStore(clock=clock, **options)


def test_fixed_window_resets_on_the_window_boundary() -> None:
    clock = Clock(1_000_000.0)  # a multiple of 10: a window starts here
    store, rule = memory(clock), limit("FixedWindow", 2, 10)
    assert [store.acquire_now(["k"], [rule])[0].allowed for _ in range(3)] == [True, True, False]
    clock.now += 9.5
    refused = store.acquire_now(["k"], [rule])[0]
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert store.acquire_now(["k"], [rule])[0].allowed


def test_sliding_window_weights_the_previous_window() -> None:
    clock = Clock(1_000_000.0)
    store, rule = memory(clock), limit("SlidingWindow", 10, 10)
    for _ in range(10):
        assert store.acquire_now(["k"], [rule])[0].allowed
    clock.now += 10 + 2.5  # next window, 25 % in: the previous 10 weigh 7.5
    verdicts = [store.acquire_now(["k"], [rule])[0] for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, False, False]  # 7.5 + 2 = 9.5; a third makes 10.5
    # The refusal says when: 7.5 + 2 + 1 > 10 until the previous weight falls by 0.5 (0.5 s).
    assert verdicts[2].retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert store.acquire_now(["k"], [rule])[0].allowed


def test_token_bucket_refills_at_its_rate_up_to_capacity() -> None:
    clock = Clock()
    store, rule = memory(clock), limit("TokenBucket", 2, 1, burst=3)  # bucket 5, 2 tokens/s
    assert sum(store.acquire_now(["k"], [rule])[0].allowed for _ in range(8)) == 5
    refused = store.acquire_now(["k"], [rule])[0]
    assert refused.retry_after == pytest.approx(0.5) and refused.reset == pytest.approx(2.5)
    clock.now += 1.0  # two tokens
    assert [store.acquire_now(["k"], [rule])[0].allowed for _ in range(3)] == [True, True, False]
    clock.now += 60  # refills to capacity, never beyond
    assert sum(store.acquire_now(["k"], [rule])[0].allowed for _ in range(8)) == 5


def test_refused_requests_do_not_delay_the_refill() -> None:
    clock = Clock()
    store, rule = memory(clock), limit("TokenBucket", 1, 1)
    assert store.acquire_now(["k"], [rule])[0].allowed
    for _ in range(100):  # a client hammering while empty
        clock.now += 0.009
        assert not store.acquire_now(["k"], [rule])[0].allowed
    clock.now += 0.1  # 0.9 + 0.1 s since the admitted request: one token
    assert store.acquire_now(["k"], [rule])[0].allowed


def test_memory_stays_bounded_with_a_million_distinct_clients() -> None:
    clock = Clock()
    store, rule = memory(clock), limit("FixedWindow", 5, 1)
    peak = 0
    for client in range(1_000_000):
        if client % 1000 == 0:
            clock.now += 0.1  # 10,000 new clients per second
            peak = max(peak, len(store))
        store.acquire_now([f"ip={client}"], [rule])
    # Keys live one window (1 s) after their last request, plus up to a quarter window until the
    # next sweep: ~12,500 at any time, not a million.
    assert peak <= 14_000
    assert len(store) <= 14_000


def test_a_flood_within_one_window_is_capped() -> None:
    clock = Clock()
    store, rule = memory(clock, max_keys=1000), limit("FixedWindow", 5, 3600)
    for client in range(5000):
        store.acquire_now([f"ip={client}"], [rule])
    assert len(store) == 1000
