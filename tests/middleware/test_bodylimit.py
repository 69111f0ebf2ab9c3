"""BodyLimitMiddleware on its own in a Starlette app (global limit) and as a raw ASGI layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kairos.middleware.bodylimit import BodyLimitMiddleware
from kairos.middleware.exchange import ExchangeMiddleware
from kairos.middleware.routing import RouteMiddleware
from tests.asgi import AsgiClients
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


def too_large(response: httpx.Response, limit: int) -> bool:
    return (
        response.status_code == 413
        and response.json()["type"] == "payload_too_large"
        and str(limit) in response.json()["error"]
        and response.headers["connection"] == "close"
        and response.json()["request_id"] == response.headers["x-request-id"]
    )


def test_declared_length_over_the_limit_is_refused_before_the_app_runs(asgi_client: AsgiClients) -> None:
    calls: list[str] = []
    http = asgi_client(BodyLimitMiddleware(make_app(calls), max_body_size=10))
    assert too_large(http.post("/", content=b"x" * 11), 10)
    assert calls == []


def test_declared_length_at_the_limit_passes_intact(asgi_client: AsgiClients) -> None:
    calls: list[str] = []
    http = asgi_client(BodyLimitMiddleware(make_app(calls), max_body_size=10))
    assert http.post("/", content=b"0123456789").json() == {"bytes": 10, "head": "01234567"}
    assert http.post("/", content=b"").json()["bytes"] == 0
    assert calls == ["upload", "read", "upload", "read"]


def test_chunked_body_over_the_limit_is_counted_and_refused(asgi_client: AsgiClients) -> None:
    calls: list[str] = []
    http = asgi_client(BodyLimitMiddleware(make_app(calls), max_body_size=10))
    # Starlette's request.body() raises ClientDisconnect; the middleware answers 413 instead of a 500.
    assert too_large(http.post("/", content=chunks(b"12345", b"67890", b"!")), 10)
    assert calls == ["upload"]
    calls.clear()
    assert http.post("/", content=chunks(b"12345", b"67890")).json() == {"bytes": 10, "head": "12345678"}
    assert calls == ["upload", "read"]


def test_no_limit_means_unlimited_and_the_accessor_is_live(asgi_client: AsgiClients) -> None:
    calls: list[str] = []
    limit: list[int | None] = [None]
    http = asgi_client(BodyLimitMiddleware(make_app(calls), lambda: limit[0]))
    assert http.post("/", content=b"y" * 100_000).json()["bytes"] == 100_000
    limit[0] = 99_999
    assert too_large(http.post("/", content=b"y" * 100_000), 99_999)
    limit[0] = 0
    assert too_large(http.post("/", content=chunks(b"z")), 0)
    assert http.post("/", content=b"").status_code == 200


def test_an_app_answering_the_disconnect_is_replaced_by_the_413(asgi_client: AsgiClients) -> None:
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

    http = asgi_client(BodyLimitMiddleware(proxy_like, 4))
    assert too_large(http.post("/", content=chunks(b"ab", b"cd", b"ef")), 4)
    assert seen[-1] == "http.disconnect" and seen.count("http.request") == 2
    assert http.post("/", content=chunks(b"ab", b"cd")).status_code == 204


def test_after_the_response_started_the_upload_is_only_cut(asgi_client: AsgiClients) -> None:
    seen: list[str] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
        seen.append(message["type"])
        await send({"type": "http.response.body", "body": b"partial"})

    response = asgi_client(BodyLimitMiddleware(streaming, 3)).post("/", content=chunks(b"ab", b"cd", b"ef"))
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


def test_a_route_limit_beats_the_global_one(asgi_client: AsgiClients) -> None:
    calls: list[str] = []
    routers = [router("/", methods=("POST",)), router("/big", methods=("POST",), max_body_size=100)]
    table = build_table(routers)
    limited = BodyLimitMiddleware(make_app(calls), 10)
    http = asgi_client(ExchangeMiddleware(RouteMiddleware(limited, table=lambda: table)))
    refused = http.post("/", content=b"x" * 50)
    assert too_large(refused, 10)
    assert len(refused.json()["request_id"]) == 32
    # /big is the route's limit of 100 (the Starlette app has no /big, so 404 is what passing means).
    assert http.post("/big", content=b"x" * 50).status_code == 404
    assert too_large(http.post("/big", content=b"x" * 101), 100)
