"""The gateway pipeline: one list of layers, outermost first, wrapped around the protocol endpoint.

``pipeline_layers(gateway)`` is the order a request walks, top to bottom: each entry is a middleware
class, its options and one line on why it sits there. ``build_pipeline`` wraps the endpoint in that
list read backwards (the last entry wraps the endpoint, the first ends up outermost), as Starlette's
``build_middleware_stack`` and Traefik's chain builder do. Optional layers (tracing, the access log)
are entries that are there or not. A reorder is a change to this list and to tests/gateway/test_pipeline.py,
which asserts it.

This is the one module that imports the middlewares. They never import each other: what one decides
and another needs travels in the Exchange (kairos/exchange.py), and the helpers they share live in
kairos/request.py. Live policies are accessors (``gateway.live(lambda config: config.cors)``), read
per request, so a config reload applies to the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol

from starlette.types import ASGIApp

from kairos.dns.doh import DohEndpoint
from kairos.ftp.endpoint import FtpEndpoint
from kairos.gateway import Gateway
from kairos.llm.endpoint import LlmEndpoint
from kairos.middleware.accesslog import AccessLogMiddleware
from kairos.middleware.airouting import AiRoutingMiddleware
from kairos.middleware.auth import AuthMiddleware
from kairos.middleware.balancer import BalancerMiddleware
from kairos.middleware.bodylimit import BodyLimitMiddleware
from kairos.middleware.cache import CacheMiddleware
from kairos.middleware.circuit import CircuitBreakerMiddleware
from kairos.middleware.compression import CompressionMiddleware
from kairos.middleware.cors import CorsMiddleware, answers_preflight
from kairos.middleware.exchange import ExchangeMiddleware
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

if TYPE_CHECKING:
    from kairos.observability.tracing import Tracing

P = ParamSpec("P")


class Middleware(Protocol[P]):
    """A middleware class: ``middleware(app, *options)`` is the layer around ``app``."""

    def __call__(self, app: ASGIApp, /, *args: P.args, **kwargs: P.kwargs) -> ASGIApp: ...


class Layer:
    """One entry of the pipeline: a middleware class, its options (type-checked against the class's
    constructor, like Starlette's ``Middleware``) and why it sits where it does."""

    __slots__ = ("args", "kwargs", "middleware", "why")

    middleware: Callable[..., ASGIApp]
    why: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __init__(self, middleware: Middleware[P], why: str, /, *args: P.args, **kwargs: P.kwargs) -> None:
        self.middleware = middleware
        self.why = why
        self.args = args
        self.kwargs = kwargs

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return self.middleware(app, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"Layer({getattr(self.middleware, '__name__', self.middleware)!r}: {self.why})"


def pipeline_layers(gateway: Gateway) -> list[Layer]:
    """The gateway's layers, outermost first: the order a request walks them."""
    settings = gateway.settings
    cors = gateway.live(lambda config: config.cors)
    breakers = gateway.live(lambda config: config.circuit_breaker)
    health = gateway.live(lambda config: config.health_check)
    access_log = gateway.access_log
    layers: list[Layer | None] = [
        _server_span(gateway.tracing),
        Layer(
            MetricsMiddleware,
            "outside every layer that answers: every request is counted (rejections too) and timed whole",
            gateway.request_metrics,
        ),
        Layer(
            AccessLogMiddleware,
            "just inside metrics: it sees every response, its final status and bytes",
            access_log.put,
        )
        if access_log is not None
        else None,
        Layer(
            SecurityHeadersMiddleware,
            "outside the Exchange, to see every response the gateway makes (404/405, the last "
            "guard's 500); the route's policy is read when the response starts",
            gateway.live(lambda config: config.security_headers),
        ),
        Layer(
            ExchangeMiddleware,
            "opens the Exchange (request id, client IP) every layer below reads, and is the last "
            "guard: an exception below becomes a JSON 500 with the request id",
            resolve_client_ip=gateway.resolve_client_ip,
            before_first_request=gateway.ensure_started,
        ),
        Layer(
            HeadGuardMiddleware,
            "first inside the Exchange (its answers have a request id), before anything reads a header",
            settings.max_header_bytes,
            settings.max_headers,
        ),
        Layer(
            CompressionMiddleware,
            "outside everything that answers, so cache hits and CORS/auth answers are compressed "
            "too; small gateway errors stay as they are",
            gateway.live(lambda config: config.compression),
        ),
        Layer(
            RouteMiddleware,
            "matches the route every layer below reads; lets a CORS preflight through on a route "
            "without OPTIONS when CORS answers it",
            table=gateway.current_table,
            preflight=answers_preflight(cors),
        ),
        Layer(
            CorsMiddleware,
            "inside routing (the route's policy), before auth (a preflight carries no credentials), "
            "so auth, limit and upstream errors get CORS headers",
            cors,
        ),
        Layer(
            IpFilterMiddleware,
            "before auth: a refused address costs no credential check",
            gateway.live(lambda config: config.ip_filter),
        ),
        Layer(
            AuthMiddleware,
            "before rate limits, so per-user limits key on the verified identity",
            gateway.current_authenticator,
        ),
        Layer(
            RateLimitMiddleware,
            "after auth (per-user keys) and before anything that costs: a refusal is cheap",
            gateway.live(lambda config: config.rate_limit),
            limiter=gateway.rate_limiter,
        ),
        Layer(
            BodyLimitMiddleware,
            "after auth and rate limits (a refused request costs no body check), before anything "
            "that buffers the body (cache, transforms, retry replay)",
            gateway.live(lambda config: config.max_body_size),
        ),
        Layer(
            CacheMiddleware,
            "inside auth (keys by identity) and rate limits (a hit still counts), outside everything "
            "that calls upstreams (a hit costs none of them)",
            gateway.cache,
        ),
        Layer(
            TransformMiddleware,
            "inside the cache (a cached answer is already transformed), outside retry (rules apply "
            "once; every attempt sends the same request)",
        ),
        Layer(
            AiRoutingMiddleware,
            "inside transforms (the model sees the request the backend gets), outside retry (one "
            "decision per request); it only sets Exchange.preferred_backend",
            gateway.ai_router,
        ),
        Layer(
            RetryMiddleware,
            "outside the balancer, so every attempt picks a backend afresh (another one if it can)",
            stats=gateway.retry_stats,
        ),
        Layer(
            BalancerMiddleware,
            "picks the attempt's backend among those health, outlier ejection and circuits allow",
            breakers,
            health,
            panic=gateway.panic,
        ),
        Layer(
            CircuitBreakerMiddleware,
            "innermost, so it sees one attempt on one backend (circuit breaking, passive outlier ejection)",
            breakers,
            health,
        ),
    ]
    return [layer for layer in layers if layer is not None]


def _server_span(tracing: Tracing | None) -> Layer | None:
    """KAIROS_TRACING: off, nothing is imported and there is no layer."""
    if tracing is None:
        return None
    from kairos.middleware.tracing import ServerSpanMiddleware

    return Layer(
        ServerSpanMiddleware,
        "outermost, so the SERVER span covers every request, rejections included",
        tracing.tracer,
    )


def protocol_endpoint(gateway: Gateway) -> ASGIApp:
    """What the innermost layer calls: the HTTP or WebSocket proxy for the route's protocol, each
    inside a CLIENT span per attempt (its traceparent sent upstream) when tracing is on."""

    def count_websockets(delta: int) -> None:
        gateway.websocket_connections += delta

    http: ASGIApp = HttpProxy(gateway.engine_for, gateway.forwarding, gateway.deadlines)
    websocket: ASGIApp = WebSocketProxy(gateway.forwarding, on_open=count_websockets)
    tracing = gateway.tracing
    if tracing is not None:
        from kairos.middleware.tracing import UpstreamSpanMiddleware

        http = UpstreamSpanMiddleware(http, tracing.tracer)
        websocket = UpstreamSpanMiddleware(websocket, tracing.tracer)
    return ProtocolEndpoint(
        http=http,
        websocket=websocket,
        ftp=FtpEndpoint(gateway.ftp_pool),
        dns=DohEndpoint(gateway.dns),
        llm=LlmEndpoint(gateway.llm, tracing.tracer if tracing is not None else None),
    )


def build_pipeline(gateway: Gateway) -> ASGIApp:
    """The endpoint wrapped in ``pipeline_layers`` read backwards: the first layer is outermost."""
    app = protocol_endpoint(gateway)
    for layer in reversed(pipeline_layers(gateway)):
        app = layer.wrap(app)
    return app
