"""ExchangeMiddleware: opens the per-request Exchange (request id, client IP, start time).

Outermost in the gateway pipeline so every later concern, and every error it renders, has the
request id. A client-sent ``X-Request-ID`` is kept when it is sane (printable, at most 128 chars)
so a trace spans systems; otherwise a new one is made. It is also the pipeline's last guard: an
unexpected exception becomes a JSON 500 with the request id instead of a bare server error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import SCOPE_KEY, Exchange

logger = logging.getLogger("kairos")

T = TypeVar("T")

_MAX_ID = 128


def _acceptable_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_ID and all(0x21 <= byte <= 0x7E for byte in value)


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4 hex, at a third of its cost)."""
    return os.urandom(16).hex()


class ExchangeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        resolve_client_ip: Callable[[str, list[tuple[bytes, bytes]]], str] | None = None,
        before_first_request: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self._resolve = resolve_client_ip
        self._before_first_request = before_first_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._before_first_request is not None:
            await self._before_first_request()
            self._before_first_request = None
        headers = scope["headers"]
        request_id = None
        for name, value in headers:
            if name == b"x-request-id":
                if _acceptable_id(value):
                    request_id = value.decode("ascii")
                break
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        exchange = Exchange(
            request_id=request_id or new_request_id(),
            client_ip=self._resolve(peer, headers) if self._resolve is not None else peer,
            started=time.perf_counter(),
        )
        scope[SCOPE_KEY] = exchange
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            await _internal_error(scope, send, exc, exchange.request_id)


def as_accessor(policy: T | Callable[[], T | None] | None) -> Callable[[], T | None]:
    """A zero-argument accessor for a policy given as a value or as an accessor (the gateway passes
    accessors so a reload is seen at once; a standalone user passes the value)."""
    if callable(policy):
        return policy

    def value() -> T | None:
        return policy

    return value


def route_policy(scope: Scope, attribute: str, fallback: Any) -> Any:
    """The matched route's ``attribute`` when the route sets it, else the middleware's global policy.

    ``fallback`` is a value or a zero-argument callable (the gateway passes an accessor so a config
    reload is seen at once). Standalone, with no Exchange, only the fallback applies.
    """
    exchange = scope.get(SCOPE_KEY)
    route = exchange.route if exchange is not None else None
    value = getattr(route.config, attribute) if route is not None else None
    if value is None:
        value = fallback() if callable(fallback) else fallback
    return value


def request_id_and_ip(scope: Scope) -> tuple[str, str]:
    """The Exchange's request id and resolved client IP; standalone, a fresh id and the peer."""
    exchange = scope.get(SCOPE_KEY)
    if exchange is not None:
        return exchange.request_id, exchange.client_ip
    client = scope.get("client")
    return new_request_id(), (client[0] if client else "")


async def _internal_error(scope: Scope, send: Send, exc: Exception, request_id: str) -> None:
    """A JSON 500 if nothing was sent yet; otherwise re-raise so the server drops the connection
    (the only honest signal once a response has started)."""
    try:
        await reject(scope, send, "internal", "Internal gateway error", request_id)
    except Exception:
        raise exc from None
    logger.error("unhandled error in the pipeline (%s)", request_id, exc_info=exc)


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked): the middlewares
    that buffer a body to replay it (retry, AI routing) skip those that have none."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bool(value != b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def read_prefix(scope: Scope, receive: Receive, limit: int) -> tuple[list[bytes], bool] | None:
    """The request body's first messages, read until more than ``limit`` bytes came or the body
    ended: ``(chunks, complete)``, or None when the client disconnected. With ``replaying`` this is
    how a layer looks at a body (retry's replay buffer, AI routing's preview) and still hands the
    whole of it on."""
    if not has_body(scope):
        return [], True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        complete = not message.get("more_body", False)
        if complete or size > limit:
            return chunks, complete


def replaying(chunks: list[bytes], complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered ``chunks`` first (as one message), then the client's
    channel: the rest of the body when it was not ``complete``, or the eventual disconnect."""
    if not chunks:
        return receive
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            body = b"".join(pending)
            pending.clear()
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay
