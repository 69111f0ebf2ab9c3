"""Rate-limit state in a storage of the ``limits`` library: memcached, MongoDB, Valkey, and its own
Redis and memory storages (``storage_uri`` ``memcached://``, ``mongodb://``, ``async+redis://``...).

Kairos's memory store and Redis Lua script stay the fast paths (see ``memory.py`` and
``redis_store.py``: one synchronous step or one round trip per decision, with every header figure).
This adapter exists so that replicas can share a limit through a store Kairos does not speak itself,
using ``limits``' async storages (``limits.aio.storage``) and strategies (``limits.aio.strategies``):

- ``FixedWindow`` is ``FixedWindowRateLimiter``. Its ``hit`` is one atomic ``incr`` compared with the
  quota; ``_FixedWindow.hit_count`` makes the same ``incr`` but keeps the count, so the
  ``X-RateLimit-Remaining`` figure costs no second round trip. The window's index (time divided by
  the window) is part of the key, so windows are aligned to the clock as in Kairos's own stores
  (limits' own fixed window starts at a key's first hit), and ``X-RateLimit-Reset`` and
  ``Retry-After`` are the time left in it.
- ``SlidingWindow`` is ``SlidingWindowCounterRateLimiter`` (the same sliding-window counter: the
  previous window's count weighted by the share of it still inside the window), then
  ``get_window_stats`` for the remaining count and the reset time: two calls per decision.
- ``TokenBucket`` has no counterpart in ``limits``; the config refuses it with such a storage
  (``kairos.config.ratelimit``). ``MovingWindowRateLimiter`` has no Kairos algorithm to serve.

Differences from the built-in stores, all in ``limits``' own strategies: a refused fixed-window hit is
counted too (it changes no decision: the window is already full); a ``Composite`` is read first and
counted only if every limit admits, but between the read and the counting another replica may take
the last request of a limit, which then refuses this request after the others have counted it (an
over-count, never an over-admission); clocks are the replicas' own (keep them in step with NTP),
where the Redis script uses Redis's clock.

An unreachable storage is handled exactly as Redis is (``kairos.redis_outage.Outage``): the store
raises ``StoreUnavailable`` at once for a second after a failure, the limiter then fails open or
closed as the policy says, and the outage is logged once when it starts and once when it ends. Each
decision is also bounded in time (``DECISION_TIMEOUT``), whatever the client's own timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import SlidingWindowCounterSupport, Storage
from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from kairos.config.storage_uri import limits_uri, scheme_of
from kairos.ratelimit.policy import Limit
from kairos.ratelimit.redis_store import StoreUnavailable
from kairos.ratelimit.verdict import Verdict, make_verdict
from kairos.redis_outage import SOCKET_TIMEOUT, Outage, redacted

logger = logging.getLogger("kairos")

DECISION_TIMEOUT = 1.0  # seconds one decision may take before the store counts as unreachable
_MAX_KEY = 160  # memcached keys are at most 250 bytes, and limits adds its namespace and numbers
_SAFE_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces: what every storage takes as a key
_NAMESPACE = "KAIROS"


def _client_options(uri: str) -> dict[str, float | str | bool]:
    """Options for the storage's client: fail as fast as the Redis stores do (``SOCKET_TIMEOUT``)
    rather than the clients' own defaults (memcachio never times a read out; MongoDB waits 30 s for
    a server), and redis-py rather than coredis for limits' Redis storages (redis-py is already a
    dependency of Kairos)."""
    family = scheme_of(limits_uri(uri)).removeprefix("async+")
    if family == "memcached":
        return {
            "connect_timeout": SOCKET_TIMEOUT,
            "read_timeout": SOCKET_TIMEOUT,
            "blocking_timeout": SOCKET_TIMEOUT,
        }
    if family.startswith("redis"):
        return {
            "implementation": "redispy",
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
        }
    if family.startswith("valkey"):
        return {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
    if family.startswith("mongodb"):
        milliseconds = round(SOCKET_TIMEOUT * 1000)
        return {
            "serverSelectionTimeoutMS": milliseconds,
            "connectTimeoutMS": milliseconds,
            "socketTimeoutMS": milliseconds,
        }
    return {}


class _FixedWindow(FixedWindowRateLimiter):
    """limits' fixed window, whose ``hit`` also tells the count it reached."""

    async def hit_count(self, item: RateLimitItem, *identifiers: str) -> int:
        """``FixedWindowRateLimiter.hit`` is ``incr(...) <= item.amount``: the same ``incr``, its
        count kept for the headers."""
        return await self.storage.incr(item.key_for(*identifiers), item.get_expiry())

    async def count(self, item: RateLimitItem, *identifiers: str) -> int:
        return await self.storage.get(item.key_for(*identifiers))


class LimitsStore:
    """One ``limits`` storage, shared by every policy whose ``storage_uri`` names it."""

    name = "limits"

    def __init__(self, uri: str) -> None:
        self.url = uri
        storage = storage_from_string(limits_uri(uri), **_client_options(uri))
        assert isinstance(storage, Storage)  # an async+ scheme always gives an async storage
        self._storage = storage
        self._fixed = _FixedWindow(storage)
        self._sliding = (
            SlidingWindowCounterRateLimiter(storage)
            if isinstance(storage, SlidingWindowCounterSupport)
            else None
        )
        self._items: dict[str, RateLimitItem] = {}
        self._errors: tuple[type[BaseException], ...] = (StorageError, OSError, TimeoutError, ConnectionError)
        base = storage.base_exceptions
        self._errors += base if isinstance(base, tuple) else (base,)
        self._outage = Outage("rate limit store", uri, storage="")  # the log names the URI, not Redis

    @property
    def failures(self) -> int:
        """Decisions that could not reach the storage (exported as a metric)."""
        return self._outage.failures

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit]) -> list[Verdict]:
        """Admit one request against every limit, or refuse it; see the module for a Composite."""
        if self._outage.down():
            self._outage.failures += 1
            raise StoreUnavailable(f"rate limit store at {redacted(self.url)} is unreachable")
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                verdicts = await self._decide(keys, limits)
        except self._errors as exc:
            self._outage.failed(exc)
            raise StoreUnavailable(f"{redacted(self.url)}: {exc!r}") from exc
        self._outage.reached()
        return verdicts

    async def _decide(self, keys: Sequence[str], limits: Sequence[Limit]) -> list[Verdict]:
        if len(limits) == 1:
            return [await self._one(keys[0], limits[0], commit=True)]
        pairs = list(zip(keys, limits, strict=True))
        looked = [await self._one(key, limit, commit=False) for key, limit in pairs]
        if not all(verdict.allowed for verdict in looked):
            return looked
        return [await self._one(key, limit, commit=True) for key, limit in pairs]

    async def _one(self, key: str, limit: Limit, commit: bool) -> Verdict:
        """The verdict of one limit; with ``commit`` the request is counted (``hit``), else only read."""
        item = self._item(limit)
        subject = _storage_key(key, limit)
        now = time.time()
        if limit.algorithm == "fixed":
            index = int(now // limit.window)
            reset = (index + 1) * limit.window - now
            if commit:
                count = await self._fixed.hit_count(item, subject, str(index))
            else:
                count = await self._fixed.count(item, subject, str(index)) + 1
            if count > limit.capacity:
                return make_verdict(False, 0, reset, reset)
            return make_verdict(True, limit.capacity - count, reset, 0.0)
        if limit.algorithm != "sliding" or self._sliding is None:  # refused at config load; never here
            raise ValueError(f"{limit.algorithm} is not available on {redacted(self.url)}")
        admitted = await self._sliding.hit(item, subject) if commit else True
        stats = await self._sliding.get_window_stats(item, subject)
        reset = max(0.0, stats.reset_time - time.time())
        if not commit:
            admitted = stats.remaining >= 1
            remaining = stats.remaining - 1 if admitted else 0
        else:
            remaining = stats.remaining if admitted else 0
        if not admitted:
            return make_verdict(False, 0, reset, reset)
        return make_verdict(True, max(0, remaining), reset, 0.0)

    def _item(self, limit: Limit) -> RateLimitItem:
        item = self._items.get(limit.fingerprint)
        if item is None:
            # Whole seconds: window_duration is an integer in the config.
            item = RateLimitItemPerSecond(limit.capacity, max(1, round(limit.window)), namespace=_NAMESPACE)
            self._items[limit.fingerprint] = item
        return item

    async def close(self) -> None:
        """Close the storage's client. limits has no close of its own: this reaches the client its
        storage holds (memcachio's pool, a redis-py client) and the memory storage's expiry timer."""
        bridge: Any = getattr(self._storage, "bridge", None)
        client: Any = getattr(bridge, "storage", None) or getattr(bridge, "_storage", None)
        pool: Any = getattr(client, "connection_pool", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
        elif pool is not None and hasattr(pool, "close"):
            pool.close()
        timer: Any = getattr(self._storage, "timer", None)
        if timer is not None and not timer.done():
            timer.cancel()


def _storage_key(key: str, limit: Limit) -> str:
    """``key`` as every storage takes it: short printable ASCII without spaces (memcached's rule). A
    longer key, or one with a space (a route key is ``http GET /p``), becomes its
    ``prefix:fingerprint`` followed by a digest of the whole key."""
    if len(key) <= _MAX_KEY and _SAFE_KEY.fullmatch(key):
        return key
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    marker = ":" + limit.fingerprint
    head = key[: key.find(marker) + len(marker)] if marker in key else ""
    if head and len(head) <= _MAX_KEY - 40 and _SAFE_KEY.fullmatch(head):
        return f"{head}:h={digest}"
    return "h=" + digest
