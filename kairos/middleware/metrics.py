"""MetricsMiddleware: request counts and latency histograms, outermost in the gateway pipeline.

Outermost so it sees every request, the rejections included (404/405 from routing, 401/403, 429,
the last guard's 500). Per HTTP request it records:

- ``kairos_requests_total{route,method,code,source}``: ``route`` is the matched route's template
  (``Route.name``, e.g. ``/users/{id}``) or ``(unmatched)``, never the raw path; ``method`` is one
  of the standard methods or ``OTHER``; ``source`` is ``gateway`` when the response start carries
  ``errors.GENERATED`` (the gateway answered itself) and ``upstream`` otherwise;
- ``kairos_request_duration_seconds{route,method}``: from the ASGI call to the end of the response;
- ``kairos_upstream_duration_seconds{route}``: the upstream's time to its response head, which the
  HTTP proxy leaves in ``Exchange.upstream_seconds`` (the last attempt's, with retries);
- ``kairos_overhead_duration_seconds``: the gateway's own time, for requests that reached an
  upstream: from the ASGI call to the response head going to the client, minus the time spent
  waiting on others (``Exchange.waited``: the client's request body, every attempt's upstream head,
  retry backoff). Streaming the response body is the upstream's and the client's time, not
  overhead: a slow 5 s download adds nothing here;
- ``kairos_requests_in_flight`` and its high-water mark (``peak_in_flight``, one compare per request);
- ``upstream_failures``: requests whose answer was the proxy's own because the upstream failed
  (``Exchange.upstream_failure`` of the last attempt: ``connect``, ``timeout``, ``error``), read
  once per request (one attribute load; the dict is touched only on a failure).

WebSocket scopes count the upgrade outcome only (101 when accepted, else the refusal's status),
recorded as soon as it is known: a connection can last hours and has no meaningful "duration".

The hot path keeps plain ints and bucket arrays (``RequestMetrics``, owned by the Gateway) and never
touches prometheus-client: one ``bisect`` per observation, one dict update per counter. The
collector in ``kairos.observability.metrics`` turns them into cumulative exposition at scrape time.
Cardinality is bounded: routes come from the config, methods from a fixed set, codes from HTTP.

Two labels a client cannot be told apart from: a request whose client left before any response
(nothing was sent) is counted with code ``499`` (nginx's "client closed request"), source gateway;
an exception escaping with nothing sent counts as 500.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, unanswered, watch_upgrade
from kairos.exchange import SCOPE_KEY

UNMATCHED = "(unmatched)"
OTHER = "OTHER"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})

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


def _route_name(scope: Scope) -> str:
    exchange = scope.get(SCOPE_KEY)
    route = exchange.route if exchange is not None else None
    return route.name if route is not None else UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics if metrics is not None else RequestMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics
        started = perf_counter()
        status = 0
        generated = False
        head_at = 0.0

        async def send_watched(message: Message) -> None:
            nonlocal status, generated, head_at
            if message["type"] == "http.response.start":
                head_at = perf_counter()
                status = message["status"]
                generated = bool(message.get(GENERATED))
            await send(message)

        in_flight = metrics.in_flight + 1
        metrics.in_flight = in_flight
        if in_flight > metrics.peak_in_flight:
            metrics.peak_in_flight = in_flight
        failed = True
        try:
            await self.app(scope, receive, send_watched)
            failed = False
        finally:
            metrics.in_flight -= 1
            elapsed = perf_counter() - started
            method = scope["method"]
            if method not in KNOWN_METHODS:
                method = OTHER
            exchange = scope.get(SCOPE_KEY)
            route = exchange.route if exchange is not None else None
            name = route.name if route is not None else UNMATCHED
            key = (name, method)
            series = metrics.series.get(key)
            if series is None:
                series = metrics.series[key] = Series()
            if not status:
                status, generated = unanswered(failed)
            counts = series.by_gateway if generated else series.by_upstream
            counts[status] = counts.get(status, 0) + 1
            histogram = series.duration
            histogram.counts[bisect_left(BUCKETS, elapsed)] += 1
            histogram.sum += elapsed
            if exchange is not None:
                upstream = exchange.upstream_seconds
                waited = exchange.waited
                failure = exchange.upstream_failure
                if failure is not None:
                    failures = metrics.upstream_failures
                    failures[failure] = failures.get(failure, 0) + 1
            else:
                upstream = None
                waited = 0.0
            if upstream is not None:
                histogram = series.upstream
                histogram.counts[bisect_left(BUCKETS, upstream)] += 1
                histogram.sum += upstream
                own = (head_at or started + elapsed) - started - waited
                overhead = own if own > 0.0 else 0.0
                histogram = metrics.overhead
                histogram.counts[bisect_left(BUCKETS, overhead)] += 1
                histogram.sum += overhead

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        def outcome(code: int, generated: bool) -> None:
            self.metrics.count(_route_name(scope), "GET", code, "gateway" if generated else "upstream")

        await watch_upgrade(self.app, scope, receive, send, outcome)
