"""``/metrics``: Prometheus exposition from one registry per Gateway (so two gateways in one process,
e.g. mounted twice, never mix their numbers).

Counters the hot path already keeps as plain integers (rate-limit refusals, store failures,
WebSocket connections) are read at scrape time by a custom collector instead of being mirrored
into prometheus-client objects per request: a scrape costs a few microseconds per series, a
request nothing extra. Request/latency histograms come with the observability work (issue 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from kairos.gateway import Gateway


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        gateway = self._gateway
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
        refused = CounterMetricFamily(
            "kairos_rate_limited", "Requests refused by a rate limit (429)", labels=["route"]
        )
        for route, count in sorted(limiter.rejected.items()):
            refused.add_metric([route], count)
        yield refused
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


class MetricsEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(GatewayCollector(gateway))

    async def render(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
