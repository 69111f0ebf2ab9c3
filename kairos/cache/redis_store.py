"""The Redis store: one cache shared by every gateway replica.

Entries are written with their freshness as the key's expiry (``PX``), so Redis drops stale ones
itself; its ``maxmemory`` policy bounds the total (``max_size``/``memory_bytes`` bound the memory
store only). While Redis is unreachable the store says so at once for ``_RETRY_SECONDS`` instead
of making requests wait on a dead socket; the middleware then bypasses the cache (the request is
proxied as if the route had no cache). The outage is logged once, and its end once.
"""

from __future__ import annotations

import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kairos.cache.entry import Entry, decode, encode

logger = logging.getLogger("kairos")

_RETRY_SECONDS = 1.0
_SOCKET_TIMEOUT = 0.5
PREFIX = "kairos:cache:"


class CacheUnavailable(Exception):
    """The shared store cannot answer; the request bypasses the cache."""


class RedisCacheStore:
    name = "redis"

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._client: Redis = Redis.from_url(
            url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
        )
        self._down_until = 0.0
        self.failures = 0  # operations that could not reach Redis (exported as a metric)

    def available(self) -> bool:
        return not self._down_until or time.monotonic() >= self._down_until

    async def get(self, key: str) -> Entry | None:
        try:
            raw = await self._client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc
        self._reachable()
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
            self._failed(exc)  # not stored: the next request is a miss, nothing worse
            return
        self._reachable()

    async def purge(self, prefix: str = "", any_route: bool = False) -> int:
        """Delete the entries whose key starts with ``prefix`` (SCAN + UNLINK, never KEYS); with
        ``any_route``, whose key after the route part (the route key and a newline) starts with it."""
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
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc
        return removed

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self._down_until:
            logger.warning("cache store redis at %s is unreachable (bypassing it): %s", _safe(self.url), exc)
        self._down_until = time.monotonic() + _RETRY_SECONDS

    def _reachable(self) -> None:
        if self._down_until:
            logger.warning("cache store redis at %s is reachable again", _safe(self.url))
            self._down_until = 0.0

    async def close(self) -> None:
        await self._client.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
