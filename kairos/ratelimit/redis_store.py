"""Rate-limit state in Redis, shared by every gateway replica.

One Lua script makes each decision atomically in ONE round trip, for all of a policy's limits at
once (a Composite admits only if every limit admits, and counts only then), and returns what the
response headers need. ``limits``' Redis strategies would take a second round trip for the header
figures and have no token bucket. The clock is Redis's own (``TIME``), so replicas with skewed
clocks still share one window. The script mirrors ``memory.decide`` (milliseconds here, seconds
there) so both stores give the same answers.

While Redis is unreachable (see ``kairos.redis_outage``) the store raises ``StoreUnavailable`` at
once; the limiter then fails open (or closed).

**Redis Cluster.** A script's keys must share one hash slot. A one-limit decision has one key. A
Composite's keys (``prefix:fingerprint:scope:subject``, one per limit) are given a hash tag by
``slot_keys``: ``prefix:fingerprint:{tag}:scope:subject``, the tag a digest of what every key of the
decision shares and that never changes for a given key: the scope, plus the client (``ip=``/``u=``)
when every limit counts the same kind of client, plus the route when every limit counts per route.
So ``PerIP`` + ``PerIPAndRoute`` spreads over the cluster by client, while ``PerIP`` + ``PerRoute``
(a route counter shared by every client) keeps a scope's counters in one slot. ``redis_key_prefix``
must then hold no ``{``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from kairos.ratelimit.policy import Limit
from kairos.ratelimit.verdict import Verdict
from kairos.redis_outage import Client, Outage, connect, redacted

_ALGORITHM_CODES = {"fixed": "F", "sliding": "S", "bucket": "B"}

ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, commits, all = {}, {}, true
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local algo, cap = ARGV[base + 1], tonumber(ARGV[base + 2])
  local window, rate = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local f = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
  local a, b, c = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  local allowed, remaining, reset, retry, commit = 0, 0, 0, 0, nil
  if algo == 'F' then
    local start = now - (now % window)
    local count = 0
    if a == start then count = b end
    reset = start + window - now
    if count + 1 > cap then
      retry = reset
    else
      count = count + 1
      allowed, remaining = 1, cap - count
      commit = {start, count, 0, start + window}
    end
  elseif algo == 'S' then
    local start = now - (now % window)
    local current, previous = 0, 0
    if a == start then current, previous = b, c elseif a == start - window then previous = b end
    local elapsed = now - start
    local used = previous * (window - elapsed) / window + current
    reset = window - elapsed
    if used + 1 > cap + 1e-6 then
      if current + 1 <= cap and previous > 0 then
        retry = math.min(window - elapsed, (used + 1 - cap) * window / previous)
      else
        retry = window - elapsed
        if current > 0 then retry = retry + math.max(0, window * (1 - (cap - 1) / current)) end
      end
    else
      current, used = current + 1, used + 1
      allowed, remaining = 1, math.max(0, math.floor(cap - used + 1e-6))
      commit = {start, current, previous, start + 2 * window}
    end
  else
    local tokens = cap
    if a then tokens = math.min(cap, a + (now - b) * rate) end
    if tokens < 1 - 1e-6 then
      retry, reset = (1 - tokens) / rate, (cap - tokens) / rate
    else
      tokens = tokens - 1
      allowed, remaining, reset = 1, math.floor(tokens), (cap - tokens) / rate
      commit = {tokens, now, 0, now + math.ceil(reset) + 1}
    end
  end
  if allowed == 0 then all = false end
  commits[i] = commit
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
  out[#out + 1] = math.ceil(retry)
end
if all then
  for i = 1, #KEYS do
    local cm = commits[i]
    redis.call('HSET', KEYS[i], 'a', tostring(cm[1]), 'b', tostring(cm[2]), 'c', tostring(cm[3]))
    redis.call('PEXPIREAT', KEYS[i], cm[4])
  end
end
return out
"""


# The client a strategy counts (its subject starts with it) and the strategies that count per route.
_CLIENT_KIND = {"PerIP": "ip", "PerIPAndRoute": "ip", "PerUser": "user", "PerUserAndRoute": "user"}
_PER_ROUTE = frozenset({"PerRoute", "PerIPAndRoute", "PerUserAndRoute"})
# Where the subject starts after the scope (``kairos.ratelimit.policy.subject``'s prefixes).
_SUBJECT = re.compile(r":(?=(?:ip|u|h|route)=)")
_ROUTE = "|route="


def slot_keys(keys: Sequence[str], limits: Sequence[Limit]) -> list[str]:
    """The keys of one decision as the script gets them: on one Redis Cluster slot (see the module).
    A key always becomes the same key, whatever it is decided with. One key, or a key not made by
    ``Policy.keys``, stays as it is (a cluster then refuses a decision whose keys span slots: an
    outage for the limiter, never a miscount)."""
    if len(keys) < 2:
        return list(keys)
    kinds = {_CLIENT_KIND.get(limit.strategy) for limit in limits}
    by_client = len(kinds) == 1 and None not in kinds
    by_route = all(limit.strategy in _PER_ROUTE for limit in limits)
    tagged = []
    for key, limit in zip(keys, limits, strict=True):
        marker = ":" + limit.fingerprint + ":"
        head = key.find(marker) + len(marker)
        boundary = _SUBJECT.search(key, head) if head >= len(marker) else None
        if boundary is None:
            tagged.append(key)
            continue
        subject = key[boundary.start() + 1 :]
        shared = [key[head : boundary.start()]]  # the scope
        if by_client:  # "ip=1.2.3.4" of "ip=1.2.3.4" and of "ip=1.2.3.4|route=..."
            shared.append(subject.split(_ROUTE, 1)[0])
        if by_route:  # the route of "route=R" and of "ip=1.2.3.4|route=R"
            shared.append(("|" + subject).rpartition(_ROUTE)[2])
        tag = hashlib.blake2b("\n".join(shared).encode(), digest_size=8).hexdigest()
        tagged.append(f"{key[:head]}{{{tag}}}:{key[head:]}")
    return tagged


class StoreUnavailable(Exception):
    """The shared store cannot answer; the limiter decides whether to admit."""


class RedisStore:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Client = connect(url)
        self._script: Any = self._client.register_script(ACQUIRE_SCRIPT)
        self._outage = Outage("rate limit store", url)

    @property
    def failures(self) -> int:
        """Decisions that could not reach Redis (exported as a metric)."""
        return self._outage.failures

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit]) -> list[Verdict]:
        if self._outage.down():
            self._outage.failures += 1
            raise StoreUnavailable(f"redis at {redacted(self.url)} is unreachable")
        args: list[str | int | float] = []
        for limit in limits:
            window_ms = round(limit.window * 1000)
            args += (
                _ALGORITHM_CODES[limit.algorithm],
                limit.capacity,
                window_ms,
                limit.refill_per_second / 1000,
            )
        try:
            flat = await self._script(keys=slot_keys(keys, limits), args=args)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            raise StoreUnavailable(str(exc)) from exc
        self._outage.reached()
        return [
            Verdict(bool(flat[i]), int(flat[i + 1]), flat[i + 2] / 1000, flat[i + 3] / 1000)
            for i in range(0, len(flat), 4)
        ]

    async def close(self) -> None:
        await self._client.aclose()
