"""``/metrics``: Prometheus exposition from one registry per Gateway (so two gateways in one process,
e.g. mounted twice, never mix their numbers).

Counters the hot path already keeps as plain integers (rate-limit refusals, store failures,
WebSocket connections) are read at scrape time by a custom collector instead of being mirrored
into prometheus-client objects per request: a scrape costs a few microseconds per series, a
request nothing extra. Request counts and latency histograms work the same way: the
MetricsMiddleware keeps plain bucket arrays (``kairos.middleware.metrics``), made cumulative here.
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

from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN

if TYPE_CHECKING:
    from kairos.gateway import Gateway


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily]:
        gateway = self._gateway
        yield from _requests(gateway)
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
    """Request counts and latencies kept by the MetricsMiddleware (see kairos/middleware/metrics.py)."""
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
        "The gateway's own time on proxied requests: request duration minus upstream duration",
    )
    overhead.add_metric([], metrics.overhead.cumulative(), metrics.overhead.sum)
    yield overhead


class MetricsEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(GatewayCollector(gateway))

    async def render(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


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
