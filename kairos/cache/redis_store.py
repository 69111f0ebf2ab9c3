"""The Redis store: one cache shared by every gateway replica.

Entries are written with their freshness as the key's expiry (``PX``), so Redis drops stale ones
itself; its ``maxmemory`` policy bounds the total (``max_size``/``memory_bytes`` bound the memory
store only). While Redis is unreachable (see ``kairos.redis_outage``) the middleware bypasses the
cache: the request is proxied as if the route had no cache.
"""

from __future__ import annotations

import math
import time

from redis.exceptions import RedisError

from kairos.cache.entry import Entry, decode, encode
from kairos.redis_outage import Client, Outage, connect

_BYPASSING = " (bypassing it)"
PREFIX = "kairos:cache:"


class CacheUnavailable(Exception):
    """The shared store cannot answer; the request bypasses the cache."""


class RedisCacheStore:
    name = "redis"

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._client: Client = connect(url)
        self._outage = Outage("cache store", url)

    @property
    def failures(self) -> int:
        """Operations that could not reach Redis (exported as a metric)."""
        return self._outage.failures

    def available(self) -> bool:
        return not self._outage.down()

    async def get(self, key: str) -> Entry | None:
        try:
            raw = await self._client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, _BYPASSING)
            raise CacheUnavailable(str(exc)) from exc
        self._outage.reached()
        if not raw:
            return None
        return decode(raw if isinstance(raw, bytes) else raw.encode("latin-1"))

    async def set(self, key: str, entry: Entry) -> None:
        milliseconds = math.ceil((entry.expires_at - time.time()) * 1000)
        if milliseconds <= 0:
            return
        try:
            await self._client.set(self.prefix + key, encode(entry), px=milliseconds)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, _BYPASSING)  # not stored: the next request is a miss, nothing worse
            return
        self._outage.reached()

    async def purge(self, prefix: str = "", any_route: bool = False) -> int:
        """Delete the entries whose key starts with ``prefix`` (SCAN + UNLINK, never KEYS); with
        ``any_route``, whose key after the route part (the route key and a newline) starts with it.
        On a Redis Cluster, redis-py's SCAN visits every primary and UNLINK is sent per slot."""
        pattern = ("*\n" if any_route else "") + _glob_escape(prefix) + "*"
        pattern = _glob_escape(self.prefix) + pattern
        removed = 0
        batch: list[bytes] = []
        try:
            async for key in self._client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    removed += await self._client.unlink(*batch)
                    batch = []
            if batch:
                removed += await self._client.unlink(*batch)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, _BYPASSING)
            raise CacheUnavailable(str(exc)) from exc
        return removed

    async def close(self) -> None:
        await self._client.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
