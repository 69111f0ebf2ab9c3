"""Token limits and USD budgets for the LLM routes: reserve before the call, reconcile after.

An LLM call's cost is known only when it ends, but a limit checked only then lets a burst of
concurrent calls through together (each sees the counters from before the others) and overshoot
by the whole burst. So the gateway charges an *estimate* first (prompt tokens + ``max_tokens``, and
its price): ``reserve`` admits a request only if every limit still holds with the estimate added,
and counts it at once, atomically. Concurrent requests therefore see each other's estimates and
the admitted total never exceeds a limit. When the call ends, ``reconcile`` replaces the estimate
with the real usage (less when the answer was short, more when the estimate was wrong, nothing when
the call failed before any usage: the request itself still counts). Usage above the estimate may
push a counter over its limit; that is recorded, and later requests are refused until it resets.

Counters, per key (a consumer, a consumer and model, ...):

- tokens and requests per *fixed UTC minute window*: exact, the same in memory and in Redis, and
  what OpenAI's ``x-ratelimit-*-tokens``/``-requests`` headers describe;
- USD spent per UTC day and per UTC month, kept as integer micro-dollars so Redis adds them exactly
  (a request's cost is rounded to the micro-dollar, half a micro-dollar at most).

Every counter is kept whether or not a limit is configured for it, so a limit added by a config
reload applies to what was already spent. A refusal counts nothing and names the limit that blocks
longest (month, then day, then tokens, then requests): its ``reset_seconds`` is when retrying can
help. A request whose estimate alone exceeds a limit (``max_tokens`` above ``tokens_per_minute``,
say) can never pass: it is refused with ``retryable=False``.

Two stores with one behaviour. ``MemoryLimitStore`` (one process) decides without awaiting, so one
event loop needs no lock. ``RedisLimitStore`` (shared by replicas) runs ONE Lua script per operation:
``RESERVE_SCRIPT`` reads the counters, checks all four limits and increments them only if all pass;
``RECONCILE_SCRIPT`` adds the difference. The script and ``_decide`` mirror each other line for line,
and both stores build their verdicts with the same function (``_verdict``), so they give the same
answers (tests/llm/test_limits.py checks it with Hypothesis). The clock is the gateway's (injectable,
``time.time`` by default), not Redis's ``TIME`` as in the request rate limiter: a request's minute,
day and month name its keys, which must be known before the script runs (declared in ``KEYS``, one
Redis Cluster slot via the ``{key}`` hash tag) and are kept in the ``Reservation`` for reconcile;
replicas' clocks are NTP-synced, and a skew of a few milliseconds only moves a request at a window
boundary into the neighbouring window. Redis keys expire on their own: a minute's 120 s, a day's
2 days and a month's 32 days after the last request counted in them.

While Redis is unreachable the store behaves as the request rate limiter does
(``kairos.redis_outage``: one log line per outage, a second without retrying after each failure):
with ``fail_open`` (the default, as the rate limiter's ``fail_closed: false``) ``reserve`` admits
the request uncounted (``Reservation.counted`` is false, and its ``reconcile`` does nothing); without
it ``reserve`` raises ``LimitStoreUnavailable`` (the endpoint answers 503, as the rate limiter does
when it fails closed). ``reconcile`` never raises: the call has happened, and the usage lost is
counted in ``lost_reconciliations``.

Why not the ``limits`` library (the one the ``slowapi``/``flask-limiter`` family uses): it cannot
express reserve/reconcile, so there was nothing to measure. ``hit(item, *ids, cost=n)`` takes one
limit per call, and its fixed window increments *before* comparing (``incr(...) <= amount``), so a
refused hit is still counted; four limits checked one by one would leave the first ones counted
when a later one refuses, and ``test()`` then ``hit()`` is two round trips that concurrent replicas
interleave (the burst bound is lost). Nothing gives an amount back (no reconcile). Its windows start
at a key's first hit (``EXPIRE`` on the first increment), and its "month" is 30 days: not UTC
calendar budgets. The remaining amount (for the headers) is one more round trip.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from redis.exceptions import RedisError

from kairos.redis_outage import Outage, connect, redacted

MINUTE = 60
MINUTE_TTL = 2 * MINUTE  # a minute window's Redis keys live this long after the last request counted
DAY_TTL = 2 * 86_400
MONTH_TTL = 32 * 86_400
MAX_KEYS = 100_000  # MemoryLimitStore: counter sets kept before the least recently used is evicted
MICRO = 1_000_000  # micro-dollars per dollar
DEFAULT_PREFIX = "kairos_llm"

_NO_LIMIT = -1  # a limit that is not set, as the Lua script receives it

# What refused a request; the same numbers in the Lua script.
_ALLOWED, _TOO_LARGE, _TPM, _RPM, _DAY, _MONTH = 0, 1, 2, 3, 4, 5
_REASONS = {
    _TOO_LARGE: "tokens_per_minute",
    _TPM: "tokens_per_minute",
    _RPM: "requests_per_minute",
    _DAY: "budget_usd_per_day",
    _MONTH: "budget_usd_per_month",
}


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """The limits of one counter set; ``None`` is no limit. Budgets are in USD."""

    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    budget_usd_per_day: float | None = None
    budget_usd_per_month: float | None = None

    def __post_init__(self) -> None:
        for name in ("tokens_per_minute", "requests_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
        for name in ("budget_usd_per_day", "budget_usd_per_month"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``reserve`` counted, so that ``reconcile`` corrects the same counters later (even after
    the window or the day has moved on)."""

    key: str  # which counter set (e.g. "consumer:alice|model:gpt-4o")
    tokens: int  # the estimate reserved (prompt tokens + max_tokens)
    cost_usd: float  # the estimated cost reserved
    window: int  # the minute window it was counted in: its start, in seconds since the epoch (UTC)
    day: str  # the budget periods it was counted in, UTC: "2026-12-02"
    month: str  # "2026-12"
    counted: bool = True  # False: admitted uncounted while the store was down (fail-open); reconcile skips it


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining_tokens: int | None  # tokens left this minute after this request (x-ratelimit-remaining-tokens)
    remaining_requests: int | None  # requests left this minute after it (x-ratelimit-remaining-requests)
    reset_seconds: float  # to the end of the minute window; of the day/month for a budget refusal
    reason: str | None  # the limit that refused: "tokens_per_minute", "requests_per_minute", ...
    reservation: Reservation | None  # set when allowed
    retryable: bool = True  # False: this request's estimate alone exceeds the limit; waiting cannot help


class LimitStore(Protocol):
    async def reserve(self, key: str, limits: TokenLimits, tokens: int, cost_usd: float) -> Verdict:
        """Admit a request whose estimate is ``tokens`` and ``cost_usd`` against ``limits``, counting
        the estimate, or refuse it and count nothing."""
        ...

    async def reconcile(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """Replace the reservation's estimate with the real usage (0/0: the call failed before any
        usage; the estimate is given back, the request still counts)."""
        ...

    async def close(self) -> None: ...


class LimitStoreUnavailable(Exception):
    """Redis cannot answer and the store fails closed: the endpoint refuses the request (503)."""


def make_limit_store(redis_url: str | None, *, fail_open: bool = True) -> LimitStore:
    """Redis when the gateway has one (limits shared by every replica), else this process's memory."""
    if redis_url is None:
        return MemoryLimitStore()
    return RedisLimitStore(redis_url, fail_open=fail_open)


# -- shared by both stores -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Periods:
    """Where ``now`` falls: the minute window, day and month its counters belong to."""

    now: float
    window: int
    day: str
    month: str
    day_end: float
    month_end: float

    def reset(self, code: int) -> float:
        if code == _DAY:
            return self.day_end - self.now
        if code == _MONTH:
            return self.month_end - self.now
        return self.window + MINUTE - self.now


def _periods(now: float) -> _Periods:
    window = math.floor(now / MINUTE) * MINUTE
    return _Periods(now, window, *_calendar(window))


@functools.lru_cache(maxsize=16)
def _calendar(window: int) -> tuple[str, str, float, float]:
    """Day, month and their ends for a minute window (every request of a minute shares them: a day
    is a whole number of minutes), computed once per minute rather than per request."""
    start = datetime.fromtimestamp(window, UTC)
    day = datetime(start.year, start.month, start.day, tzinfo=UTC)
    next_month = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return (
        start.strftime("%Y-%m-%d"),
        start.strftime("%Y-%m"),
        (day + timedelta(days=1)).timestamp(),
        next_month.timestamp(),
    )


def _caps(limits: TokenLimits) -> tuple[int, int, int, int]:
    """The limits as the script takes them: integers (budgets in micro-dollars), -1 for none."""
    day, month = limits.budget_usd_per_day, limits.budget_usd_per_month
    return (
        _NO_LIMIT if limits.tokens_per_minute is None else limits.tokens_per_minute,
        _NO_LIMIT if limits.requests_per_minute is None else limits.requests_per_minute,
        _NO_LIMIT if day is None else round(day * MICRO),
        _NO_LIMIT if month is None else round(month * MICRO),
    )


def _amounts(tokens: int, cost_usd: float) -> int:
    """Check a usage or estimate; its cost in micro-dollars."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, not {tokens!r}")
    if not (isinstance(cost_usd, int | float) and math.isfinite(cost_usd) and cost_usd >= 0):
        raise ValueError(f"cost_usd must be a finite number >= 0, not {cost_usd!r}")
    return round(cost_usd * MICRO)


def _decide(caps: tuple[int, int, int, int], tokens: int, micro: int, t: int, r: int, d: int, m: int) -> int:
    """Mirrors RESERVE_SCRIPT: what refuses one more request of ``tokens`` costing ``micro`` given the
    counters (tokens and requests this minute, micro-dollars today and this month); ``_ALLOWED``.
    A refusal names the limit that blocks longest: the month's outlasts the day's, which outlasts
    the minute's."""
    tpm, rpm, day_cap, month_cap = caps
    if tpm >= 0 and tokens > tpm:
        return _TOO_LARGE
    if month_cap >= 0 and m + micro > month_cap:
        return _MONTH
    if day_cap >= 0 and d + micro > day_cap:
        return _DAY
    if tpm >= 0 and t + tokens > tpm:
        return _TPM
    if rpm >= 0 and r + 1 > rpm:
        return _RPM
    return _ALLOWED


def _verdict(
    code: int,
    key: str,
    caps: tuple[int, int, int, int],
    tokens: int,
    cost_usd: float,
    micro: int,
    periods: _Periods,
    t: int,
    r: int,
) -> Verdict:
    """The verdict for ``_decide``'s (or the script's) answer, given the minute's counters before it."""
    tpm, rpm, day_cap, month_cap = caps
    if code == _ALLOWED:
        t, r = t + tokens, r + 1
    # Counters may already be over (real usage above an estimate): nothing remains then.
    remaining_tokens = None if tpm < 0 else max(0, tpm - t)
    remaining_requests = None if rpm < 0 else max(0, rpm - r)
    if code == _ALLOWED:
        reservation = Reservation(key, tokens, cost_usd, periods.window, periods.day, periods.month)
        return Verdict(True, remaining_tokens, remaining_requests, periods.reset(code), None, reservation)
    retryable = not (
        code == _TOO_LARGE
        or (code == _RPM and rpm == 0)
        or (code == _DAY and micro > day_cap)
        or (code == _MONTH and micro > month_cap)
    )
    return Verdict(
        False, remaining_tokens, remaining_requests, periods.reset(code), _REASONS[code], None, retryable
    )


# -- memory ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Counters:
    """One key's counters, each with the period it counts (a stale period reads as zero)."""

    window: int
    tokens: int
    requests: int
    day: str
    day_micro: int
    month: str
    month_micro: int


class MemoryLimitStore:
    """One process's counters. ``reserve`` never awaits, so it is atomic on the event loop (the burst
    bound holds without a lock). Keys are kept in least-recently-used order and at most ``max_keys``
    of them: the least recently used is evicted (its counters are forgotten, which admits more, never
    less) when a flood of distinct keys arrives. A key's state is one small object (~300 bytes
    measured, ~6 µs per reserve); keys are never swept by age, since a month's budget must outlive
    a month of silence."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counters: OrderedDict[str, _Counters] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counters)

    async def reserve(self, key: str, limits: TokenLimits, tokens: int, cost_usd: float) -> Verdict:
        return self.reserve_now(key, limits, tokens, cost_usd)

    def reserve_now(self, key: str, limits: TokenLimits, tokens: int, cost_usd: float) -> Verdict:
        """``reserve`` without awaiting."""
        micro = _amounts(tokens, cost_usd)
        periods = _periods(self._clock())
        caps = _caps(limits)
        state = self._counters.get(key)
        t = r = d = m = 0
        if state is not None:
            if state.window == periods.window:
                t, r = state.tokens, state.requests
            if state.day == periods.day:
                d = state.day_micro
            if state.month == periods.month:
                m = state.month_micro
        code = _decide(caps, tokens, micro, t, r, d, m)
        if code == _ALLOWED:
            counters = _Counters(
                periods.window, t + tokens, r + 1, periods.day, d + micro, periods.month, m + micro
            )
            self._counters[key] = counters
            self._counters.move_to_end(key)
            if len(self._counters) > self._max_keys:
                self._counters.popitem(last=False)
        return _verdict(code, key, caps, tokens, cost_usd, micro, periods, t, r)

    async def reconcile(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        self.reconcile_now(reservation, tokens, cost_usd)

    def reconcile_now(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """Mirrors RECONCILE_SCRIPT: the difference goes to the counters of the reservation's own
        periods if they are still kept (a period that has ended can no longer refuse anyone)."""
        micro = _amounts(tokens, cost_usd)
        state = self._counters.get(reservation.key)
        if state is None or not reservation.counted:
            return
        delta_tokens = tokens - reservation.tokens
        delta_micro = micro - round(reservation.cost_usd * MICRO)
        if state.window == reservation.window:
            state.tokens = max(0, state.tokens + delta_tokens)
        if state.day == reservation.day:
            state.day_micro = max(0, state.day_micro + delta_micro)
        if state.month == reservation.month:
            state.month_micro = max(0, state.month_micro + delta_micro)

    async def close(self) -> None:
        self._counters.clear()


# -- Redis -----------------------------------------------------------------------------------------

# KEYS: the minute hash (fields t = tokens, r = requests), the day's and the month's micro-dollars.
# ARGV: tokens, micro-dollars, the four caps (-1: none), the three TTLs in seconds. Increments take
# the ARGV strings themselves (a Lua number above 1e14 would turn into "1e+15").
# Returns the decision (the codes above) and the counters before this request: t, r, day, month.
RESERVE_SCRIPT = """
local tokens, micro = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm, rpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local day_cap, month_cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local f = redis.call('HMGET', KEYS[1], 't', 'r')
local t, r = tonumber(f[1]) or 0, tonumber(f[2]) or 0
local d = tonumber(redis.call('GET', KEYS[2])) or 0
local m = tonumber(redis.call('GET', KEYS[3])) or 0
local code = 0
if tpm >= 0 and tokens > tpm then code = 1
elseif month_cap >= 0 and m + micro > month_cap then code = 5
elseif day_cap >= 0 and d + micro > day_cap then code = 4
elseif tpm >= 0 and t + tokens > tpm then code = 2
elseif rpm >= 0 and r + 1 > rpm then code = 3
end
if code == 0 then
  redis.call('HINCRBY', KEYS[1], 't', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'r', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('INCRBY', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
return {code, t, r, d, m}
"""

# KEYS: as RESERVE_SCRIPT's, for the reservation's periods. ARGV: the token and micro-dollar
# differences. A key that has expired is not brought back (its period is long over).
RECONCILE_SCRIPT = """
local dt, dm = tonumber(ARGV[1]), tonumber(ARGV[2])
if dt ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], 't', ARGV[1]) < 0 then redis.call('HSET', KEYS[1], 't', 0) end
end
for i = 2, 3 do
  if dm ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], ARGV[2]) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0
"""


def redis_keys(prefix: str, key: str, window: int, day: str, month: str) -> list[str]:
    """The keys of one counter set's periods. ``{key}`` is a Redis Cluster hash tag: the three keys
    of one script share a slot (whatever braces the key holds, all three keys' tags are the same;
    ``prefix`` holds none). A key starting with ``}`` would make the tag empty, which Redis ignores
    (each key would hash whole): such a key is tagged with its digest instead."""
    if key.startswith("}"):
        key = "#" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    head = f"{prefix}:{{{key}}}"
    return [f"{head}:m:{window}", f"{head}:d:{day}", f"{head}:M:{month}"]


class RedisLimitStore:
    """Counters in Redis, shared by every replica; one script (one round trip) per operation."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        fail_open: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.fail_open = fail_open
        self._clock = clock
        self._client = connect(url)
        self._reserve: Any = self._client.register_script(RESERVE_SCRIPT)
        self._reconcile: Any = self._client.register_script(RECONCILE_SCRIPT)
        self._outage = Outage("LLM limit store", url)
        self.admitted_uncounted = 0  # requests admitted while Redis was down (fail-open)
        self.lost_reconciliations = 0  # real usage that could not be recorded (Redis down)

    @property
    def failures(self) -> int:
        """Operations that could not reach Redis (for a metric)."""
        return self._outage.failures

    async def reserve(self, key: str, limits: TokenLimits, tokens: int, cost_usd: float) -> Verdict:
        micro = _amounts(tokens, cost_usd)
        periods = _periods(self._clock())
        caps = _caps(limits)
        if self._outage.down():
            self._outage.failures += 1
            return self._unavailable(key, tokens, cost_usd, periods, None)
        keys = redis_keys(self.prefix, key, periods.window, periods.day, periods.month)
        try:
            code, t, r, _, _ = await self._reserve(
                keys=keys, args=[tokens, micro, *caps, MINUTE_TTL, DAY_TTL, MONTH_TTL]
            )
        except (RedisError, OSError) as exc:
            consequence = (
                ": admitting LLM requests uncounted" if self.fail_open else ": refusing LLM requests"
            )
            self._outage.failed(exc, consequence)
            return self._unavailable(key, tokens, cost_usd, periods, exc)
        self._outage.reached()
        return _verdict(int(code), key, caps, tokens, cost_usd, micro, periods, int(t), int(r))

    def _unavailable(
        self, key: str, tokens: int, cost_usd: float, periods: _Periods, exc: BaseException | None
    ) -> Verdict:
        if not self.fail_open:
            message = f"redis at {redacted(self.url)} is unreachable"
            raise LimitStoreUnavailable(f"{message}: {exc}" if exc else message) from exc
        self.admitted_uncounted += 1
        reservation = Reservation(
            key, tokens, cost_usd, periods.window, periods.day, periods.month, counted=False
        )
        return Verdict(True, None, None, periods.reset(_ALLOWED), None, reservation)

    async def reconcile(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        micro = _amounts(tokens, cost_usd)
        if not reservation.counted:
            return
        delta_tokens = tokens - reservation.tokens
        delta_micro = micro - round(reservation.cost_usd * MICRO)
        if delta_tokens == 0 and delta_micro == 0:
            return
        if self._outage.down():
            self._outage.failures += 1
            self.lost_reconciliations += 1
            return
        keys = redis_keys(
            self.prefix, reservation.key, reservation.window, reservation.day, reservation.month
        )
        try:
            await self._reconcile(keys=keys, args=[delta_tokens, delta_micro])
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, ": LLM usage not recorded")
            self.lost_reconciliations += 1
            return
        self._outage.reached()

    async def close(self) -> None:
        await self._client.aclose()
