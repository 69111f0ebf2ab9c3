"""The gateway mounted in a parent Starlette app, served by a real uvicorn in a subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.asgi import AsgiClients
from tests.processes import ROOT, Server, backend, free_port, route, server_process

PARENT_APP = '''
"""A parent app mounting Kairos at /gw (and at /café), as a user would write it."""

import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from kairos.app import create_app

port = int(os.environ["UPSTREAM_PORT"])
upstream = [{"host": "http://127.0.0.1", "port": port}]
gw = create_app(
    {
        "version": 1,
        "routers": [
            {"external_path": "/cats/{id}", "internal_path": "/echo/cats-internal/{id}",
             "methods": ["GET"], "backends": upstream},
            {"external_path": "/", "internal_path": "/echo/gateway-root", "methods": ["GET"],
             "backends": upstream},
        ],
    }
)


@asynccontextmanager
async def parent_lifespan(app):
    async with gw.router.lifespan_context(gw):
        yield


async def hello(request):
    return PlainTextResponse("parent says hello")


async def gateway_state(request):
    return JSONResponse({"started": gw.state.gateway._started})


app = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/gateway-state", gateway_state),
        Mount("/gw", app=gw),
        Mount("/café", app=gw),
    ],
    lifespan=parent_lifespan if os.environ.get("DRIVE_LIFESPAN") == "1" else None,
)
'''


@contextmanager
def parent_server(tmp_path: Path, upstream: Server, drive_lifespan: bool) -> Iterator[Server]:
    module_dir = tmp_path / f"parent-{'lifespan' if drive_lifespan else 'lazy'}"
    module_dir.mkdir()
    (module_dir / "parent_app.py").write_text(PARENT_APP)
    port = free_port()
    log = module_dir / "uvicorn.log"
    env = {
        **os.environ,
        "UPSTREAM_PORT": str(upstream.port),
        "DRIVE_LIFESPAN": "1" if drive_lifespan else "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = [
        "-m",
        "uvicorn",
        "parent_app:app",
        "--app-dir",
        str(module_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    with server_process(args, port, log, env) as server:
        yield server


@pytest.fixture(scope="module")
def driven(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with parent_server(module_tmp, upstream, drive_lifespan=True) as server:
        yield server


@pytest.fixture(scope="module")
def lazy(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with parent_server(module_tmp, upstream, drive_lifespan=False) as server:
        yield server


def test_parent_lifespan_starts_the_gateway_before_any_request(driven: Server) -> None:
    assert httpx.get(f"{driven.url}/gateway-state", timeout=10).json() == {"started": True}


def test_mounted_route_strips_the_prefix_and_substitutes_params(driven: Server) -> None:
    with httpx.Client(base_url=driven.url, timeout=10) as client:
        response = client.get("/gw/cats/1", params={"q": "x"})
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["raw_path"] == "/echo/cats-internal/1?q=x"
        assert data["path"] == "/echo/cats-internal/1"
        assert data["query_string"] == "q=x"
        assert "x-request-id" in response.headers

        data = client.get("/gw/cats/a%2Fadmin").json()
        assert data["raw_path"] == "/echo/cats-internal/a%2Fadmin"
        assert client.get("/gw/cats/..%2Fadmin").status_code == 400  # a '..' segment once decoded

        assert client.get("/gw/").json()["raw_path"] == "/echo/gateway-root"
        # Starlette's Mount redirects /gw to /gw/
        response = client.get("/gw", follow_redirects=True)
        assert response.json()["raw_path"] == "/echo/gateway-root"

        # a decoded mount prefix (root_path "/café") against the raw path "/caf%C3%A9/..."
        assert client.get("/caf%C3%A9/cats/2").json()["raw_path"] == "/echo/cats-internal/2"


def test_mounted_errors_name_the_path_below_the_prefix(driven: Server) -> None:
    with httpx.Client(base_url=driven.url, timeout=10) as client:
        response = client.get("/gw/dogs/1")
        assert response.status_code == 404
        body = response.json()
        assert body["type"] == "route_not_found"
        assert body["error"].endswith("/dogs/1") and "/gw" not in body["error"]
        response = client.post("/gw/cats/1")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


def test_mounted_health_and_parent_routes(driven: Server) -> None:
    with httpx.Client(base_url=driven.url, timeout=10) as client:
        health = client.get("/gw/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        ready = client.get("/gw/ready")
        assert ready.status_code == 200 and ready.json()["routes"] == 2
        parent = client.get("/hello")
        assert parent.status_code == 200 and parent.text == "parent says hello"
        assert client.get("/not-mounted").status_code == 404  # the parent's own 404, not the gateway's
        assert "x-request-id" not in client.get("/not-mounted").headers


def test_without_the_parent_lifespan_the_gateway_starts_on_the_first_request(lazy: Server) -> None:
    with httpx.Client(base_url=lazy.url, timeout=10) as client:
        assert client.get("/gateway-state").json() == {"started": False}
        assert client.get("/hello").text == "parent says hello"
        assert client.get("/gw/health").json()["status"] == "healthy"  # health needs no upstream pool
        assert client.get("/gateway-state").json() == {"started": False}

        response = client.get("/gw/cats/1")
        assert response.status_code == 200, response.text
        assert response.json()["raw_path"] == "/echo/cats-internal/1"
        assert client.get("/gateway-state").json() == {"started": True}
        assert client.get("/gw/cats/2").json()["raw_path"] == "/echo/cats-internal/2"


def test_user_middleware_added_to_the_gateway_sees_proxied_traffic(
    tmp_path: Path, upstream: Server, asgi_client: AsgiClients
) -> None:
    """The fast path that skips Starlette's layers steps aside once a user adds middleware."""
    import asyncio

    from kairos.app import create_app

    seen: list[str] = []

    class Recorder:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    config = {"version": 1, "routers": [route("/who", "/whoami", [backend(upstream)])]}
    gateway = create_app(config)
    gateway.add_middleware(Recorder)

    async def exercise() -> None:
        async with asgi_client(gateway, client=("127.0.0.1", 1234)).async_client() as client:
            assert (await client.get("/who")).json()["server"] == "a"
            assert (await client.get("/health")).status_code == 200
        await gateway.state.gateway.shutdown()

    asyncio.run(exercise())
    assert seen == ["/who", "/health"]
