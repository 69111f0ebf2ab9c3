"""BodyLimitMiddleware on its own in a Starlette app (global limit) and as a raw ASGI layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kairos.middleware.bodylimit import BodyLimitMiddleware
from kairos.middleware.context import ExchangeMiddleware
from kairos.middleware.routing import RouteMiddleware
from tests.routing.util import build_table, router


def make_app(calls: list[str]) -> Starlette:
    async def upload(request: Request) -> JSONResponse:
        calls.append("upload")
        body = await request.body()  # raises ClientDisconnect when the limit trips
        calls.append("read")
        return JSONResponse({"bytes": len(body), "head": body[:8].decode()})

    return Starlette(routes=[Route("/", upload, methods=["POST"])])


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def post(app: Any, content: Any, path: str = "/") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(path, content=content)

    return asyncio.run(go())


def too_large(response: httpx.Response, limit: int) -> bool:
    return (
        response.status_code == 413
        and response.json()["type"] == "payload_too_large"
        and str(limit) in response.json()["error"]
        and response.headers["connection"] == "close"
        and response.json()["request_id"] == response.headers["x-request-id"]
    )


def test_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    calls: list[str] = []
    app = BodyLimitMiddleware(make_app(calls), max_body_size=10)
    assert too_large(post(app, b"x" * 11), 10)
    assert calls == []


def test_declared_length_at_the_limit_passes_intact() -> None:
    calls: list[str] = []
    app = BodyLimitMiddleware(make_app(calls), max_body_size=10)
    assert post(app, b"0123456789").json() == {"bytes": 10, "head": "01234567"}
    assert post(app, b"").json()["bytes"] == 0
    assert calls == ["upload", "read", "upload", "read"]


def test_chunked_body_over_the_limit_is_counted_and_refused() -> None:
    calls: list[str] = []
    app = BodyLimitMiddleware(make_app(calls), max_body_size=10)
    # Starlette's request.body() raises ClientDisconnect; the middleware answers 413 instead of a 500.
    assert too_large(post(app, chunks(b"12345", b"67890", b"!")), 10)
    assert calls == ["upload"]
    calls.clear()
    assert post(app, chunks(b"12345", b"67890")).json() == {"bytes": 10, "head": "12345678"}
    assert calls == ["upload", "read"]


def test_no_limit_means_unlimited_and_the_accessor_is_live() -> None:
    calls: list[str] = []
    limit: list[int | None] = [None]
    app = BodyLimitMiddleware(make_app(calls), lambda: limit[0])
    assert post(app, b"y" * 100_000).json()["bytes"] == 100_000
    limit[0] = 99_999
    assert too_large(post(app, b"y" * 100_000), 99_999)
    limit[0] = 0
    assert too_large(post(app, chunks(b"z")), 0)
    assert post(app, b"").status_code == 200


def test_an_app_answering_the_disconnect_is_replaced_by_the_413() -> None:
    seen: list[str] = []

    async def proxy_like(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                # e.g. an app that answers anyway: must never reach the client
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b"gone"})
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = BodyLimitMiddleware(proxy_like, 4)
    assert too_large(post(app, chunks(b"ab", b"cd", b"ef")), 4)
    assert seen[-1] == "http.disconnect" and seen.count("http.request") == 2
    assert post(app, chunks(b"ab", b"cd")).status_code == 204


def test_after_the_response_started_the_upload_is_only_cut() -> None:
    seen: list[str] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
        seen.append(message["type"])
        await send({"type": "http.response.body", "body": b"partial"})

    response = post(BodyLimitMiddleware(streaming, 3), chunks(b"ab", b"cd", b"ef"))
    assert response.status_code == 200 and response.text == "partial"
    assert seen == ["http.disconnect"]


def test_bodies_of_known_length_and_bodyless_requests_are_not_wrapped() -> None:
    received: list[Receive] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(receive)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        raise AssertionError(message)

    app = BodyLimitMiddleware(inner, 10)
    base = {"type": "http", "method": "POST", "path": "/", "http_version": "1.1"}
    asyncio.run(app({**base, "headers": [(b"content-length", b"10")]}, receive, send))
    asyncio.run(app({**base, "headers": []}, receive, send))
    asyncio.run(app({**base, "http_version": "2", "headers": []}, receive, send))  # h2: length unknown
    asyncio.run(app({**base, "headers": [(b"transfer-encoding", b"chunked")]}, receive, send))
    assert received[0] is receive and received[1] is receive
    assert received[2] is not receive and received[3] is not receive


def test_websockets_pass_through() -> None:
    seen: list[tuple[Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        raise AssertionError(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"content-length", b"999")]}
    asyncio.run(BodyLimitMiddleware(inner, 1)(scope, receive, send))
    assert seen == [(receive, send)]


def test_a_route_limit_beats_the_global_one() -> None:
    calls: list[str] = []
    routers = [router("/", methods=("POST",)), router("/big", methods=("POST",), max_body_size=100)]
    table = build_table(routers)
    limited = BodyLimitMiddleware(make_app(calls), 10)
    app = ExchangeMiddleware(RouteMiddleware(limited, table=lambda: table))
    refused = post(app, b"x" * 50)
    assert too_large(refused, 10)
    assert len(refused.json()["request_id"]) == 32
    # /big is the route's limit of 100 (the Starlette app has no /big, so 404 is what passing means).
    assert post(app, b"x" * 50, "/big").status_code == 404
    assert too_large(post(app, b"x" * 101, "/big"), 100)
