"""Config distribution between replicas: the running config document and its generation in Redis
(``KAIROS_CONFIG_STORE=redis://...``).

- **One key** (a hash: ``generation``, ``document``), so it works on Redis Cluster too, and one Lua
  script that changes it only if the generation is still the one the change was computed from
  (compare-and-set), then publishes the new generation. Two replicas changing the config at once:
  one wins, the other gets a conflict (409 through the admin API) instead of a lost update.
- **Validated before it is stored.** A replica validates a change with its own loader before it
  publishes; a bad document never reaches Redis, so it never reaches the other replicas.
- **Applied by every replica within a second.** A watcher task per replica listens on the channel
  and also reads the generation once a second, so a replica that missed a message (a reconnect, a
  Redis restart) still catches up; a replica that starts loads the stored generation instead of its
  file. A document that does not load on this replica (another version) is refused here, recorded
  as a failed reload, and the old config keeps running.
- Redis down: the running config stays; changes through the admin API fail with a clear error
  (they cannot be shared), and the watcher keeps retrying.

Without ``KAIROS_CONFIG_STORE`` nothing changes: a file and its watcher (a Kubernetes ConfigMap) is
the other way to keep replicas in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("kairos.config_store")

KEY = "kairos:config"
CHANNEL = "kairos:config:changed"
POLL_SECONDS = 1.0

# KEYS[1] the hash; ARGV: expected generation, document, channel. Returns the new generation, or -1
# when the stored generation is not the expected one (someone else changed it first).
PUBLISH = """
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
local next_generation = current + 1
redis.call('HSET', KEYS[1], 'generation', next_generation, 'document', ARGV[2])
redis.call('PUBLISH', ARGV[3], next_generation)
return next_generation
"""


class ConfigStoreUnavailable(OSError):
    """Redis could not be reached: the change cannot be shared (an OSError: it could not be saved)."""


class RedisConfigStore:
    def __init__(self, url: str, key: str = KEY, channel: str = CHANNEL) -> None:
        from kairos.redis_outage import connect, redacted

        # What logs, errors and /api/config/status show: never the password (it only goes to connect).
        self.url = redacted(url)
        self.key = key
        self.channel = channel
        # Any URL the other stores take (Sentinel, Cluster: kairos.redis_outage); longer timeouts, as
        # a config change is not a request that must not wait.
        self._redis: Any = connect(url, socket_timeout=5, connect_timeout=2)
        self._script: Any = self._redis.register_script(PUBLISH)
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> tuple[int, str] | None:
        """(generation, document) as stored, None when nothing is stored yet."""
        try:
            generation, document = await self._redis.hmget(self.key, "generation", "document")
        except Exception as exc:  # redis-py raises its ConnectionError, TimeoutError, ...
            raise ConfigStoreUnavailable(f"{self.url}: {exc}") from None
        if generation is None or document is None:
            return None
        return int(generation), document.decode("utf-8") if isinstance(document, bytes) else str(document)

    async def generation(self) -> int:
        try:
            value = await self._redis.hget(self.key, "generation")
        except Exception as exc:
            raise ConfigStoreUnavailable(f"{self.url}: {exc}") from None
        return int(value) if value is not None else 0

    async def publish(self, expected: int, document: str) -> int | None:
        """Store ``document`` as generation ``expected + 1`` if ``expected`` is still current; the new
        generation, or None when another change got there first."""
        try:
            result = await self._script(keys=[self.key], args=[expected, document, self.channel])
        except Exception as exc:
            raise ConfigStoreUnavailable(f"{self.url}: {exc}") from None
        return None if int(result) < 0 else int(result)

    def watch(self, current: Callable[[], int], changed: Callable[[int], Awaitable[None]]) -> None:
        """Start the watcher: ``changed(generation)`` whenever the stored generation is newer than
        ``current()`` (a message on the channel, or the once-a-second read)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(current, changed))

    async def _watch(self, current: Callable[[], int], changed: Callable[[int], Awaitable[None]]) -> None:
        pubsub: Any = None
        # A client without pub/sub (redis-py's asyncio RedisCluster before 8.0) is polled only: the
        # once-a-second read alone applies every change. On a cluster that has it, PUBLISH reaches
        # every node, so the subscription on whichever node the channel hashes to gets the message.
        listens = hasattr(self._redis, "pubsub")
        failing = False
        while True:
            try:
                if not listens:
                    await asyncio.sleep(POLL_SECONDS)
                else:
                    if pubsub is None:
                        pubsub = self._redis.pubsub()
                        await pubsub.subscribe(self.channel)
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                stored = await self.generation()
                if failing:
                    logger.warning("config store %s reachable again", self.url)
                    failing = False
                if stored > current():
                    await changed(stored)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep the running config, retry
                if not failing:
                    logger.warning(
                        "config store %s unreachable (%s): the running config stays", self.url, exc
                    )
                    failing = True
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = None
                await asyncio.sleep(POLL_SECONDS)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()
