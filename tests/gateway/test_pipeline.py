"""The pipeline's order (kairos/pipeline.py), asserted so a reorder is a reviewed change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kairos.gateway import Gateway
from kairos.middleware.accesslog import AccessLogMiddleware
from kairos.middleware.airouting import AiRoutingMiddleware
from kairos.middleware.auth import AuthMiddleware
from kairos.middleware.balancer import BalancerMiddleware
from kairos.middleware.bodylimit import BodyLimitMiddleware
from kairos.middleware.cache import CacheMiddleware
from kairos.middleware.circuit import CircuitBreakerMiddleware
from kairos.middleware.compression import CompressionMiddleware
from kairos.middleware.cors import CorsMiddleware
from kairos.middleware.exchange import ExchangeMiddleware
from kairos.middleware.headguard import HeadGuardMiddleware
from kairos.middleware.ipfilter import IpFilterMiddleware
from kairos.middleware.metrics import MetricsMiddleware
from kairos.middleware.ratelimit import RateLimitMiddleware
from kairos.middleware.retry import RetryMiddleware
from kairos.middleware.routing import RouteMiddleware
from kairos.middleware.security import SecurityHeadersMiddleware
from kairos.middleware.transform import TransformMiddleware
from kairos.pipeline import build_pipeline, pipeline_layers
from kairos.proxy.endpoint import ProtocolEndpoint
from kairos.proxy.http import HttpProxy
from kairos.proxy.websocket import WebSocketProxy
from kairos.settings import Settings

# Between the Exchange's opening layers and the endpoint: the same with every setting.
INNER = [
    SecurityHeadersMiddleware,
    ExchangeMiddleware,
    HeadGuardMiddleware,
    CompressionMiddleware,
    RouteMiddleware,
    CorsMiddleware,
    IpFilterMiddleware,
    AuthMiddleware,
    RateLimitMiddleware,
    BodyLimitMiddleware,
    CacheMiddleware,
    TransformMiddleware,
    AiRoutingMiddleware,
    RetryMiddleware,
    BalancerMiddleware,
    CircuitBreakerMiddleware,
]


def chain(app: Any) -> Iterator[Any]:
    """A built pipeline, outermost first: each layer, then the endpoint (the one without ``app``)."""
    while True:
        yield app
        if not hasattr(app, "app"):
            return
        app = app.app


def classes(gateway: Gateway) -> list[Any]:
    return [layer.middleware for layer in pipeline_layers(gateway)]


def test_default_order() -> None:
    gateway = Gateway(Settings(access_log=False, tracing="off", config_watch=False))
    assert classes(gateway) == [MetricsMiddleware, *INNER]


def test_order_with_the_access_log() -> None:
    gateway = Gateway(Settings(access_log=True, tracing="off", config_watch=False))
    assert classes(gateway) == [MetricsMiddleware, AccessLogMiddleware, *INNER]


def test_order_with_tracing_and_the_access_log() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from kairos.middleware.tracing import ServerSpanMiddleware, UpstreamSpanMiddleware

    gateway = Gateway(Settings(access_log=True, tracing="console", config_watch=False))
    assert classes(gateway) == [ServerSpanMiddleware, MetricsMiddleware, AccessLogMiddleware, *INNER]
    endpoint = list(chain(build_pipeline(gateway)))[-1]
    assert isinstance(endpoint, ProtocolEndpoint)
    # A CLIENT span per attempt: each protocol's proxy is wrapped, inside the circuit breaker.
    assert isinstance(endpoint._http, UpstreamSpanMiddleware) and isinstance(endpoint._http.app, HttpProxy)
    assert isinstance(endpoint._websocket, UpstreamSpanMiddleware)
    assert isinstance(endpoint._websocket.app, WebSocketProxy)


@pytest.mark.parametrize(("access_log", "tracing"), [(False, "off"), (True, "off"), (True, "console")])
def test_the_built_pipeline_is_the_list_around_the_endpoint(access_log: bool, tracing: Any) -> None:
    if tracing != "off":
        pytest.importorskip("opentelemetry.sdk")
    gateway = Gateway(Settings(access_log=access_log, tracing=tracing, config_watch=False))
    built = [type(node) for node in chain(build_pipeline(gateway))]
    assert built == [*classes(gateway), ProtocolEndpoint]


def test_every_layer_says_why_it_is_there() -> None:
    gateway = Gateway(Settings(access_log=True, tracing="off", config_watch=False))
    assert all(layer.why.strip() for layer in pipeline_layers(gateway))
