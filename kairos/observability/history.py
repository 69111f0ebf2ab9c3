"""Metrics history: a few gateway-wide series sampled in the background, kept in memory, bounded.

kairos-rs records, every 5 s, ``requests_total``, ``requests_error`` (counters),
``active_connections`` and ``response_time_avg`` (gauges) and keeps at most 10,000 points per series
for at most 24 h; ``/api/metrics/history`` and the ``/ws/metrics`` stream read them. We keep the
same series and shapes, plus a few that cost nothing to derive (success count, requests per
second, upstream failures, rate-limit refusals, open WebSockets).

Why it looks like this:

- The hot path keeps nothing for history. The sampler reads the totals the MetricsMiddleware
  already keeps (``RequestMetrics.totals()``, a sum over routes x methods x codes) once per
  interval, so history costs one small loop every 5 s whatever the traffic.
- ``response_time_avg`` is the mean over the last interval (delta of the duration sum / delta of
  the count), not since start: an all-time mean hides a slowdown after a day of uptime. An
  interval in which no request finished gets no point: the mean of nothing is not 0 ms.
- Each series is a fixed-capacity ring of two ``array``s (int64 microseconds, float64 value):
  16 bytes a point, at most ``max_points`` points, older-than-retention points dropped on every
  append. Memory is bounded by capacity, not by uptime (tests/admin/test_metrics_history.py).
- Timestamps are integer microseconds since the epoch, so an RFC 3339 timestamp we return parses
  back to exactly the same instant and a client can page with it without losing a point.
- One history per Gateway (per worker process with ``--workers N``: each worker answers from its
  own samples, like kairos-rs's per-process store). The Gateway hands it the ``read`` callable
  (``Gateway.history_reading``), so this module knows nothing of the Gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kairos.observability.requests import RequestTotals

logger = logging.getLogger("kairos.metrics")

Kind = Literal["Counter", "Gauge"]
COUNTER: Kind = "Counter"
GAUGE: Kind = "Gauge"

MAX_POINTS = 10_000  # per series (kairos-rs)
RETENTION_SECONDS = 24 * 3600  # (kairos-rs)
DEFAULT_INTERVAL_SECONDS = 5.0  # (kairos-rs)

# name -> kind, in the order /api/metrics/list answers. The first four are kairos-rs's.
SERIES: dict[str, Kind] = {
    "requests_total": COUNTER,  # every request the pipeline answered (incl. gateway 4xx/5xx)
    "requests_error": COUNTER,  # status >= 400
    "active_connections": GAUGE,  # HTTP requests being handled at the sample
    "response_time_avg": GAUGE,  # ms, mean over the last interval
    "requests_success": COUNTER,  # status < 400
    "requests_per_second": GAUGE,  # over the last interval
    "upstream_errors": COUNTER,  # requests answered by the proxy because the upstream failed
    "rate_limited": COUNTER,  # requests refused with 429 by a rate limit
    "websocket_connections": GAUGE,  # open proxied WebSocket connections
}

# /api/metrics/history?interval=... (kairos-rs's AggregationInterval, snake_case)
INTERVALS: dict[str, int] = {"one_minute": 60, "five_minutes": 300, "one_hour": 3600, "one_day": 86400}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float rounding)."""
    return (moment - _EPOCH) // _MICROSECOND


def rfc3339(micros: int) -> str:
    """``2026-11-24T06:00:00.123456Z``: what chrono writes for a ``DateTime<Utc>``, to the µs."""
    return (_EPOCH + timedelta(microseconds=micros)).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Ring:
    """A time series of at most ``capacity`` (time µs, value) points, oldest first.

    Two ``array``s grow to ``capacity`` and are then overwritten in place, so a full ring holds
    exactly ``capacity`` points in ``16 * capacity`` bytes (plus the arrays' growth slack).
    Appends must come in non-decreasing time order (the sampler guarantees it).
    """

    __slots__ = ("_head", "_size", "_times", "_values", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._times = array("q")
        self._values = array("d")
        self._head = 0  # physical index of the oldest point
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the points (the arrays' buffers)."""
        return (
            self._times.buffer_info()[1] * self._times.itemsize
            + self._values.buffer_info()[1] * self._values.itemsize
        )

    def append(self, micros: int, value: float) -> None:
        times, values = self._times, self._values
        if len(times) < self.capacity:  # still growing: the points are times[head:], in order
            times.append(micros)
            values.append(value)
            self._size += 1
            return
        position = (self._head + self._size) % self.capacity
        times[position] = micros
        values[position] = value
        if self._size == self.capacity:
            self._head = (self._head + 1) % self.capacity  # overwrote the oldest
        else:
            self._size += 1

    def drop_before(self, micros: int) -> None:
        """Forget the points older than ``micros`` (retention)."""
        times = self._times
        while self._size and times[self._head] < micros:
            self._head += 1
            if len(times) == self.capacity:
                self._head %= self.capacity
            self._size -= 1

    def _time_at(self, index: int) -> int:
        return self._times[(self._head + index) % len(self._times)]

    def _first_at_or_after(self, micros: int) -> int:
        low, high = 0, self._size
        while low < high:
            middle = (low + high) // 2
            if self._time_at(middle) < micros:
                low = middle + 1
            else:
                high = middle
        return low

    def between(self, start: int, end: int) -> Iterator[tuple[int, float]]:
        """Points with ``start <= time <= end`` (both inclusive, as kairos-rs), oldest first."""
        length = len(self._times)
        for index in range(self._first_at_or_after(start), self._size):
            position = (self._head + index) % length
            moment = self._times[position]
            if moment > end:
                return
            yield moment, self._values[position]

    def last(self) -> tuple[int, float] | None:
        if not self._size:
            return None
        position = (self._head + self._size - 1) % len(self._times)
        return self._times[position], self._values[position]


@dataclass(slots=True)
class Reading:
    """Cumulative counters and current gauges at one moment; the sampler differences two readings."""

    totals: RequestTotals
    active: int
    websockets: int
    upstream_errors: int
    rate_limited: int


class StreamRegistry:
    """The open ``/ws/metrics`` and ``/ws/admin/metrics`` streams, each known by the callable that
    asks it to end, so the gateway can end them at shutdown instead of leaving tasks behind."""

    def __init__(self) -> None:
        self._closers: set[Callable[[], None]] = set()
        self._emptied: asyncio.Event | None = None  # set by discard() while close_all() waits

    def __len__(self) -> int:
        return len(self._closers)

    def add(self, closer: Callable[[], None]) -> None:
        self._closers.add(closer)

    def discard(self, closer: Callable[[], None]) -> None:
        self._closers.discard(closer)
        if not self._closers and self._emptied is not None:
            self._emptied.set()

    async def close_all(self, grace: float = 2.0) -> None:
        """Ask every stream to end, then wait up to ``grace`` seconds for them to be gone."""
        if not self._closers:
            return
        self._emptied = asyncio.Event()
        for closer in list(self._closers):
            closer()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._emptied.wait()
        self._emptied = None


class MetricsHistory:
    """The series, the sampler task that fills them, and the queries the admin API answers.

    ``sample()`` is public so tests (and a caller without an event loop) can drive it; the task
    started by ``start()`` calls it every ``interval`` seconds until ``stop()``.
    """

    def __init__(
        self,
        read: Callable[[], Reading],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_points: int = MAX_POINTS,
        retention_seconds: float = RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be greater than 0 seconds, got {interval}")
        self.interval = interval
        self.retention_micros = int(retention_seconds * 1_000_000)
        self._read = read
        self._clock = clock
        self.series: dict[str, Ring] = {name: Ring(max_points) for name in SERIES}
        self._previous: tuple[int, Reading] | None = None
        self._last_micros = 0
        self._task: asyncio.Task[None] | None = None
        self.streams = StreamRegistry()

    # -- sampling ------------------------------------------------------------------------------

    def _now_micros(self) -> int:
        # Never backwards (a wall-clock step back would break the rings' order): hold the last time.
        now = max(int(self._clock() * 1_000_000), self._last_micros)
        self._last_micros = now
        return now

    def baseline(self) -> None:
        """Remember the counters now without recording a point: the first sample's rates and
        interval average are then computed over a real interval."""
        self._previous = (self._now_micros(), self._read())

    def sample(self) -> None:
        now = self._now_micros()
        reading = self._read()
        totals = reading.totals
        values: dict[str, float] = {
            "requests_total": totals.requests,
            "requests_error": totals.errors,
            "active_connections": reading.active,
            "requests_success": totals.success,
            "upstream_errors": reading.upstream_errors,
            "rate_limited": reading.rate_limited,
            "websocket_connections": reading.websockets,
        }
        if self._previous is not None:
            then, before = self._previous
            elapsed = (now - then) / 1_000_000
            if elapsed > 0:
                values["requests_per_second"] = max(0, totals.requests - before.totals.requests) / elapsed
            finished = totals.timed - before.totals.timed
            if finished > 0:
                spent = totals.duration_seconds - before.totals.duration_seconds
                values["response_time_avg"] = spent * 1000.0 / finished
        self._previous = (now, reading)
        cutoff = now - self.retention_micros
        for name, value in values.items():
            ring = self.series[name]
            ring.drop_before(cutoff)
            ring.append(now, float(value))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.interval
            delay = due - loop.time()
            if delay < 0:  # the loop was blocked for longer than an interval: do not catch up
                due, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            try:
                self.sample()
            except Exception:  # a bug here must not end sampling for the process's lifetime
                logger.exception("metrics history sample failed")

    def start(self) -> None:
        if self._task is None or self._task.done():
            self.baseline()
            self._task = asyncio.create_task(self._run(), name="kairos-metrics-history")

    async def stop(self) -> None:
        """End the sampler and the open streams (gateway shutdown)."""
        await self.streams.close_all()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- queries -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.series)

    @property
    def nbytes(self) -> int:
        return sum(ring.nbytes for ring in self.series.values())

    def points(self, name: str, start: int, end: int) -> list[dict[str, Any]]:
        """kairos-rs's ``MetricPoint`` list: ``[{"timestamp", "value": {"type", "value"}}]``, points
        with ``start <= timestamp <= end`` (µs). An unknown name has no points."""
        ring = self.series.get(name)
        if ring is None:
            return []
        kind = SERIES[name]
        return [
            {"timestamp": rfc3339(moment), "value": {"type": kind, "value": _typed(kind, value)}}
            for moment, value in ring.between(start, end)
        ]

    def aggregate(self, name: str, start: int, end: int, window_seconds: int) -> list[dict[str, Any]]:
        """kairos-rs's ``AggregatedMetric`` list: windows of ``window_seconds`` from ``start``
        (each ``[start_time, end_time)``); windows without points are omitted and a last window
        that would pass ``end`` is dropped. One pass over the points, however wide the range."""
        ring = self.series.get(name)
        if ring is None:
            return []
        window = window_seconds * 1_000_000
        complete = (end - start) // window if end > start else 0
        limit = start + complete * window  # points at or after this fall in the dropped window
        out: list[dict[str, Any]] = []
        current = -1
        count, total, low, high = 0, 0.0, 0.0, 0.0

        def close() -> None:
            window_start = start + current * window
            out.append(
                {
                    "start_time": rfc3339(window_start),
                    "end_time": rfc3339(window_start + window),
                    "count": count,
                    "sum": total,
                    "min": low,
                    "max": high,
                    "avg": total / count,
                }
            )

        for moment, value in ring.between(start, limit - 1):
            index = (moment - start) // window
            if index != current:
                if count:
                    close()
                current, count, total, low, high = index, 0, 0.0, value, value
            count += 1
            total += value
            low = min(low, value)
            high = max(high, value)
        if count:
            close()
        return out

    def recent(self, name: str, seconds: float) -> list[dict[str, Any]]:
        """The last ``seconds`` of a series (the /ws/metrics ``include_history`` answer)."""
        ring = self.series.get(name)
        last = ring.last() if ring is not None else None
        end = max(self._last_micros, last[0] if last is not None else 0, int(self._clock() * 1_000_000))
        return self.points(name, end - int(seconds * 1_000_000), end)


def _typed(kind: Kind, value: float) -> float | int:
    """Counters serialise as integers (kairos-rs's ``Counter(u64)``), gauges as floats."""
    return int(value) if kind == COUNTER else value
