"""ExchangeMiddleware: request ids, client IP resolution, and the pipeline's last-resort 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from kairos.exchange import get_exchange
from kairos.middleware.exchange import ExchangeMiddleware


def http_scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": headers or [], "client": ("10.1.2.3", 5)}


def run(app: Any, scope: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_generates_or_keeps_request_ids_and_resolves_the_client() -> None:
    seen: list[tuple[str, str]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        seen.append((exchange.request_id, exchange.client_ip))

    app = ExchangeMiddleware(inner, resolve_client_ip=lambda peer, headers: f"resolved:{peer}")
    run(app, http_scope())
    run(app, http_scope([(b"x-request-id", b"abc-123")]))
    run(app, http_scope([(b"x-request-id", b"has space")]))
    run(app, http_scope([(b"x-request-id", b"x" * 129)]))
    (generated, ip), (kept, _), (replaced, _), (too_long, _) = seen
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert ip == "resolved:10.1.2.3"
    assert kept == "abc-123"
    assert replaced != "has space" and len(replaced) == 32
    assert len(too_long) == 32


def test_unexpected_exception_becomes_a_json_500_with_the_request_id() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("bug")

    sent = run(ExchangeMiddleware(broken), http_scope([(b"x-request-id", b"req-9")]))
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["type"] == "internal" and body["request_id"] == "req-9"
    assert "bug" not in body["error"]  # internals are logged, not shown


def test_exception_after_the_response_started_is_re_raised() -> None:
    class Started(Exception):
        pass

    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise Started

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        if sent and message["type"] == "http.response.start":
            raise RuntimeError("response already started")  # what ASGI servers do
        sent.append(message)

    with pytest.raises(Started):
        asyncio.run(ExchangeMiddleware(half)(http_scope(), receive, send))


def test_lifespan_passes_through_untouched() -> None:
    calls: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        assert "kairos" not in scope

    run(ExchangeMiddleware(inner), {"type": "lifespan"})
    assert calls == ["lifespan"]
