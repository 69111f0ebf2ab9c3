"""A typed Python client of a running Kairos gateway (sync and asyncio), on httpx.

    from kairos.client import KairosClient

    with KairosClient("http://127.0.0.1:5900", token="...") as kairos:
        print(kairos.health().status)
        for route in kairos.routes.list():
            print(route.external_path, route.methods)
        kairos.routes.create({"external_path": "/dogs/{id}", "internal_path": "/v1/dogs/{id}",
                              "methods": ["GET"], "backends": [{"host": "http://10.0.0.5", "port": 8080}]})

Answers are the pydantic models the admin API builds them from (``kairos.api_models``) and routes
are the config's own ``RouteConfig``; errors are ``KairosError`` subclasses carrying the gateway's
error body. The ``kairos`` CLI is built on this client and nothing else.
"""

from kairos.api_models import (
    BackendInfo,
    Backends,
    BackendState,
    ConfigStatus,
    Explanation,
    HealthStatus,
    LlmAnalytics,
    LlmAnalyticsRow,
    MetricPoint,
    MetricsSummary,
    MetricWindow,
    PurgeResult,
    ReadyStatus,
    RouteAnswer,
    RouteList,
    RoutesReplaced,
    RouteValidation,
    StreamEvent,
)
from kairos.client.client import AsyncKairosClient, KairosClient
from kairos.client.errors import (
    Conflict,
    KairosAPIError,
    KairosConnectionError,
    KairosError,
    KairosTimeout,
    NotFound,
    Unauthorized,
    UnexpectedAnswer,
    ValidationFailed,
)
from kairos.client.metrics import MetricsSnapshot, RouteFigures, histogram_quantile
from kairos.config.model import RouteConfig

__all__ = [
    "AsyncKairosClient",
    "BackendInfo",
    "BackendState",
    "Backends",
    "ConfigStatus",
    "Conflict",
    "Explanation",
    "HealthStatus",
    "KairosAPIError",
    "KairosClient",
    "KairosConnectionError",
    "KairosError",
    "KairosTimeout",
    "LlmAnalytics",
    "LlmAnalyticsRow",
    "MetricPoint",
    "MetricWindow",
    "MetricsSnapshot",
    "MetricsSummary",
    "NotFound",
    "PurgeResult",
    "ReadyStatus",
    "RouteAnswer",
    "RouteConfig",
    "RouteFigures",
    "RouteList",
    "RouteValidation",
    "RoutesReplaced",
    "StreamEvent",
    "Unauthorized",
    "UnexpectedAnswer",
    "ValidationFailed",
    "histogram_quantile",
]
