"""Kairos mounted inside another Starlette (or FastAPI) app, its lifespan driven by the parent.

    KAIROS_CONFIG_PATH=examples/config.json uvicorn examples.mount_in_starlette:app --no-proxy-headers

Then ``/gw/demo/hello`` is routed as ``/demo/hello`` and ``/gw/health`` is the gateway's health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from kairos.app import create_app

gateway = create_app()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with gateway.router.lifespan_context(gateway):
        yield


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the parent app; the gateway lives under /gw")


app = Starlette(routes=[Route("/", home), Mount("/gw", app=gateway)], lifespan=lifespan)
