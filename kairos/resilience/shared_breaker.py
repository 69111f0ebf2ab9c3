"""Circuit breakers shared by the replicas through Redis (``"shared": true`` and ``KAIROS_REDIS_URL``).

Why: with per-replica breakers, N replicas behind a load balancer each send ``failure_threshold``
failures to a dead backend before they stop, and each lets its own half-open probes through, so a
recovering backend gets N times the probes it was meant to. Shared, the replicas count together:
one opening stops them all, and ``half_open_max_calls`` probes run in total.

**State in Redis.** Per backend (its key ``scheme://host:port``) three keys with one hash tag, so
they sit on one Redis Cluster slot and one script can touch them all: ``kairos:breaker:{<key>}``
(a hash: state, consecutive failures, probe time, successful probes, probe slots, epoch),
``...:probes`` (a sorted set: the half-open probe slots in use, each with a lease) and ``...:window``
(a hash: the ratio mode's ten buckets). A closed circuit with nothing counted has no keys at all.
``SCRIPT`` makes every change atomically in one round trip and mirrors ``CircuitBreaker``'s rules
(kairos/resilience/breaker.py); the clock is Redis's (``TIME``), so replicas' clocks do not matter.

**What a replica asks Redis, and when.** Each replica keeps the state Redis last returned (a
``SharedCircuit``, the "mirror") and answers from it for ``SYNC_SECONDS`` (250 ms): the balancer
refreshes a mirror that is older before it picks (one call per backend and interval, whatever the
traffic), so an opening made by another replica stops this one within that time, and an idle replica
sees it at its first request. Besides that:

- a failure is one call (``outcome``); a success is one call only while failures are being counted
  (count mode: the shared consecutive count is above 0), else nothing. In ratio mode successes are
  added up here and sent with the next call (at most ``SYNC_SECONDS`` later);
- half-open: each probe takes a slot with one call (``acquire``: atomic, so ``half_open_max_calls``
  holds across replicas) and gives it back with its outcome. A slot has a lease (the route's
  ``timeout_ms`` + 1 s), so a replica that dies holding one does not block probing for ever.

So a healthy shared backend costs about 4 Redis calls a second per replica (measured in
tests/e2e/test_shared_state.py and docs/resilience.md), not one per request.

**Redis unreachable** (``kairos.redis_outage``: logged once, then once when it is back, every call
it cost counted in ``kairos_circuit_breaker_store_errors_total``): each replica's own breaker
decides, as if the block said ``"shared": false``. A circuit the mirror showed open stays open on the
replica until the time Redis had set (``CircuitBreaker.hold_open``); when Redis answers again the
shared state decides again (a restarted, empty Redis: every circuit closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kairos.redis_outage import Client, Outage, connect
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitFields

if TYPE_CHECKING:
    from kairos.config.breaker import BackendCircuitBreakerConfig
    from kairos.config.policies import CircuitBreakerConfig
    from kairos.routing.route import Route

logger = logging.getLogger("kairos")

SYNC_SECONDS: Final = 0.25  # how old a mirror may be before the next request refreshes it
KEY_PREFIX: Final = "kairos:breaker:"
NO_TIMEOUT_LEASE_MS: Final = 300_000  # a probe's lease on a route with timeout_ms 0 (long streams)

# KEYS: the state hash, the probe slots (sorted set), the ratio-mode window (hash); one hash tag.
# ARGV: op (sync | outcome | acquire | release), failure_threshold, success_threshold,
#       reset_timeout_ms, failure_rate_threshold (0: count mode), window_ms, minimum_requests,
#       half_open_max_calls, failed (0/1), ticket ('' = not a probe), successes not yet counted
#       (ratio mode), lease_ms.
# Returns {state c|o|h, consecutive failures, ms until a probe may go, probe slots in use, slots
#          allowed, epoch, admitted (acquire: 0 refused, 1 a normal call, 2 a probe)}.
SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = t[1] .. string.format('%06d', tonumber(t[2]))
local op = ARGV[1]
local threshold, needed, reset = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, window, minimum = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_probes, failed, ticket = tonumber(ARGV[8]), ARGV[9] == '1', ARGV[10]
local successes, lease = tonumber(ARGV[11]), tonumber(ARGV[12])
local ttl = math.max(reset, window) * 2 + 3600000
local h = redis.call('HMGET', KEYS[1], 's', 'p', 'm')
local s = h[1] or 'c'
local admitted = 0

local function open_circuit()
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 's', 'o', 'f', 0, 'p', now + reset, 'k', 0, 'm', max_probes, 'e', epoch)
  redis.call('PEXPIRE', KEYS[1], ttl)
  s = 'o'
end

local function close_circuit()
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  s = 'c'
end

-- Ratio mode: add outcomes to the current bucket, drop buckets out of the window, return the totals.
local function count(total, failures)
  local width = window / 10
  local index = math.floor(now / width)
  if total > 0 then
    redis.call('HINCRBY', KEYS[3], 't' .. index, total)
    if failures > 0 then redis.call('HINCRBY', KEYS[3], 'x' .. index, failures) end
    redis.call('PEXPIRE', KEYS[3], window * 2)
  end
  local all, bad = 0, 0
  local fields = redis.call('HGETALL', KEYS[3])
  for i = 1, #fields, 2 do
    local name = fields[i]
    if tonumber(string.sub(name, 2)) <= index - 10 then
      redis.call('HDEL', KEYS[3], name)
    elseif string.sub(name, 1, 1) == 't' then
      all = all + tonumber(fields[i + 1])
    else
      bad = bad + tonumber(fields[i + 1])
    end
  end
  return all, bad
end

if op == 'outcome' then
  if ticket ~= '' then
    local removed = redis.call('ZREM', KEYS[2], ticket)
    if s == 'h' and removed == 1 then
      if failed then
        open_circuit()
      elseif redis.call('HINCRBY', KEYS[1], 'k', 1) >= needed then
        close_circuit()
      end
    end
  elseif s == 'c' then
    if rate == 0 then
      if failed then
        local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
        redis.call('PEXPIRE', KEYS[1], ttl)
        if f >= threshold then open_circuit() end
      else
        redis.call('DEL', KEYS[1])
      end
    else
      local all, bad = count(successes + 1, failed and 1 or 0)
      if failed and all >= minimum and bad >= rate * all then open_circuit() end
    end
  end
elseif op == 'sync' then
  if s == 'c' and rate > 0 and successes > 0 then count(successes, 0) end
elseif op == 'acquire' then
  if s == 'c' then
    admitted = 1
  else
    local m = tonumber(h[3]) or max_probes
    if s == 'o' and now >= tonumber(h[2]) then
      redis.call('DEL', KEYS[2])
      redis.call('HSET', KEYS[1], 's', 'h', 'k', 0, 'm', max_probes)
      s, m = 'h', max_probes
    end
    if s == 'h' then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
      if redis.call('ZCARD', KEYS[2]) < m then
        redis.call('ZADD', KEYS[2], now + lease, ticket)
        redis.call('PEXPIRE', KEYS[2], lease + 1000)
        admitted = 2
      end
    end
  end
elseif op == 'release' then
  redis.call('ZREM', KEYS[2], ticket)
end

local r = redis.call('HMGET', KEYS[1], 's', 'f', 'p', 'm', 'e')
local state = r[1] or 'c'
local wait, probes = 0, 0
if state == 'o' then wait = math.max(0, tonumber(r[3]) - now) end
if state == 'h' then probes = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') end
return {state, tonumber(r[2]) or 0, wait, probes, tonumber(r[4]) or 0, r[5] or '', admitted}
"""

# The script's state codes; str too, for a URL that asks redis-py to decode replies.
_STATES: Final = {b"c": CLOSED, b"o": OPEN, b"h": HALF_OPEN, "c": CLOSED, "o": OPEN, "h": HALF_OPEN}


def breaker_keys(backend_key: str) -> list[str]:
    """The three keys of one backend's shared breaker, on one Redis Cluster slot (the hash tag is the
    backend key; every key of one breaker has the same prefix up to it, so the same slot even if the
    key held a brace)."""
    base = f"{KEY_PREFIX}{{{backend_key}}}"
    return [base, f"{base}:probes", f"{base}:window"]


class Admission(NamedTuple):
    """What the replicas' shared state says about one attempt."""

    admitted: bool
    ticket: str | None = None  # a half-open probe's slot: give it back with the outcome
    wait: float = 0.0  # refused: seconds until a probe may go (Retry-After)


_ADMIT: Final = Admission(True)


class SharedCircuit(CircuitFields):
    """One backend's shared breaker as this replica sees it: the state Redis returned last (at most
    ``SYNC_SECONDS`` old while requests flow), and the calls that change it. Attached to the
    backend's ``CircuitBreaker`` (``breaker.shared``) by ``SharedBreakers.update``."""

    __slots__ = (
        "_refreshing",
        "breaker",
        "epoch",
        "failures",
        "fetched",
        "key",
        "keys",
        "max_probes",
        "pending",
        "probe_at",
        "probes",
        "state",
        "store",
    )

    def __init__(self, store: SharedBreakers, key: str, breaker: CircuitBreaker) -> None:
        self.store = store
        self.key = key
        self.keys = breaker_keys(key)
        self.breaker = breaker  # this replica's own breaker: the fallback, and its `opened` counter
        self.state: str = CLOSED
        self.failures = 0  # the shared consecutive count (count mode)
        self.probe_at = 0.0  # time.monotonic() from which a probe may go (open)
        self.probes = 0  # probe slots in use, every replica's (half-open)
        self.max_probes = 1
        self.epoch = b""  # Redis's time of the last opening: a new one is counted in `opened`
        self.fetched = -math.inf  # time.monotonic() of the last answer from Redis
        self.pending = 0  # ratio mode: successes not yet sent
        self._refreshing: asyncio.Task[int | None] | None = None

    # -- questions (synchronous: the balancer, /metrics and the admin API ask them) --------------

    def usable(self) -> bool:
        """Whether the shared state decides now (Redis not known to be down)."""
        return not self.store.outage.down()

    def stale(self, now: float) -> bool:
        return now - self.fetched >= SYNC_SECONDS

    # -- a call's life ---------------------------------------------------------------------------

    async def refresh(self, config: CircuitBreakerConfig) -> bool:
        """Read the shared state (and send the successes counted here); False when Redis could not be
        reached. Concurrent callers share one call, which a caller that goes away does not cancel."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = self.store.spawn(self._call("sync", config))
        return await asyncio.shield(task) is not None

    async def admit(self, config: CircuitBreakerConfig, lease_ms: int, now: float) -> Admission | None:
        """Whether an attempt may go to the backend, refreshing the state first when it is stale, and
        taking a probe slot in Redis when the circuit is half-open. None: Redis is unreachable, the
        replica's own breaker decides."""
        if self.stale(now) and not await self.refresh(config):
            return None
        now = time.monotonic()
        if self.blocks(now):
            return Admission(False, None, self.retry_after(now))
        if self.state is CLOSED:
            return _ADMIT
        ticket = self.store.ticket()
        admitted = await self._call("acquire", config, ticket=ticket, lease_ms=lease_ms)
        if admitted is None:
            return None
        if admitted == 0:
            return Admission(False, None, self.retry_after(time.monotonic()))
        return Admission(True, ticket if admitted == 2 else None)

    async def record(self, config: CircuitBreakerConfig, failed: bool, ticket: str | None) -> None:
        """The outcome of an attempt ``admit`` let through. Sent only when it can change something
        (see the module); when Redis cannot be reached, the replica's own breaker counts it."""
        if ticket is None:
            if self.state is not CLOSED:
                return  # started before the circuit opened: Redis would ignore it too
            if config.failure_rate_threshold is not None:
                if not failed:
                    self.pending += 1  # sent with the next call
                    return
            elif not failed:
                if self.failures == 0:
                    return  # nothing to reset
                self.failures = 0  # one reset in flight is enough: the others need not send theirs
        sent = await self._call("outcome", config, failed=failed, ticket=ticket or "")
        if sent is None and ticket is None:
            self.breaker.record(config, failed, time.monotonic(), None)

    def release(self, ticket: str | None) -> None:
        """A probe ended without an outcome (the client left): give its slot back, in the background
        (this runs when a request is cancelled). Its lease frees it anyway if this fails."""
        if ticket is not None:
            self.store.spawn(self._call("release", None, ticket=ticket))

    # -- Redis -----------------------------------------------------------------------------------

    async def _call(
        self,
        op: str,
        config: CircuitBreakerConfig | None,
        *,
        failed: bool = False,
        ticket: str = "",
        lease_ms: int = 0,
    ) -> int | None:
        """Run the script; update the mirror from its answer. Returns the answer's ``admitted`` field,
        None when Redis could not be reached."""
        pending, self.pending = self.pending, 0
        if config is None:
            args: list[str | int | float] = [op, 1, 1, 1, 0, 1, 1, 1]
        else:
            args = [
                op,
                config.failure_threshold,
                config.success_threshold,
                config.reset_timeout_ms,
                config.failure_rate_threshold or 0,
                config.window_ms,
                config.minimum_requests,
                config.half_open_max_calls,
            ]
        args += [1 if failed else 0, ticket, pending, lease_ms]
        reply = await self.store.run(self.keys, args)
        if reply is None:
            return None
        self._apply(reply, time.monotonic())
        return int(reply[6])

    def _apply(self, reply: Sequence[Any], now: float) -> None:
        state = _STATES.get(reply[0], CLOSED)
        epoch = reply[5] if isinstance(reply[5], bytes) else str(reply[5]).encode()
        if state is OPEN and epoch != self.epoch:
            self.breaker.opened += 1  # an opening this replica has not seen yet (by any replica)
        self.state = state
        self.epoch = epoch
        self.failures = int(reply[1])
        self.probe_at = now + int(reply[2]) / 1000
        self.probes = int(reply[3])
        self.max_probes = max(1, int(reply[4]))
        self.fetched = now

    def hand_over(self, now: float) -> None:
        """Redis became unreachable: the replica's own breaker takes over, keeping open a circuit the
        replicas had opened (until the time Redis had set)."""
        if self.state is OPEN and self.probe_at > now:
            self.breaker.hold_open(self.probe_at, self.max_probes)
        self.fetched = -math.inf  # whatever was seen before the outage is not trusted after it


class SharedBreakers:
    """The shared circuit breakers of one Gateway: the Redis client, the script, the outage state
    and a ``SharedCircuit`` per backend whose route says ``"shared": true``. Built with the Gateway,
    updated by every config apply, closed in its lifespan's shutdown."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.outage = Outage("circuit breaker store", url or "")
        self._client: Client | None = connect(url) if url else None
        self._script: Any = self._client.register_script(SCRIPT) if self._client is not None else None
        self.circuits: dict[str, SharedCircuit] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replica = os.urandom(6).hex()  # makes this replica's probe tickets unique in Redis
        self._tickets = itertools.count(1)

    @property
    def failures(self) -> int:
        """Calls that could not reach Redis (``kairos_circuit_breaker_store_errors_total``)."""
        return self.outage.failures

    def update(
        self, routes: Iterable[Route], default: BackendCircuitBreakerConfig | None, source: str
    ) -> None:
        """Attach a shared view to the breaker of every backend whose route's block (its own, else the
        top-level one) says ``"shared": true``, and detach it from the others. Without a Redis URL,
        warn (naming the keys) that those breakers run per replica."""
        wanted: set[str] = set()
        breakers: dict[str, CircuitBreaker] = {}
        asked: list[str] = ["circuit_breaker.shared"] if default is not None and default.shared else []
        for route in routes:
            own = route.config.circuit_breaker
            for backend in route.backends:
                breakers[backend.key] = backend.state.breaker
            config = own if own is not None else default
            if config is None or not config.shared or route.config.protocol in ("dns", "llm"):
                continue
            if own is not None:
                asked.append(f"routers[{route.index}].circuit_breaker.shared")
            wanted.update(backend.key for backend in route.backends)
        if self._client is None:
            if asked:
                logger.warning(
                    "config %s: %s is true but KAIROS_REDIS_URL is not set: those circuit breakers run "
                    "per replica",
                    source,
                    ", ".join(asked),
                )
            wanted.clear()
        circuits: dict[str, SharedCircuit] = {}
        for key, breaker in breakers.items():
            if key not in wanted:
                breaker.shared = None
                continue
            circuit = self.circuits.get(key)
            if circuit is None or circuit.breaker is not breaker:
                circuit = SharedCircuit(self, key, breaker)
            circuits[key] = breaker.shared = circuit
        self.circuits = circuits

    def ticket(self) -> str:
        return f"{self._replica}:{next(self._tickets)}"

    async def run(self, keys: list[str], args: list[str | int | float]) -> Sequence[Any] | None:
        """One script call; None (and the outage noted, the replicas' own breakers taking over) when
        Redis cannot be reached."""
        outage = self.outage
        if self._script is None:
            return None
        if outage.down():
            outage.failures += 1
            return None
        try:
            try:
                reply: Sequence[Any] = await self._script(keys=keys, args=args)
            except RedisConnectionError:  # a pooled connection that died with a restarted Redis:
                reply = await self._script(keys=keys, args=args)  # once more, on a new one
        except (RedisError, OSError) as exc:
            outage.failed(exc, "; shared circuit breakers run per replica")
            now = time.monotonic()
            for circuit in self.circuits.values():
                circuit.hand_over(now)
            return None
        outage.reached()
        return reply

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            await self._client.aclose()
