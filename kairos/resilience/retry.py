"""Retry policy, pure logic: which attempts may be retried, how long to wait, and the retry budget.

Safety rules (kairos-rs retried POSTs and pinned retries to one backend; reference §3.8, §10.9):
- a connect failure means nothing reached the upstream, so any method may be retried
  (``retry_on_connection_error``);
- once the request may have reached the upstream (a timeout, a reset, a retryable status), only
  idempotent methods are retried, unless the route sets ``retry_non_idempotent`` or the client sent
  an ``Idempotency-Key``;
- a retry budget (Envoy's idea, counted over time): retries may be at most ``budget_percent`` of
  the route's requests over the last ``BUDGET_WINDOW`` seconds (but ``MIN_RETRIES`` are always
  allowed, so a quiet route can still retry), so a struggling upstream is not hit by a retry storm
  on top of its normal load. Retries after a connect failure are not counted: no request reached
  any upstream, so they add no load, and failing over from a dead backend must not run dry.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable

from kairos.config.retry import RetryConfig

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
BUDGET_WINDOW = 10.0
MIN_RETRIES = 10

# Without a `retry` block a route still fails over when a connection cannot even be made to a
# backend (nothing was sent, so it is always safe), if it has another backend to try.
FAILOVER_ONLY = RetryConfig(
    max_retries=2,
    initial_backoff_ms=0,
    retry_on_status_codes=(),
    retry_on_connection_error=True,
    jitter=False,
)


def may_retry(
    config: RetryConfig, method: str, idempotency_key: bool, status: int, failure: str | None
) -> bool:
    """Whether this attempt's outcome is worth another attempt, by the rules above."""
    if failure == "connect":
        return config.retry_on_connection_error
    if method not in IDEMPOTENT_METHODS and not (config.retry_non_idempotent or idempotency_key):
        return False
    # A timeout or reset is answered 504/502 by the proxy: retried when those statuses are listed.
    return status in config.retry_on_status_codes


def backoff_seconds(
    config: RetryConfig,
    retry_number: int,
    retry_after: float | None,
    rand: Callable[[], float] = random.random,
) -> float:
    """kairos-rs's exponential backoff with full jitter (AWS's "full jitter": uniform in [0, b]);
    an upstream ``Retry-After`` is honoured, capped by ``max_backoff_ms``."""
    delay = config.backoff_ms(retry_number) / 1000
    if config.jitter:
        delay *= rand()
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.max_backoff_ms / 1000))
    return delay


def parse_retry_after(value: bytes, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text) if len(text) <= 18 else float("inf")  # int() refuses 4300+ digits
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryStats:
    """Counters the RetryMiddleware keeps and /metrics reads (owned by the Gateway)."""

    __slots__ = ("budget_exhausted", "retries")

    def __init__(self) -> None:
        self.retries = 0  # attempts after the first
        self.budget_exhausted = 0  # retries the budget refused


class RetryBudget:
    """Requests and retries of one route over a sliding window of two half-window buckets."""

    __slots__ = ("_bucket", "_clock", "_current", "_previous")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bucket = math.floor(clock() / (BUDGET_WINDOW / 2))
        self._current = [0, 0]  # requests, retries
        self._previous = [0, 0]

    def _roll(self) -> None:
        bucket = math.floor(self._clock() / (BUDGET_WINDOW / 2))
        if bucket != self._bucket:
            self._previous = self._current if bucket == self._bucket + 1 else [0, 0]
            self._current = [0, 0]
            self._bucket = bucket

    def request(self) -> None:
        self._roll()
        self._current[0] += 1

    def try_retry(self, budget_percent: float) -> bool:
        """Take one retry from the budget if there is room."""
        self._roll()
        requests = self._current[0] + self._previous[0]
        retries = self._current[1] + self._previous[1]
        if retries >= max(MIN_RETRIES, requests * budget_percent / 100):
            return False
        self._current[1] += 1
        return True
