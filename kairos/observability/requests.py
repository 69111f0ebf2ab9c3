"""The request metrics the MetricsMiddleware keeps: plain ints and bucket arrays, no prometheus-client.

The hot path (kairos/middleware/metrics.py) updates these in place: one ``bisect`` per
observation, one dict update per counter. ``RequestMetrics`` is owned by the Gateway; the /metrics
collector (kairos/observability/metrics.py) turns it into cumulative exposition at scrape time, the
history sampler (kairos/observability/history.py) reads ``totals()`` once per interval, and AI
routing keeps its own ``Histogram`` of decision times.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

# Upper bounds (seconds) of the latency buckets: the Prometheus defaults shifted toward a gateway's
# sub-millisecond overheads, up to 10 s (slower answers land in +Inf).
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Per-bucket (non-cumulative) counts; the last slot is +Inf. ``observe`` is one bisect.

    The middleware inlines ``observe`` on its hot path (a method call costs as much as the bisect)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus's "le" (a value equal to a bound
        # belongs to that bucket).
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs ending with ("+Inf", count), as exposition wants them."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


_BOUNDS = (*(repr(bound) for bound in BUCKETS), "+Inf")


class Series:
    """Everything kept for one (route, method): status counts by source, the request duration and
    the upstream duration histograms (summed over methods at scrape time for the {route} one)."""

    __slots__ = ("by_gateway", "by_upstream", "duration", "upstream")

    def __init__(self) -> None:
        self.by_upstream: dict[int, int] = {}  # status -> count, source="upstream"
        self.by_gateway: dict[int, int] = {}  # status -> count, source="gateway"
        self.duration = Histogram()
        self.upstream = Histogram()


@dataclass(slots=True)
class RequestTotals:
    """Sums over every series at one moment (kairos-rs's global counters, derived instead of kept).

    Success is any status below 400 (1xx incl. WebSocket 101, 2xx, 3xx: a redirect or a 304 is not
    a failure); an error is 400 and above, 499 (client left) included, so success + errors = total.
    """

    requests: int = 0
    success: int = 0
    errors: int = 0
    http_4xx: int = 0
    http_5xx: int = 0
    timed: int = 0  # requests with a duration observation (HTTP; WebSocket upgrades have none)
    duration_seconds: float = 0.0  # sum of their durations

    @property
    def success_rate(self) -> float:
        """Percent of requests that succeeded; 100 with no traffic (as kairos-rs)."""
        return self.success * 100.0 / self.requests if self.requests else 100.0

    @property
    def average_ms(self) -> float:
        """Mean request duration since start in milliseconds; 0 with no traffic."""
        return self.duration_seconds * 1000.0 / self.timed if self.timed else 0.0


UPSTREAM_FAILURES = ("connect", "timeout", "error")


class RequestMetrics:
    """The counters and histograms the middleware keeps, read by the /metrics collector."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}  # (route, method)
        self.overhead = Histogram()
        self.in_flight = 0
        self.peak_in_flight = 0  # highest in_flight since start
        # Requests answered by the proxy because the upstream failed, by Exchange.upstream_failure.
        self.upstream_failures: dict[str, int] = dict.fromkeys(UPSTREAM_FAILURES, 0)

    def totals(self) -> RequestTotals:
        """Sums over every series (bounded: routes x methods x codes). Sampling/scrape time only,
        never per request; no await inside, so it reads one consistent moment of the event loop."""
        totals = RequestTotals()
        for series in self.series.values():
            for counts in (series.by_gateway, series.by_upstream):
                for code, count in counts.items():
                    totals.requests += count
                    if code < 400:
                        totals.success += count
                    elif code < 500:
                        totals.http_4xx += count
                    else:
                        totals.http_5xx += count
            totals.timed += sum(series.duration.counts)
            totals.duration_seconds += series.duration.sum
        totals.errors = totals.http_4xx + totals.http_5xx
        return totals

    def series_for(self, route: str, method: str) -> Series:
        series = self.series.get((route, method))
        if series is None:
            series = self.series[(route, method)] = Series()
        return series

    def count(self, route: str, method: str, code: int, source: str) -> None:
        series = self.series_for(route, method)
        counts = series.by_gateway if source == "gateway" else series.by_upstream
        counts[code] = counts.get(code, 0) + 1

    def record(
        self, route: str, method: str, code: int, source: str, seconds: float, upstream: float | None
    ) -> None:
        """What the middleware does inline, as one call (tests, other callers)."""
        self.count(route, method, code, source)
        series = self.series_for(route, method)
        series.duration.observe(seconds)
        if upstream is not None:
            series.upstream.observe(upstream)
            self.overhead.observe(max(0.0, seconds - upstream))

    def requests_by_label(self) -> Iterator[tuple[list[str], int]]:
        """([route, method, code, source], count) in a stable order."""
        for (route, method), series in sorted(self.series.items()):
            for source, counts in (("gateway", series.by_gateway), ("upstream", series.by_upstream)):
                for code, value in sorted(counts.items()):
                    yield [route, method, str(code), source], value

    def durations(self) -> Iterator[tuple[list[str], Histogram]]:
        for (route, method), series in sorted(self.series.items()):
            if any(series.duration.counts):
                yield [route, method], series.duration

    def upstream_by_route(self) -> dict[str, Histogram]:
        merged: dict[str, Histogram] = {}
        for (route, _), series in sorted(self.series.items()):
            if any(series.upstream.counts):
                merged.setdefault(route, Histogram()).merge(series.upstream)
        return merged
