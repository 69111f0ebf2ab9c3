"""Kairos is an ASGI app, not a uvicorn app: the same checks under hypercorn."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.processes import Server, backend, free_port, route, server_process


@pytest.fixture(scope="module")
def hypercorn_gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {
        "version": 1,
        "routers": [
            route("/api/{*rest}", "/echo/{*rest}", [backend(upstream)], ("GET", "POST")),
            route("/chat", "/ws", [backend(upstream, scheme="ws")], protocol="websocket"),
            route("/dead", "/ws", [backend(free_port(), scheme="ws")], protocol="websocket"),
        ],
    }
    path = module_tmp / "hypercorn-config.json"
    path.write_text(json.dumps(config))
    port = free_port()
    env = {**os.environ, "KAIROS_CONFIG_PATH": str(path)}
    args = ["-m", "hypercorn", "kairos.app:app", "--bind", f"127.0.0.1:{port}"]
    with server_process(args, port, module_tmp / "hypercorn.log", env) as server:
        yield server


def test_http_proxying_errors_and_health_under_hypercorn(hypercorn_gateway: Server) -> None:
    with httpx.Client(base_url=hypercorn_gateway.url, timeout=10) as client:
        assert client.get("/ready").status_code == 200
        echoed = client.get("/api/a/b?x=1").json()
        assert echoed["raw_path"] == "/echo/a/b?x=1"
        body = bytes(range(256)) * 2048
        assert client.post("/api/upload", content=body).json()["body_bytes"] == len(body)
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.json()["type"] == "route_not_found"


def test_websocket_proxying_under_hypercorn(hypercorn_gateway: Server) -> None:
    ws_url = hypercorn_gateway.url.replace("http://", "ws://")

    async def exercise() -> tuple[str, int | None, int]:
        async with connect(f"{ws_url}/chat") as socket:
            await socket.send("hello")
            echoed = await socket.recv()
            await socket.send("close:4005:bye")
            with pytest.raises(ConnectionClosed):
                await socket.recv()
            code = socket.close_code
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{ws_url}/dead"):
                pass
        return str(echoed), code, refused.value.response.status_code

    echoed, code, refused_status = asyncio.run(asyncio.wait_for(exercise(), 20))
    assert echoed == "hello"
    assert code == 4005
    assert refused_status == 502  # refused with a real HTTP response before accept
