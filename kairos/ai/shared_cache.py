"""AI-routing decisions shared by the replicas through Redis (when ``KAIROS_REDIS_URL`` is set).

Why: a decision costs a provider call (milliseconds of litellm CPU and the provider's price), and a
load balancer spreads identical requests over the replicas; with a cache per replica each replica
pays for the same decision again. Shared, a decision made by one replica is reused by the others
for the rest of its ``cache_ttl_secs``.

It sits behind the in-memory ``DecisionCache`` (kairos/ai/cache.py), which keeps its role: a
repeated request is answered from memory without a Redis round trip (the synchronous hit path of
``AiRouter.cached``); only a local miss asks Redis, and a Redis hit is copied into memory for the time
Redis still gives it, so both caches forget a decision at the same moment. A decision is written
to Redis when it is made (in the background: the request does not wait), with the same TTL.

**Keys and values.** ``kairos:ai:decision:{<route signature digest>:<context fingerprint>}``: one key
per decision, namespaced, with the decision's whole identity as its hash tag (so any key of one
decision shares a Redis Cluster slot, and decisions spread over the cluster's nodes). The signature
is the router's plan signature (route, strategy, providers, backends, preview size), so replicas
with the same config share decisions and a changed config never reuses an old one. The value is a
small JSON object, ``{"index": N}``; anything else (another Kairos version, a hand edit) or an index
out of the route's range is treated as a miss.

**Redis unreachable** (``kairos.redis_outage``): every replica decides and caches on its own, the
request never fails or waits on a dead socket (the outage is logged once when it starts and once
when it ends; each lookup or write it cost is counted in ``kairos_ai_cache_store_errors_total``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kairos.redis_outage import Client, Outage, connect

KEY_PREFIX: Final = "kairos:ai:decision:"

# One round trip for the value and the milliseconds it has left (a copy in memory expires with it).
GET_SCRIPT: Final = """
local value = redis.call('GET', KEYS[1])
if not value then return false end
return {value, redis.call('PTTL', KEYS[1])}
"""


def decision_key(signature: str, fingerprint: bytes) -> str:
    """The Redis key of one decision (see the module)."""
    route = hashlib.blake2b(signature.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{KEY_PREFIX}{{{route}:{fingerprint.hex()}}}"


class SharedDecisionCache:
    """The Redis side of the decision cache; owned by the ``AiRouter``, closed with it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Client = connect(url)
        self._get: Any = self._client.register_script(GET_SCRIPT)
        self._outage = Outage("AI decision cache", url)

    @property
    def failures(self) -> int:
        """Lookups and writes that could not reach Redis (exported as a metric)."""
        return self._outage.failures

    async def get(self, signature: str, fingerprint: bytes, backends: int) -> tuple[int, float] | None:
        """(backend index, seconds it stays cached) of a live decision, or None: none in Redis, not a
        valid one for a route of ``backends`` backends, or Redis unreachable."""
        outage = self._outage
        if outage.down():
            outage.failures += 1
            return None
        key = decision_key(signature, fingerprint)
        try:
            try:
                found = await self._get(keys=[key])
            except RedisConnectionError:  # a pooled connection that died with a restarted Redis:
                found = await self._get(keys=[key])  # once more, on a new one
        except (RedisError, OSError) as exc:
            outage.failed(exc, "; AI decisions are cached per replica")
            return None
        outage.reached()
        if not found:
            return None
        value, left_ms = found
        try:
            index = json.loads(value)["index"]
        except (ValueError, TypeError, KeyError):
            return None
        if type(index) is not int or not 0 <= index < backends or int(left_ms) <= 0:
            return None
        return index, int(left_ms) / 1000

    async def put(self, signature: str, fingerprint: bytes, index: int, ttl: float) -> None:
        """Store a decision for ``ttl`` seconds; never raises (an outage is noted and counted)."""
        outage = self._outage
        if outage.down():
            outage.failures += 1
            return
        key = decision_key(signature, fingerprint)
        value = json.dumps({"index": index}, separators=(",", ":"))
        milliseconds = max(1, round(ttl * 1000))
        try:
            try:
                await self._client.set(key, value, px=milliseconds)
            except RedisConnectionError:  # as in get: a connection that died with a restarted Redis
                await self._client.set(key, value, px=milliseconds)
        except (RedisError, OSError) as exc:
            outage.failed(exc, "; AI decisions are cached per replica")
            return
        outage.reached()

    async def close(self) -> None:
        await self._client.aclose()
