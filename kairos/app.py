"""``create_app()`` and the module-level ``app`` for ``uvicorn kairos.app:app``.

Creating the app reads settings but starts nothing: the config is loaded and the upstream pool
opened in the lifespan (or on the first request when a parent app never runs our lifespan).
Mounted in another Starlette/FastAPI app, drive our lifespan from the parent's::

    gw = create_app()
    @asynccontextmanager
    async def lifespan(app):
        async with gw.router.lifespan_context(gw):
            yield
    parent = Starlette(routes=[Mount("/gw", app=gw)], lifespan=lifespan)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.admin.api import STREAM_PATHS, AdminApi
from kairos.admin.responses import json_http_error
from kairos.gateway import RESERVED_PATHS, ConfigInput, Gateway
from kairos.health import HealthEndpoints
from kairos.middleware.headguard import HeadGuardMiddleware
from kairos.observability.metrics import MetricsEndpoint
from kairos.pipeline import build_pipeline
from kairos.settings import Settings, load_settings

logger = logging.getLogger("kairos")


class GatewayApp(Starlette):
    """A Starlette app whose proxied traffic skips Starlette's own layers.

    Starlette serves the built-in endpoints and the lifespan. Every other request goes straight to
    the gateway pipeline, sparing it Starlette's error middlewares, regex routing and the Mount
    scope copy — measurable on the hot path. When a user adds Starlette middleware
    (``app.add_middleware``), everything goes through Starlette again so that middleware sees all
    traffic. The pipeline renders its own errors, including unexpected ones (a JSON 500).
    """

    def __init__(self, pipeline: ASGIApp, admin: AdminApi, settings: Settings, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pipeline = pipeline
        self.admin = admin
        # The request-head rules (size, count, Host) for the built-in endpoints; proxied traffic
        # meets the same rules inside the pipeline, where metrics count the refusals.
        self._built_in = HeadGuardMiddleware(self._starlette, settings.max_header_bytes, settings.max_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path not in RESERVED_PATHS and not self.admin.owns(path):
                if self.user_middleware:
                    await super().__call__(scope, receive, send)
                else:
                    await self.pipeline(scope, receive, send)
                return
            await self._built_in(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def _lifespan(gateway: Gateway, admin: AdminApi) -> Callable[[object], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        async with gateway.lifespan(app):
            admin.log_exposure()
            yield

    return lifespan


def create_app(config: ConfigInput = None, settings: Settings | None = None) -> GatewayApp:
    """``config``: a GatewayConfig, a parsed dict, or a file path; None reads ``KAIROS_CONFIG_PATH``
    (falling back to the embedded default) at startup. An explicit config is validated now and
    raises ConfigError listing every problem."""
    settings = settings or load_settings()
    gateway = Gateway(settings, config)
    health = HealthEndpoints(gateway)
    metrics = MetricsEndpoint(gateway)
    pipeline = build_pipeline(gateway)
    admin = AdminApi(gateway)
    app = GatewayApp(
        pipeline,
        admin,
        settings,
        routes=[
            Route("/health", health.health, methods=["GET"]),
            Route("/ready", health.ready, methods=["GET"]),
            Route("/live", health.live, methods=["GET"]),
            Route("/metrics", metrics.render, methods=["GET"]),
            Mount(admin.prefix, app=admin.rest),
            *_dashboard(settings, lambda: app),
            *(WebSocketRoute(path, admin.streams) for path in STREAM_PATHS),
            Mount("", app=pipeline),
        ],
        lifespan=_lifespan(gateway, admin),
        exception_handlers={HTTPException: json_http_error},  # Starlette's own 404/405 as JSON too
    )
    app.state.gateway = gateway
    return app


def _dashboard(settings: Settings, gateway_app: Callable[[], ASGIApp]) -> list[BaseRoute]:
    """The web dashboard (the top-level ``admin`` package) at ``KAIROS_DASHBOARD_PATH``. It talks
    to this gateway through the typed client over an in-process ASGI transport (no socket, no
    port to know), as it would to a remote one over HTTP. Imported only when enabled."""
    path = settings.served_dashboard_path
    if path is None:
        if settings.dashboard:
            logger.warning(
                "dashboard not served: KAIROS_ADMIN_PREFIX=%s takes its default path %s "
                "(set KAIROS_DASHBOARD_PATH to serve it elsewhere)",
                settings.admin_prefix,
                settings.dashboard_path,
            )
        return []
    import httpx

    from admin.app import create_app as create_dashboard
    from admin.session import Sessions

    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    dashboard = create_dashboard(
        "http://kairos.internal",
        transport=lambda: httpx.ASGITransport(app=gateway_app(), client=("127.0.0.1", 0)),
        sessions=Sessions(derived_from=token),
        local_only=token is None,
    )

    async def to_slash(request: Request) -> RedirectResponse:
        return RedirectResponse(path + "/", status_code=308)

    return [Route(path, to_slash, methods=["GET", "HEAD"]), Mount(path, app=dashboard)]


app = create_app()
