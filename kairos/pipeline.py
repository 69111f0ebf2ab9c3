"""The gateway pipeline, built in one place and read top to bottom (outermost first).

Later concerns (metrics, CORS, auth, rate limits, cache, transforms, AI routing, retries, circuit
breaking) slot in at the positions ARCHITECTURE.md gives; each is an independent pure-ASGI class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from starlette.types import ASGIApp

from kairos.config.model import GatewayConfig
from kairos.gateway import Gateway
from kairos.middleware.accesslog import AccessLogMiddleware
from kairos.middleware.airouting import AiRoutingMiddleware
from kairos.middleware.auth import AuthMiddleware
from kairos.middleware.balancer import BalancerMiddleware
from kairos.middleware.bodylimit import BodyLimitMiddleware
from kairos.middleware.cache import CacheMiddleware
from kairos.middleware.circuit import CircuitBreakerMiddleware
from kairos.middleware.compression import CompressionMiddleware
from kairos.middleware.context import ExchangeMiddleware
from kairos.middleware.cors import CorsMiddleware
from kairos.middleware.headguard import HeadGuardMiddleware
from kairos.middleware.ipfilter import IpFilterMiddleware
from kairos.middleware.metrics import MetricsMiddleware
from kairos.middleware.ratelimit import RateLimitMiddleware
from kairos.middleware.retry import RetryMiddleware
from kairos.middleware.routing import RouteMiddleware
from kairos.middleware.security import SecurityHeadersMiddleware
from kairos.middleware.transform import TransformMiddleware
from kairos.proxy.endpoint import ProtocolEndpoint
from kairos.proxy.http import HttpProxy
from kairos.proxy.websocket import WebSocketProxy

T = TypeVar("T")


def _live(gateway: Gateway, pick: Callable[[GatewayConfig], T]) -> Callable[[], T | None]:
    """An accessor for a top-level policy of the live config, so a reload applies at once."""

    def current() -> T | None:
        config = gateway.current_config()
        return pick(config) if config is not None else None

    return current


def build_pipeline(gateway: Gateway) -> ASGIApp:
    def count_websockets(delta: int) -> None:
        gateway.websocket_connections += delta

    http: ASGIApp = HttpProxy(gateway.engine_for, gateway.forwarding, gateway.deadlines)
    websocket: ASGIApp = WebSocketProxy(gateway.forwarding, on_open=count_websockets)
    tracing = gateway.tracing  # KAIROS_TRACING; off: nothing imported, no layer
    if tracing is not None:
        from kairos.middleware.tracing import ServerSpanMiddleware, UpstreamSpanMiddleware

        # A CLIENT span per attempt that reaches an upstream, and its traceparent sent there.
        http = UpstreamSpanMiddleware(http, tracing.tracer)
        websocket = UpstreamSpanMiddleware(websocket, tracing.tracer)
    app: ASGIApp = ProtocolEndpoint(http=http, websocket=websocket)
    # Circuit breaking + passive outlier ejection: innermost, so it sees one attempt on one backend.
    breakers = _live(gateway, lambda c: c.circuit_breaker)
    health = _live(gateway, lambda c: c.health_check)
    app = CircuitBreakerMiddleware(app, breakers, health)
    app = BalancerMiddleware(app, breakers, health, panic=gateway.panic)
    # Retry: outside the balancer so every attempt picks a backend afresh (another one if it can).
    app = RetryMiddleware(app, stats=gateway.retry_stats)
    # AI routing: outside retry (one decision per request, not per attempt), inside transforms (the
    # model sees the request the backend gets); it only sets Exchange.preferred_backend.
    app = AiRoutingMiddleware(app, gateway.ai_router)
    # Transformations: outside retry (rules apply once, every attempt sends the same request), after
    # rate limits and the cache (a cached answer is already transformed).
    app = TransformMiddleware(app)
    # Response cache: outside everything that calls upstreams (a hit costs none of them), inside
    # auth (keys by identity) and rate limits (a hit still counts); routes without `cache` pass free.
    app = CacheMiddleware(app, gateway.cache)
    # Body limits: after auth and rate limits (a refused request never costs a body check), before
    # anything that would buffer the body (cache, transforms, retry replay).
    app = BodyLimitMiddleware(app, _live(gateway, lambda c: c.max_body_size))
    app = RateLimitMiddleware(app, gateway.current_rate_limit, limiter=gateway.rate_limiter)
    app = AuthMiddleware(app, gateway.current_authenticator)
    app = IpFilterMiddleware(app, gateway.current_ip_filter)
    # CORS: inside routing (the route's policy), before auth (a preflight carries no credentials),
    # so auth/limit/upstream errors get CORS headers. RouteMiddleware lets a preflight through on a
    # route without OPTIONS when this layer will answer it (see routing.py).
    app = cors = CorsMiddleware(app, _live(gateway, lambda c: c.cors))
    app = RouteMiddleware(app, table=gateway.current_table, preflight=cors.answers_preflight)
    # Compression: inside the Exchange (its last guard covers it), outside everything that answers,
    # so cache hits and CORS/auth answers are compressed too; small gateway errors stay as they are.
    app = CompressionMiddleware(app, _live(gateway, lambda c: c.compression))
    # Head rules (size and count limits, Host): first thing inside the Exchange (the answer has a
    # request id), before anything reads a header.
    settings = gateway.settings
    app = HeadGuardMiddleware(app, settings.max_header_bytes, settings.max_headers)
    app = ExchangeMiddleware(
        app, resolve_client_ip=gateway.resolve_client_ip, before_first_request=gateway.ensure_started
    )
    # Security headers: outermost, to see every response the gateway makes (404/405 from routing,
    # the 500 of the last guard); the route's policy is read when the response starts.
    app = SecurityHeadersMiddleware(app, _live(gateway, lambda c: c.security_headers))
    # Access log: just inside metrics, so it sees every response and its final status and bytes.
    if gateway.access_log is not None:
        app = AccessLogMiddleware(app, gateway.access_log.put)
    # Metrics: outside everything, so every request is counted (rejections too) and timed whole.
    app = MetricsMiddleware(app, gateway.request_metrics)
    # Tracing: outermost, so the SERVER span covers every request, rejections included.
    if tracing is not None:
        app = ServerSpanMiddleware(app, tracing.tracer)
    return app
