"""The adapter to the ``limits`` library's storages, on limits' own memory storage (no server): the
numbers the headers need, a Composite, keys every storage takes, and an unreachable storage.
tests/e2e/test_limits_storages.py runs it on a real memcached shared by two gateways."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kairos.config.ratelimit import RateLimitConfig
from kairos.ratelimit.limiter import RateLimiter
from kairos.ratelimit.limits_store import DECISION_TIMEOUT, LimitsStore, _storage_key
from kairos.ratelimit.memory import MemoryStore
from kairos.ratelimit.policy import Limit, compile_policy
from kairos.ratelimit.redis_store import RedisStore, StoreUnavailable
from tests.processes import free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store() -> AsyncIterator[LimitsStore]:
    shared = LimitsStore("async+memory://")
    yield shared
    await shared.close()


def policy_config(window_type: str, per_window: int, seconds: int = 60, **extra: Any) -> RateLimitConfig:
    return RateLimitConfig.model_validate(
        {"requests_per_window": per_window, "window_duration": seconds, "window_type": window_type, **extra}
    )


def limit(window_type: str, per_window: int, seconds: int = 60) -> Limit:
    return compile_policy(policy_config(window_type, per_window, seconds)).limits[0]


@pytest.mark.anyio
async def test_fixed_window_counts_down_and_resets_with_the_clocks_window(store: LimitsStore) -> None:
    rule = limit("FixedWindow", 3, 3600)
    verdicts = [(await store.acquire(["k"], [rule]))[0] for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0, 0]
    until_next_hour = 3600 - time.time() % 3600
    for verdict in verdicts:
        assert abs(verdict.reset - until_next_hour) < 1  # windows aligned to the clock, as Kairos's own
    assert verdicts[3].retry_after == pytest.approx(verdicts[3].reset)
    assert [v.retry_after for v in verdicts[:3]] == [0.0, 0.0, 0.0]


@pytest.mark.anyio
async def test_sliding_window_admits_the_capacity_and_reports_a_retry(store: LimitsStore) -> None:
    rule = limit("SlidingWindow", 4, 60)
    verdicts = [(await store.acquire(["k"], [rule]))[0] for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 4 + [False] * 2
    assert [v.remaining for v in verdicts] == [3, 2, 1, 0, 0, 0]
    assert 0 < verdicts[4].retry_after <= 60 and 0 < verdicts[4].reset <= 60


@pytest.mark.anyio
async def test_keys_and_limits_are_independent(store: LimitsStore) -> None:
    rule, other = limit("FixedWindow", 1), limit("FixedWindow", 2)
    assert (await store.acquire(["a"], [rule]))[0].allowed
    assert not (await store.acquire(["a"], [rule]))[0].allowed
    assert (await store.acquire(["b"], [rule]))[0].allowed
    assert (await store.acquire(["a"], [other]))[0].remaining == 1  # another limit: another counter


@pytest.mark.anyio
@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow"])
async def test_a_composite_counts_nothing_when_one_limit_refuses(
    store: LimitsStore, window_type: str
) -> None:
    tight, loose = limit(window_type, 1), limit("SlidingWindow", 10)
    first = await store.acquire(["ip", "route"], [tight, loose])
    assert [v.allowed for v in first] == [True, True] and first[1].remaining == 9
    refused = await store.acquire(["ip", "route"], [tight, loose])
    assert [v.allowed for v in refused] == [False, True]
    # The refused request was not counted by the loose limit.
    assert (await store.acquire(["other-ip", "route"], [tight, loose]))[1].remaining == 8


def test_storage_keys_are_short_printable_and_distinct() -> None:
    rule = limit("FixedWindow", 1)
    plain = f"kairos_rl:{rule.fingerprint}:global:ip=10.0.0.1"
    assert _storage_key(plain, rule) == plain
    spaced = f"kairos_rl:{rule.fingerprint}:http GET,HEAD /p/{{id}}:route=http GET /p"
    long = f"kairos_rl:{rule.fingerprint}:global:u=" + "x" * 300
    keys = {_storage_key(key, rule) for key in (plain, spaced, spaced + "2", long)}
    assert len(keys) == 4
    for key in keys:
        assert len(key) <= 160 and " " not in key and key.isascii()
    assert _storage_key(spaced, rule).startswith(f"kairos_rl:{rule.fingerprint}:h=")
    assert _storage_key("no fingerprint here", rule).startswith("h=")


@pytest.mark.anyio
async def test_an_unreachable_storage_fails_fast_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    dead = LimitsStore(f"memcached://127.0.0.1:{free_port()}")
    rule = limit("FixedWindow", 5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kairos"):
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await dead.acquire(["k"], [rule])
    assert time.monotonic() - started < DECISION_TIMEOUT + 0.5  # one failed connect, then no wait at all
    assert dead.failures == 3
    lines = [record.getMessage() for record in caplog.records if "unreachable" in record.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("rate limit store at memcached://127.0.0.1:")
    await dead.close()


@pytest.mark.anyio
async def test_the_limiter_picks_the_store_by_scheme_and_fails_open_or_closed() -> None:
    limiter = RateLimiter()
    port = free_port()
    chosen = {
        uri: type(limiter.compile(policy_config("FixedWindow", 1, storage_uri=uri))[1])
        for uri in (
            "memory://",
            "redis://127.0.0.1:1/0",
            "redis+sentinel://127.0.0.1:1/mymaster",
            f"memcached://127.0.0.1:{port}",
            "async+memory://",
            "async+redis://127.0.0.1:1/0",
        )
    }
    assert chosen == {
        "memory://": MemoryStore,
        "redis://127.0.0.1:1/0": RedisStore,
        "redis+sentinel://127.0.0.1:1/mymaster": RedisStore,
        f"memcached://127.0.0.1:{port}": LimitsStore,
        "async+memory://": LimitsStore,
        "async+redis://127.0.0.1:1/0": LimitsStore,
    }
    shared = policy_config("FixedWindow", 1, storage_uri="async+memory://")
    decisions = [await limiter.check(shared, "global", "10.0.0.1", None, "/r") for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, False]
    assert dict(decisions[0].headers)[b"x-ratelimit-remaining"] == b"0"
    refused = dict(decisions[1].headers)
    assert refused[b"x-ratelimit-limit"] == b"1" and int(refused[b"retry-after"]) >= 1

    down = f"memcached://127.0.0.1:{port}"
    open_policy = policy_config("FixedWindow", 1, storage_uri=down)
    closed_policy = policy_config("FixedWindow", 1, storage_uri=down, fail_closed=True)
    opened = [await limiter.check(open_policy, "global", "10.0.0.1", None, "/r") for _ in range(3)]
    assert [(d.allowed, d.headers) for d in opened] == [(True, [])] * 3
    closed = await limiter.check(closed_policy, "global", "10.0.0.1", None, "/r")
    assert (closed.allowed, closed.unavailable, closed.headers) == (False, True, [(b"retry-after", b"1")])
    assert limiter.admitted_without_store == 3 and limiter.store_failures == 4
    await limiter.close()
