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

from starlette.applications import Starlette
from starlette.routing import Mount, Route

from kairos.gateway import ConfigInput, Gateway
from kairos.health import HealthEndpoints
from kairos.pipeline import build_pipeline
from kairos.settings import Settings


def create_app(config: ConfigInput = None, settings: Settings | None = None) -> Starlette:
    """``config``: a GatewayConfig, a parsed dict, or a file path; None reads ``KAIROS_CONFIG_PATH``
    (falling back to the embedded default) at startup. An explicit config is validated now and
    raises ConfigError listing every problem."""
    settings = settings or Settings()
    gateway = Gateway(settings, config)
    health = HealthEndpoints(gateway)
    app = Starlette(
        routes=[
            Route("/health", health.health, methods=["GET"]),
            Route("/ready", health.ready, methods=["GET"]),
            Route("/live", health.live, methods=["GET"]),
            Mount("", app=build_pipeline(gateway)),
        ],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway
    return app


app = create_app()
