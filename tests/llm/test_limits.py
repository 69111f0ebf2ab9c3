"""Token limits and budgets (kairos/llm/limits.py): the memory store and the Redis store (a real
redis-server, started by this module) give the same verdicts.

Both stores take the clock as an argument, so every scenario runs against both with a controlled
time; Hypothesis checks that they agree on arbitrary sequences of reserves, reconciles and clock
moves across minute, day and month boundaries.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.llm.limits import (
    DAY_TTL,
    MINUTE_TTL,
    MONTH_TTL,
    LimitStore,
    LimitStoreUnavailable,
    MemoryLimitStore,
    RedisLimitStore,
    Reservation,
    TokenLimits,
    Verdict,
    make_limit_store,
    redis_keys,
)
from tests.processes import free_port, redis_server

NOON = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()  # a minute window starts here
NEW_YEARS_EVE = datetime(2026, 12, 31, 23, 58, tzinfo=UTC).timestamp()

Store = MemoryLimitStore | RedisLimitStore


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's own redis-server (stopped by PID when the module ends). The tests fire bursts of
    concurrent calls at fresh stores, each opening its connections at once: a 5 s connect timeout
    (instead of the stores' fail-fast 0.5 s) keeps a machine busy with the rest of the suite from
    turning a slow accept into a fail-open admission these tests would count."""
    with redis_server(tmp_path_factory.mktemp("llm-limits")) as server:
        yield f"redis://127.0.0.1:{server.port}/0?socket_connect_timeout=5"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def number(value: bytes | str | None) -> int:
    """A counter as Redis returns it."""
    assert value is not None
    return int(value)


async def fresh_redis(url: str, clock: Clock, **options: Any) -> RedisLimitStore:
    store = RedisLimitStore(url, clock=clock, **options)
    await store._client.flushdb()
    return store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryLimitStore(clock=clock)
        return
    redis_store = await fresh_redis(request.getfixturevalue("redis_url"), clock)
    yield redis_store
    await redis_store.close()


# -- each limit --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tokens_per_minute_admit_up_to_the_limit(store: Store, clock: Clock) -> None:
    limits = TokenLimits(tokens_per_minute=1000)
    first = await store.reserve("consumer:alice", limits, 400, 0.002)
    assert first == Verdict(
        allowed=True,
        remaining_tokens=600,
        remaining_requests=None,
        reset_seconds=60.0,
        reason=None,
        reservation=Reservation("consumer:alice", 400, 0.002, int(NOON), "2026-12-02", "2026-12"),
    )
    assert (await store.reserve("consumer:alice", limits, 600, 0.0)).remaining_tokens == 0
    clock.now += 15
    refused = await store.reserve("consumer:alice", limits, 1, 0.0)
    assert refused == Verdict(False, 0, None, 45.0, "tokens_per_minute", None, retryable=True)
    assert (await store.reserve("consumer:bob", limits, 1000, 0.0)).allowed  # keys are independent


@pytest.mark.anyio
async def test_requests_per_minute(store: Store) -> None:
    limits = TokenLimits(requests_per_minute=3)
    verdicts = [await store.reserve("k", limits, 10, 0.0) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining_requests for v in verdicts] == [2, 1, 0, 0]
    assert [v.remaining_tokens for v in verdicts] == [None] * 4
    assert verdicts[3].reason == "requests_per_minute" and verdicts[3].reservation is None


@pytest.mark.anyio
async def test_daily_budget_refuses_until_midnight_utc(store: Store, clock: Clock) -> None:
    limits = TokenLimits(budget_usd_per_day=0.10)
    assert (await store.reserve("k", limits, 0, 0.06)).allowed
    refused = await store.reserve("k", limits, 0, 0.05)
    assert not refused.allowed and refused.reason == "budget_usd_per_day"
    assert refused.reset_seconds == 12 * 3600 and refused.retryable
    assert (await store.reserve("k", limits, 0, 0.04)).allowed  # exactly the budget: 0.06 + 0.04
    assert not (await store.reserve("k", limits, 0, 0.000001)).allowed
    clock.now += 12 * 3600  # midnight: a new day
    allowed = await store.reserve("k", limits, 0, 0.10)
    assert allowed.allowed and allowed.reservation is not None and allowed.reservation.day == "2026-12-03"


@pytest.mark.anyio
async def test_monthly_budget_wins_over_the_daily_one(store: Store, clock: Clock) -> None:
    limits = TokenLimits(budget_usd_per_day=0.7, budget_usd_per_month=1.0)
    assert (await store.reserve("k", limits, 0, 0.6)).allowed
    both = await store.reserve("k", limits, 0, 0.5)  # over the day's and the month's budget
    end_of_month = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert both.reason == "budget_usd_per_month" and both.reset_seconds == end_of_month - NOON
    clock.now += 86_400
    assert (await store.reserve("k", limits, 0, 0.3)).allowed  # day 0.3, month 0.9
    refused = await store.reserve("k", limits, 0, 0.2)
    assert refused.reason == "budget_usd_per_month" and refused.reset_seconds == end_of_month - clock.now


@pytest.mark.anyio
async def test_a_refused_request_counts_nothing(store: Store) -> None:
    limits = TokenLimits(tokens_per_minute=1000, requests_per_minute=2, budget_usd_per_day=1.0)
    assert (await store.reserve("k", limits, 900, 0.5)).allowed
    refused = await store.reserve("k", limits, 200, 0.1)
    assert refused.reason == "tokens_per_minute"
    assert (refused.remaining_tokens, refused.remaining_requests) == (100, 1)  # as before it
    # Neither its tokens, nor the request, nor its cost were counted: this fills all three exactly.
    last = await store.reserve("k", limits, 100, 0.5)
    assert last.allowed and (last.remaining_tokens, last.remaining_requests) == (0, 0)


@pytest.mark.anyio
async def test_an_estimate_alone_over_the_token_limit_is_never_admissible(store: Store) -> None:
    limits = TokenLimits(tokens_per_minute=1000, budget_usd_per_month=0.01)
    too_large = await store.reserve("k", limits, 1001, 0.0)
    assert too_large.reason == "tokens_per_minute" and not too_large.retryable
    assert too_large.remaining_tokens == 1000  # nothing was counted
    assert (await store.reserve("k", limits, 1000, 0.01)).allowed
    # The month's budget is spent, but the oversized request is still refused for its size.
    assert (await store.reserve("k", limits, 1001, 0.01)).reason == "tokens_per_minute"
    over_budget = await store.reserve("k", limits, 0, 0.01)
    assert over_budget.reason == "budget_usd_per_month" and over_budget.retryable
    alone = await store.reserve("other", TokenLimits(budget_usd_per_day=0.1), 0, 0.2)
    assert alone.reason == "budget_usd_per_day" and not alone.retryable
    none_allowed = await store.reserve("other", TokenLimits(requests_per_minute=0), 0, 0.0)
    assert none_allowed.reason == "requests_per_minute" and not none_allowed.retryable


@pytest.mark.anyio
async def test_no_limits_admit_everything_and_still_count(store: Store) -> None:
    for _ in range(5):
        verdict = await store.reserve("k", TokenLimits(), 10_000, 3.0)
        assert verdict.allowed and (verdict.remaining_tokens, verdict.remaining_requests) == (None, None)
    # A budget configured later (a reload) sees what was spent: 15 USD today.
    assert not (await store.reserve("k", TokenLimits(budget_usd_per_day=15.0), 0, 0.01)).allowed


# -- reconcile ---------------------------------------------------------------------------------------


def reservation_of(verdict: Verdict) -> Reservation:
    assert verdict.allowed and verdict.reservation is not None
    return verdict.reservation


@pytest.mark.anyio
async def test_reconcile_down_gives_the_unused_estimate_back(store: Store) -> None:
    limits = TokenLimits(tokens_per_minute=1000, budget_usd_per_day=1.0)
    reservation = reservation_of(await store.reserve("k", limits, 800, 0.9))
    await store.reconcile(reservation, 300, 0.2)
    assert not (await store.reserve("k", limits, 701, 0.0)).allowed
    last = await store.reserve("k", limits, 700, 0.8)
    assert last.allowed and last.remaining_tokens == 0
    assert not (await store.reserve("k", limits, 0, 0.000001)).allowed


@pytest.mark.anyio
async def test_reconcile_up_may_pass_the_limit_and_refuses_later_requests(store: Store, clock: Clock) -> None:
    limits = TokenLimits(tokens_per_minute=1000, budget_usd_per_day=1.0)
    reservation = reservation_of(await store.reserve("k", limits, 500, 0.5))
    await store.reconcile(reservation, 1500, 1.5)  # the real usage: over both limits
    refused = await store.reserve("k", limits, 0, 0.0)
    assert refused.reason == "budget_usd_per_day" and refused.remaining_tokens == 0
    assert (
        await store.reserve("k", TokenLimits(tokens_per_minute=1000), 1, 0.0)
    ).reason == "tokens_per_minute"
    clock.now += 60  # the minute resets, the day does not
    next_minute = await store.reserve("k", TokenLimits(tokens_per_minute=1000), 1, 0.0)
    assert next_minute.allowed and next_minute.remaining_tokens == 999
    assert (await store.reserve("k", limits, 0, 0.0)).reason == "budget_usd_per_day"


@pytest.mark.anyio
async def test_a_failed_call_gives_the_estimate_back_but_still_counts_as_a_request(store: Store) -> None:
    limits = TokenLimits(tokens_per_minute=1000, requests_per_minute=2)
    reservation = reservation_of(await store.reserve("k", limits, 1000, 0.1))
    await store.reconcile(reservation, 0, 0.0)
    second = await store.reserve("k", limits, 1000, 0.1)
    assert second.allowed and (second.remaining_tokens, second.remaining_requests) == (0, 0)
    assert (await store.reserve("k", limits, 0, 0.0)).reason == "requests_per_minute"


@pytest.mark.anyio
async def test_reconcile_corrects_its_own_window_not_the_current_one(store: Store, clock: Clock) -> None:
    limits = TokenLimits(tokens_per_minute=1000, budget_usd_per_day=1.0)
    old = reservation_of(await store.reserve("k", limits, 900, 0.9))
    clock.now += 60
    assert (await store.reserve("k", limits, 300, 0.0)).remaining_tokens == 700
    await store.reconcile(old, 0, 0.0)  # a long stream ends in the next minute
    assert (await store.reserve("k", limits, 701, 0.0)).reason == "tokens_per_minute"  # not given back here
    assert (await store.reserve("k", limits, 700, 1.0)).allowed  # but the day's 0.9 USD was


# -- windows -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_minute_window_resets_on_its_boundary(store: Store, clock: Clock) -> None:
    limits = TokenLimits(tokens_per_minute=100, requests_per_minute=5)
    assert (await store.reserve("k", limits, 100, 0.0)).allowed
    clock.now += 59.75
    refused = await store.reserve("k", limits, 1, 0.0)
    assert not refused.allowed and refused.reset_seconds == pytest.approx(0.25)
    clock.now += 0.25
    verdict = await store.reserve("k", limits, 100, 0.0)
    assert verdict.allowed and verdict.remaining_requests == 4 and verdict.reset_seconds == 60.0
    assert reservation_of(verdict).window == int(NOON) + 60


@pytest.mark.anyio
async def test_the_month_and_year_roll_over(store: Store, clock: Clock) -> None:
    clock.now = NEW_YEARS_EVE + 60  # 23:59
    limits = TokenLimits(budget_usd_per_month=1.0)
    december = reservation_of(await store.reserve("k", limits, 0, 1.0))
    assert (december.day, december.month) == ("2026-12-31", "2026-12")
    refused = await store.reserve("k", limits, 0, 0.01)
    assert refused.reason == "budget_usd_per_month" and refused.reset_seconds == 60.0
    clock.now += 60
    january = reservation_of(await store.reserve("k", limits, 0, 1.0))
    assert (january.day, january.month) == ("2027-01-01", "2027-01")


# -- bursts and replicas -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_burst_of_50_concurrent_reserves_never_exceeds_the_limit(store: Store) -> None:
    limit = 10_000
    limits = TokenLimits(tokens_per_minute=limit)
    sizes = [random.Random(7 + i).randint(100, 1500) for i in range(50)]  # ~40,000 asked in all
    verdicts = await asyncio.gather(*(store.reserve("k", limits, size, 0.0) for size in sizes))
    admitted = sum(size for size, v in zip(sizes, verdicts, strict=True) if v.allowed)
    assert 0 < admitted <= limit
    assert any(not v.allowed for v in verdicts)
    # Exactly the admitted estimates were counted, no more.
    assert (await store.reserve("k", limits, 0, 0.0)).remaining_tokens == limit - admitted

    per_request = TokenLimits(requests_per_minute=20)
    burst = await asyncio.gather(*(store.reserve("r", per_request, 1, 0.0) for _ in range(50)))
    assert sum(v.allowed for v in burst) == 20


@pytest.mark.anyio
async def test_two_stores_sharing_one_redis_admit_exactly_the_limit(redis_url: str, clock: Clock) -> None:
    one = await fresh_redis(redis_url, clock)
    two = RedisLimitStore(redis_url, clock=clock)
    limits = TokenLimits(tokens_per_minute=1700, budget_usd_per_day=2.0)
    try:
        calls = [(one if i % 2 else two).reserve("shared", limits, 100, 0.01) for i in range(50)]
        verdicts = await asyncio.gather(*calls)
        assert sum(v.allowed for v in verdicts) == 17
        probe = await two.reserve("shared", limits, 0, 0.0)
        assert probe.remaining_tokens == 0
        day = redis_keys(one.prefix, "shared", int(NOON), "2026-12-02", "2026-12")[1]
        assert number(await one._client.get(day)) == 170_000  # 17 x 0.01 USD, exactly
    finally:
        await one.close()
        await two.close()


# -- Redis keys, outages -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_keys_expire(redis_url: str, clock: Clock) -> None:
    store = await fresh_redis(redis_url, clock)
    try:
        reservation = reservation_of(await store.reserve("k", TokenLimits(), 10, 0.5))
        keys = redis_keys(store.prefix, "k", reservation.window, reservation.day, reservation.month)
        assert keys == [
            f"kairos_llm:{{k}}:m:{int(NOON)}",
            "kairos_llm:{k}:d:2026-12-02",
            "kairos_llm:{k}:M:2026-12",
        ]
        ttls = [await store._client.ttl(key) for key in keys]
        for ttl, expected in zip(ttls, (MINUTE_TTL, DAY_TTL, MONTH_TTL), strict=True):
            assert expected - 5 <= ttl <= expected
        assert (MINUTE_TTL, DAY_TTL, MONTH_TTL) == (120, 2 * 86_400, 32 * 86_400)
        await store.reconcile(reservation, 20, 1.0)  # keeps the TTLs
        assert all(ttl > 0 for ttl in [await store._client.ttl(key) for key in keys])
        assert number(await store._client.hget(keys[0], "t")) == 20
        # A key that has expired is not brought back by a late reconcile.
        await store._client.delete(*keys)
        await store.reconcile(reservation, 30, 2.0)
        assert await store._client.exists(*keys) == 0
    finally:
        await store.close()


@pytest.mark.anyio
async def test_redis_down_fails_open_by_default(clock: Clock) -> None:
    store = RedisLimitStore(f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    limits = TokenLimits(tokens_per_minute=1)
    try:
        verdict = await store.reserve("k", limits, 1000, 1.0)
        assert verdict.allowed and verdict.remaining_tokens is None
        assert verdict.reservation is not None and not verdict.reservation.counted
        started = time.monotonic()
        assert (await store.reserve("k", limits, 1000, 1.0)).allowed  # no new attempt while marked down
        assert time.monotonic() - started < 0.05
        await store.reconcile(verdict.reservation, 5, 0.0)  # uncounted: nothing to correct
        counted = Reservation("k", 10, 0.0, int(NOON), "2026-12-02", "2026-12")
        await store.reconcile(counted, 20, 0.0)  # never raises: the usage is lost, and counted
        assert (store.failures, store.admitted_uncounted, store.lost_reconciliations) == (3, 2, 1)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_redis_down_fails_closed_when_asked(clock: Clock) -> None:
    store = RedisLimitStore(f"redis://127.0.0.1:{free_port()}/0", clock=clock, fail_open=False)
    try:
        for _ in range(2):
            with pytest.raises(LimitStoreUnavailable, match="unreachable"):
                await store.reserve("k", TokenLimits(), 1, 0.0)
        assert store.failures == 2 and store.admitted_uncounted == 0
    finally:
        await store.close()


# -- memory ------------------------------------------------------------------------------------------


def test_memory_is_bounded_in_keys(clock: Clock) -> None:
    store = MemoryLimitStore(clock=clock, max_keys=1000)
    limits = TokenLimits(requests_per_minute=1)
    for client in range(5000):
        assert store.reserve_now(f"consumer:{client}", limits, 1, 0.0).allowed
    assert len(store) == 1000
    assert not store.reserve_now("consumer:4999", limits, 1, 0.0).allowed  # recent: kept
    assert store.reserve_now("consumer:0", limits, 1, 0.0).allowed  # oldest: evicted, forgotten


@pytest.mark.anyio
async def test_make_limit_store(redis_url: str) -> None:
    assert isinstance(make_limit_store(None), MemoryLimitStore)
    store = make_limit_store(redis_url, fail_open=False)
    assert isinstance(store, RedisLimitStore) and not store.fail_open
    await store.close()


def test_amounts_and_limits_are_checked() -> None:
    store = MemoryLimitStore()
    for tokens, cost in ((-1, 0.0), (1, -0.5), (1, float("nan")), (1, float("inf"))):
        with pytest.raises(ValueError):
            store.reserve_now("k", TokenLimits(), tokens, cost)
    for options in ({"tokens_per_minute": -1}, {"requests_per_minute": 1.5}, {"budget_usd_per_day": -2.0}):
        with pytest.raises(ValueError):
            TokenLimits(**options)


# -- the two stores agree ----------------------------------------------------------------------------

LIMIT_SETS = [
    TokenLimits(
        tokens_per_minute=300, requests_per_minute=4, budget_usd_per_day=0.05, budget_usd_per_month=0.12
    ),
    TokenLimits(tokens_per_minute=200),
    TokenLimits(requests_per_minute=2, budget_usd_per_day=0.02),
    TokenLimits(budget_usd_per_month=0.03),
    TokenLimits(),
]
STEPS = [0.25, 20.0, 59.75, 60.0, 3600.0, 86_400.0, 31 * 86_400.0]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.sampled_from(["a", "b"]),
            st.sampled_from(LIMIT_SETS),
            st.integers(0, 350) | st.sampled_from([199, 200, 201, 299, 300, 301]),  # and the limits' edges
            st.floats(0, 0.03) | st.sampled_from([0.01, 0.02, 0.03]),
        ),
        st.tuples(st.just("reconcile"), st.integers(0, 100), st.integers(0, 500), st.floats(0, 0.05)),
        st.tuples(st.just("advance"), st.sampled_from(STEPS)),
    ),
    max_size=30,
)


async def replay(store: LimitStore, clock: Clock, ops: list[tuple[Any, ...]]) -> list[Verdict | None]:
    outcomes: list[Verdict | None] = []
    reservations: list[Reservation] = []
    for op in ops:
        if op[0] == "reserve":
            verdict = await store.reserve(op[1], op[2], op[3], op[4])
            if verdict.reservation is not None:
                reservations.append(verdict.reservation)
            outcomes.append(verdict)
        elif op[0] == "reconcile" and reservations:
            await store.reconcile(reservations[op[1] % len(reservations)], op[2], op[3])
            outcomes.append(None)
        elif op[0] == "advance":
            clock.now += op[1]
    # A final look at every counter set.
    for key in ("a", "b"):
        outcomes.append(await store.reserve(key, LIMIT_SETS[0], 0, 0.0))
    return outcomes


async def counters(store: Store, key: str) -> tuple[int, int, int, int]:
    """A key's counters now (tokens and requests this minute, micro-dollars today and this month),
    read from the store itself: a difference there may not have shown in a verdict yet."""
    now = reservation_of(await store.reserve(key, TokenLimits(), 0, 0.0))  # brings the periods up to date
    if isinstance(store, MemoryLimitStore):
        state = store._counters[key]
        return state.tokens, state.requests, state.day_micro, state.month_micro
    minute, day, month = redis_keys(store.prefix, key, now.window, now.day, now.month)
    tokens, requests = await store._client.hmget(minute, "t", "r")
    return (
        number(tokens),
        number(requests),
        number(await store._client.get(day)),
        number(await store._client.get(month)),
    )


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations)
def test_memory_and_redis_give_the_same_verdicts(redis_url: str, ops: list[tuple[Any, ...]]) -> None:
    async def both() -> tuple[list[Any], list[Any]]:
        memory_clock, redis_clock = Clock(NEW_YEARS_EVE), Clock(NEW_YEARS_EVE)
        redis_store = await fresh_redis(redis_url, redis_clock)
        memory_store = MemoryLimitStore(clock=memory_clock)
        try:
            in_redis: list[Any] = [*await replay(redis_store, redis_clock, ops)]
            in_redis += [await counters(redis_store, key) for key in ("a", "b")]
        finally:
            await redis_store.close()
        in_memory: list[Any] = [*await replay(memory_store, memory_clock, ops)]
        in_memory += [await counters(memory_store, key) for key in ("a", "b")]
        return in_memory, in_redis

    in_memory, in_redis = asyncio.run(both())
    assert in_memory == in_redis
