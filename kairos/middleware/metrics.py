"""MetricsMiddleware: request counts and latency histograms, outside every layer that answers.

In the gateway pipeline only the tracing server span (when tracing is on) is outside it, so it sees
every request, the rejections included (404/405 from routing, 401/403, 429, the last guard's 500).
Per HTTP request it records:

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

The hot path keeps plain ints and bucket arrays (``RequestMetrics`` in kairos/observability/requests.py,
owned by the Gateway) and never touches prometheus-client: one ``bisect`` per observation, one dict
update per counter. The collector in ``kairos.observability.metrics`` turns them into cumulative
exposition at scrape time.
Cardinality is bounded: routes come from the config, methods from a fixed set, codes from HTTP.

Two labels a client cannot be told apart from: a request whose client left before any response
(nothing was sent) is counted with code ``499`` (nginx's "client closed request"), source gateway;
an exception escaping with nothing sent counts as 500.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, unanswered, watch_upgrade
from kairos.exchange import SCOPE_KEY
from kairos.observability.requests import BUCKETS, RequestMetrics, Series

UNMATCHED = "(unmatched)"
OTHER = "OTHER"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


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
