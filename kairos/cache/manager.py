"""ResponseCache: the Gateway-owned state of the response cache.

It holds the stores (one in-memory LRU per route, sized by that route's ``cache`` block; one
Redis client per URL, shared by the routes that use it), the in-flight misses that concurrent
requests coalesce on, and the counters ``/metrics`` reads at scrape time. ``purge`` is the entry
point for the admin API.

Keys are ``<route key>\\n<url key>\\n<variant>[\\n<vary>]``: the route key (``http GET,HEAD /p/{id}``)
keeps routes apart, the url key is readable (``GET host/path?sorted=query``) so it can be purged by
prefix, the variant hashes the identity and the configured ``vary_headers``, the last part the
values of the headers named by the upstream's ``Vary``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from kairos.cache.entry import CachedResponse, Entry
from kairos.cache.memory import MemoryStore
from kairos.cache.redis_store import RedisCacheStore
from kairos.config.policies import CacheConfig


class CacheStore(Protocol):
    name: str

    def available(self) -> bool: ...

    async def get(self, key: str) -> Entry | None: ...

    async def set(self, key: str, entry: Entry) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Outcome:
    """What a coalesced miss hands to the requests that waited for it."""

    response: CachedResponse
    stored: bool  # stored in the cache: waiters answer it as a HIT
    error: bool  # an upstream 5xx or a gateway error: waiters answer it as it is, never stored
    vary: tuple[bytes, ...]  # the leader's values of ``response.vary`` (waiters must match them)
    generated: bool = False  # made by the gateway (errors.GENERATED), not proxied


class RouteLike(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...


class ResponseCache:
    def __init__(
        self, redis_url: str | None = None, routes: Callable[[], Iterable[RouteLike]] | None = None
    ) -> None:
        self.redis_url = redis_url
        self._routes = routes
        self._memory: dict[str, MemoryStore] = {}
        self._redis: dict[str, RedisCacheStore] = {}
        self.inflight: dict[str, asyncio.Future[Outcome | None]] = {}
        self.results: Counter[str] = Counter()  # hit / miss / bypass / coalesced

    def store_for(self, partition: str, config: CacheConfig) -> MemoryStore | RedisCacheStore:
        uri = config.storage_uri or self.redis_url
        if uri and not uri.startswith("memory:"):
            redis = self._redis.get(uri)
            if redis is None:
                redis = self._redis[uri] = RedisCacheStore(uri)
            return redis
        memory = self._memory.get(partition)
        if memory is None or (memory.max_entries, memory.max_bytes) != (config.max_size, config.memory_bytes):
            memory = self._memory[partition] = MemoryStore(config.max_size, config.memory_bytes)
        return memory

    async def purge(self, route: str | None = None, key_prefix: str | None = None) -> int:
        """Drop cached responses; returns how many entries went (Vary markers included).

        ``route``: a route's ``external_path`` or its key (``http GET,HEAD /p/{id}``); None: every
        route. ``key_prefix``: the start of ``host/path?query`` as the client sent it (host lower
        case, query parameters sorted), e.g. ``"api.example.com/users/"``; None: everything.
        Purges the memory stores and every Redis store this process knows of (so the entries of
        every replica sharing it). Raises CacheUnavailable when a Redis store cannot be reached.
        """
        url = "GET " + (key_prefix or "")
        keys = self._route_keys(route)
        removed = 0
        for partition, memory in self._memory.items():
            if keys is None or partition in keys:
                removed += await memory.purge(f"{partition}\n{url}")
        for redis in self._redis.values():
            if keys is None:
                removed += await redis.purge(url, any_route=True)
            else:
                for key in keys:
                    removed += await redis.purge(f"{key}\n{url}")
        return removed

    def _route_keys(self, route: str | None) -> set[str] | None:
        if route is None:
            return None
        keys = {route}
        for live in self._routes() if self._routes is not None else ():
            if live.name == route:
                keys.add(live.key)
        keys.update(partition for partition in self._memory if partition.rsplit(" ", 1)[-1] == route)
        return keys

    @property
    def memory_entries(self) -> int:
        return sum(len(memory) for memory in self._memory.values())

    @property
    def memory_bytes(self) -> int:
        return sum(memory.bytes for memory in self._memory.values())

    @property
    def store_errors(self) -> int:
        return sum(redis.failures for redis in self._redis.values())

    async def close(self) -> None:
        for redis in self._redis.values():
            await redis.close()
        self._redis.clear()
        for memory in self._memory.values():
            await memory.close()
        self._memory.clear()
