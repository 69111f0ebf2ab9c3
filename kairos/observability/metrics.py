"""``/metrics``: Prometheus exposition from one registry per Gateway (so two gateways in one process,
e.g. mounted twice, never mix their numbers).

Counters the hot path already keeps as plain integers (rate-limit refusals, store failures,
WebSocket connections) are read at scrape time by a custom collector instead of being mirrored
into prometheus-client objects per request: a scrape costs a few microseconds per series, a
request nothing extra. Request counts and latency histograms work the same way: the
MetricsMiddleware keeps plain bucket arrays (``kairos.observability.requests``), made cumulative here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from kairos.ai.metrics import ai_families
from kairos.dns.metrics import dns_families
from kairos.llm.metrics import llm_families
from kairos.observability.multiprocess import MultiprocessExporter
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN

if TYPE_CHECKING:
    from kairos.gateway import Gateway


# The families _requests() yields: per route and method, the costly part of a scrape.
_REQUEST_FAMILIES = ("kairos_request", "kairos_upstream_duration", "kairos_overhead")


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        # Set for one scrape by MetricsEndpoint (``/metrics?prefix=``): only families whose name
        # starts with it, and the per-route ones not built at all when none of them can match.
        self.prefix: str | None = None

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily]:
        prefix = self.prefix
        for family in self._families(prefix):
            if prefix is None or family.name.startswith(prefix):
                yield family

    def _families(
        self, prefix: str | None
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily]:
        gateway = self._gateway
        if prefix is None or any(
            name.startswith(prefix) or prefix.startswith(name) for name in _REQUEST_FAMILIES
        ):
            yield from _requests(gateway)
        yield from _kairos_rs_compatible(gateway)
        yield from _config(gateway)
        yield InfoMetricFamily("kairos_build", "Kairos version", value={"version": gateway.version})
        yield GaugeMetricFamily(
            "kairos_uptime_seconds", "Seconds since the gateway started", value=gateway.uptime
        )
        yield GaugeMetricFamily(
            "kairos_websocket_connections",
            "Open proxied WebSocket connections",
            value=gateway.websocket_connections,
        )
        limiter = gateway.rate_limiter
        yield _counter_by(
            "kairos_rate_limited", "Requests refused by a rate limit (429)", "route", limiter.rejected
        )
        yield CounterMetricFamily(
            "kairos_rate_limit_store_errors",
            "Rate-limit decisions the shared store (Redis) could not make",
            value=limiter.store_failures,
        )
        yield CounterMetricFamily(
            "kairos_rate_limit_fail_open",
            "Requests admitted without a decision because the store was down (fail-open)",
            value=limiter.admitted_without_store,
        )
        yield from _resilience(gateway)
        yield from _cache(gateway)
        yield from ai_families(gateway.ai_router)
        if gateway.llm.routes or gateway.llm.stats.requests:
            yield from llm_families(gateway.llm)
        dns = gateway.dns
        if dns.routes or dns.stats.requests:
            listener = gateway.dns_listener
            yield from dns_families(
                dns.stats,
                dns.cache_entries,
                dns.upstream_health,
                lambda: listener.running if listener is not None else {"udp": False, "tcp": False},
            )
        checker = gateway.health_checker
        health = GaugeMetricFamily(
            "kairos_upstream_health",
            "Active health check verdict per probed backend: 1 on the current state label",
            labels=["backend", "state"],
        )
        for backend, healthy in checker.states().items():
            health.add_metric([backend, "healthy"], 1 if healthy else 0)
            health.add_metric([backend, "unhealthy"], 0 if healthy else 1)
        yield health
        probes = CounterMetricFamily(
            "kairos_upstream_health_checks",
            "Active health probes by result (success, failure = unexpected status, timeout, error)",
            labels=["backend", "result"],
        )
        for backend, counts in sorted(checker.results.items()):
            for result, count in counts.items():
                probes.add_metric([backend, result], count)
        yield probes


def _requests(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
    """Request counts and latencies kept by the MetricsMiddleware (see kairos/observability/requests.py)."""
    metrics = gateway.request_metrics
    requests = CounterMetricFamily(
        "kairos_requests",
        "HTTP requests (and WebSocket upgrades) by route template, method, status code and source "
        "(gateway = answered by the gateway itself, upstream = proxied)",
        labels=["route", "method", "code", "source"],
    )
    for labels, count in metrics.requests_by_label():
        requests.add_metric(labels, count)
    yield requests
    yield GaugeMetricFamily(
        "kairos_requests_in_flight", "HTTP requests being handled now", value=metrics.in_flight
    )
    duration = HistogramMetricFamily(
        "kairos_request_duration_seconds",
        "Time from the request's arrival to the end of its response",
        labels=["route", "method"],
    )
    for labels, histogram in metrics.durations():
        duration.add_metric(labels, histogram.cumulative(), histogram.sum)
    yield duration
    upstream = HistogramMetricFamily(
        "kairos_upstream_duration_seconds",
        "Time from sending the upstream request to the upstream response head",
        labels=["route"],
    )
    for route, histogram in metrics.upstream_by_route().items():
        upstream.add_metric([route], histogram.cumulative(), histogram.sum)
    yield upstream
    overhead = HistogramMetricFamily(
        "kairos_overhead_duration_seconds",
        "The gateway's own time on proxied requests: request in to response head out, minus the "
        "time spent waiting on the client's body, upstream heads and retry backoff (body streaming "
        "excluded)",
    )
    overhead.add_metric([], metrics.overhead.cumulative(), metrics.overhead.sum)
    yield overhead


def _kairos_rs_compatible(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The kairos-rs names existing dashboards scrape, derived at scrape time from the same counts as
    ``kairos_requests_total`` (whose ``sum()`` over all labels is kairos-rs's ``kairos_requests_total``).

    Differences, each on purpose: every request the pipeline answers is counted (kairos-rs counted
    only proxied ones, and gateway errors as 500); success is any status below 400 (kairos-rs: 2xx
    only, so a 304 was an "error"); timeout/connection errors are requests the proxy answered
    because the upstream failed (they never moved in kairos-rs). Left out because they could not be
    true: kairos-rs's ``kairos_response_time_bucket`` (malformed; use
    ``kairos_request_duration_seconds``) and the byte counters (not counted here).
    """
    metrics = gateway.request_metrics
    totals = metrics.totals()
    failures = metrics.upstream_failures
    yield CounterMetricFamily(
        "kairos_requests_success", "Requests answered with a status below 400", value=totals.success
    )
    yield CounterMetricFamily(
        "kairos_requests_error", "Requests answered with a status of 400 or more", value=totals.errors
    )
    yield CounterMetricFamily(
        "kairos_http_4xx_errors",
        "Requests answered with a 4xx status (499: client left)",
        value=totals.http_4xx,
    )
    yield CounterMetricFamily(
        "kairos_http_5xx_errors", "Requests answered with a 5xx status", value=totals.http_5xx
    )
    yield CounterMetricFamily(
        "kairos_timeout_errors",
        "Requests answered by the gateway because the upstream did not answer in time",
        value=failures.get("timeout", 0),
    )
    yield CounterMetricFamily(
        "kairos_connection_errors",
        "Requests answered by the gateway because the upstream connection failed "
        "(refused/unreachable, reset, or a broken response)",
        value=failures.get("connect", 0) + failures.get("error", 0),
    )
    yield _counter_by(
        "kairos_upstream_failures",
        "Requests answered by the gateway because the upstream failed, by reason (connect = nothing "
        "was sent, timeout, error = reset or broken response); last attempt when retried",
        "reason",
        failures,
    )
    yield GaugeMetricFamily(
        "kairos_active_connections",
        "HTTP requests being handled now (kairos-rs's meaning; same as kairos_requests_in_flight)",
        value=metrics.in_flight,
    )
    yield GaugeMetricFamily(
        "kairos_peak_connections",
        "Highest kairos_active_connections since start",
        value=metrics.peak_in_flight,
    )
    if gateway.metrics_exporter is None:
        # Ratios of one process's counts: with --workers N they cannot be merged into a true value,
        # so they are left out there (compute them from the counters in PromQL).
        yield GaugeMetricFamily(
            "kairos_success_rate",
            "Percent of requests answered below 400 since start (100 with no traffic)",
            value=round(totals.success_rate, 2),
        )
        yield GaugeMetricFamily(
            "kairos_response_time_avg",
            "Mean request duration since start, milliseconds (kairos-rs compatibility; prefer "
            "rate(kairos_request_duration_seconds_sum) / rate(kairos_request_duration_seconds_count))",
            value=round(totals.average_ms, 3),
        )
    yield GaugeMetricFamily(
        "kairos_admin_streams",
        "Open /ws/metrics and /ws/admin/metrics streams",
        value=len(gateway.metrics_history.streams),
    )


def _config(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Config changes after startup (API, file watch, SIGHUP, admin edits), from ``reload_status``."""
    status = gateway.reload_status
    yield _counter_by(
        "kairos_config_reloads",
        "Config reloads/changes after startup by result (a failure keeps the running config)",
        "result",
        status.results,
    )
    yield GaugeMetricFamily(
        "kairos_config_last_reload_success_timestamp_seconds",
        "Unix time the running config was applied (startup counts)",
        value=status.last_success_at or 0,
    )
    yield GaugeMetricFamily(
        "kairos_config_generation",
        "Configs applied since start (1 = the startup config)",
        value=status.generation,
    )


class MetricsEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = GatewayCollector(gateway)
        self.registry.register(self.collector)
        # uvicorn --workers N: with PROMETHEUS_MULTIPROC_DIR set, every worker writes its samples to
        # that directory and a scrape answers with all workers' merge (kairos/observability/multiprocess.py).
        self.multiprocess = MultiprocessExporter.from_environment(self.registry)
        gateway.metrics_exporter = self.multiprocess  # synced from the gateway's startup to shutdown

    async def render(self, request: Request) -> Response:
        """The exposition; ``?prefix=kairos_ai_`` keeps only the families whose name starts with
        it (the dashboard's AI page: ~1 ms instead of ~150 ms with 1,000 routes). Ignored with
        several workers (the merge reads every family)."""
        if self.multiprocess is not None:
            return Response(self.multiprocess.render(), media_type=CONTENT_TYPE_LATEST)
        self.collector.prefix = request.query_params.get("prefix") or None
        try:  # generate_latest is synchronous: no other scrape runs in between
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
        finally:
            self.collector.prefix = None


def _resilience(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Circuit breakers and outlier ejection per backend (every backend of the live config), and
    panic mode (read from BackendState and the PanicTracker at scrape time)."""
    now = time.monotonic()
    states = sorted(gateway.backend_states.items())
    circuit = GaugeMetricFamily(
        "kairos_circuit_breaker_state",
        "Circuit breaker state per backend: 1 on the current state label",
        labels=["backend", "state"],
    )
    opened = CounterMetricFamily(
        "kairos_circuit_breaker_opened", "Times a backend's circuit opened", labels=["backend"]
    )
    ejected = GaugeMetricFamily(
        "kairos_outlier_ejected", "1 while a backend is ejected by outlier detection", labels=["backend"]
    )
    ejections = CounterMetricFamily(
        "kairos_outlier_ejections", "Times a backend was ejected by outlier detection", labels=["backend"]
    )
    for key, state in states:
        current = state.breaker.state_at(now)
        for name in (CLOSED, OPEN, HALF_OPEN):
            circuit.add_metric([key, name], 1 if name == current else 0)
        opened.add_metric([key], state.breaker.opened)
        ejected.add_metric([key], 1 if state.outlier.ejected(now) else 0)
        ejections.add_metric([key], state.outlier.ejections)
    yield from (circuit, opened, ejected, ejections)
    yield CounterMetricFamily(
        "kairos_circuit_breaker_store_errors",
        "Shared circuit-breaker calls the store (Redis) could not answer (the replica's own breaker decided)",
        value=gateway.shared_breakers.failures,
    )
    panic = gateway.panic
    yield CounterMetricFamily(
        "kairos_panic_mode",
        "Panic-mode episodes: a route had no healthy backend and used them all",
        value=panic.episodes,
    )
    yield GaugeMetricFamily("kairos_panic_mode_routes", "Routes in panic mode now", value=len(panic.active))
    retries = gateway.retry_stats
    yield CounterMetricFamily("kairos_retries", "Attempts after the first (retries)", value=retries.retries)
    yield CounterMetricFamily(
        "kairos_retry_budget_exhausted", "Retries refused by the retry budget", value=retries.budget_exhausted
    )


def _counter_by(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter with one label, one sample per key of ``counts`` (sorted, for a stable scrape)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _cache(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Response cache: lookups by result (hit, miss, bypass, coalesced = a waiter got a shared
    error), and what the in-memory stores hold (Redis-held entries are Redis's to report)."""
    cache = gateway.cache
    yield _counter_by("kairos_cache_requests", "Cacheable requests by cache result", "result", cache.results)
    yield GaugeMetricFamily(
        "kairos_cache_entries", "Entries in the in-memory cache", value=cache.memory_entries
    )
    yield GaugeMetricFamily(
        "kairos_cache_bytes", "Bytes held by the in-memory cache", value=cache.memory_bytes
    )
    yield CounterMetricFamily(
        "kairos_cache_store_errors",
        "Cache operations the shared store (Redis) failed",
        value=cache.store_errors,
    )
