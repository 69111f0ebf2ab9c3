"""What the Redis-backed stores (rate limits, response cache) share: the client settings, and how an
outage is handled.

While Redis is unreachable a store says so at once for ``RETRY_SECONDS`` instead of making every
request wait on a dead socket; the outage is logged once when it starts and once when it ends, and
each operation it cost is counted for ``/metrics``.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

logger = logging.getLogger("kairos")

RETRY_SECONDS = 1.0
SOCKET_TIMEOUT = 0.5


def connect(url: str) -> Redis:
    """A pooled client whose calls fail fast (a request never waits long on Redis)."""
    return Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)


def redacted(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class Outage:
    """One store's view of its Redis: down (skip it) for a second after each failure."""

    __slots__ = ("_down_until", "_label", "_url", "failures")

    def __init__(self, label: str, url: str) -> None:
        self._label = label  # e.g. "rate limit store": the start of the log lines
        self._url = url
        self._down_until = 0.0
        self.failures = 0  # operations that could not reach Redis

    def down(self) -> bool:
        return bool(self._down_until) and time.monotonic() < self._down_until

    def failed(self, exc: BaseException, consequence: str = "") -> None:
        self.failures += 1
        if not self._down_until:
            logger.warning(
                "%s redis at %s is unreachable%s: %s", self._label, redacted(self._url), consequence, exc
            )
        self._down_until = time.monotonic() + RETRY_SECONDS

    def reached(self) -> None:
        if self._down_until:
            logger.warning("%s redis at %s is reachable again", self._label, redacted(self._url))
            self._down_until = 0.0
