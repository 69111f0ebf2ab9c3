"""BodyLimitMiddleware: ``max_body_size`` bytes per request body, top level and per route.

A route's ``max_body_size`` wins over the global one; ``None`` (the default) means unlimited.
Standalone, the constructor's limit (a value or an accessor) applies. WebSocket scopes pass through.

- A declared ``Content-Length`` above the limit is answered 413 ``payload_too_large`` at once,
  before anything reads the body (so no ``100 Continue`` is sent and no upstream is contacted).
- A declared ``Content-Length`` within the limit needs nothing more: the server's HTTP parser
  delivers exactly that many bytes. Such requests, and HTTP/1.x requests with neither
  ``Content-Length`` nor ``Transfer-Encoding`` (no body), pass through untouched.
- Otherwise (chunked uploads, HTTP/2 bodies of unknown length) ``receive`` is wrapped and the bytes
  counted while they stream. When the count crosses the limit the wrapper answers
  ``http.disconnect`` from then on: every ASGI app takes that as "stop reading, nobody is
  listening", and the HTTP proxy in particular aborts the upstream request it was streaming to and
  returns without answering (its client-left path: no 502, no warning logged). The inner app's own
  answer to the disconnect, if it tries one (or an exception such as Starlette's
  ``ClientDisconnect``), is dropped, and this middleware sends the 413 itself, with the Exchange's
  request id. If the response had already started there is no way left to say 413; the
  disconnect still stops the upload.

413s carry ``Connection: close``: the rest of an unread body is not worth reading to keep the
connection alive.

Why not Starlette's ``RequestBodyLimitMiddleware`` (starlette 1.x ``middleware/body_limit.py``): it
raises from ``receive`` (which the proxy, mid-upload, would turn into a 502 from the upstream engine
and a logged warning), checks an oversized ``Content-Length`` only once the app reads the body or
starts its response (the proxy would already have opened the upstream request), answers in plain
text rather than the gateway's JSON error, takes one fixed limit per instance (no per-route limit
or live reload), and wraps ``receive``/``send`` for every request even when ``Content-Length``
already settles it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import reject
from kairos.request import as_accessor, request_id_and_ip, route_policy

if TYPE_CHECKING:
    from kairos.routing.route import Route

LimitPolicy = int | Callable[[], int | None] | None

_CLOSE = [(b"connection", b"close")]


def _max_body_size(route: Route) -> int | None:
    return route.config.max_body_size


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_size: LimitPolicy = None) -> None:
        self.app = app
        self._global = as_accessor(max_body_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = route_policy(scope, _max_body_size, self._global)
        if limit is None:
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and not chunked:
            try:
                declared = int(length)
            except ValueError:
                declared = -1  # the server would have refused it; let the app see it
            if declared > limit:
                await _too_large(scope, send, limit)
                return
            await self.app(scope, receive, send)
            return
        if not chunked and scope.get("http_version", "1.1") in ("1.1", "1.0"):
            await self.app(scope, receive, send)  # HTTP/1.x with no length and no chunking: no body
            return
        await _Counted(self.app, limit, receive, send).run(scope)


class _Counted:
    """One request whose body is counted as it streams."""

    __slots__ = ("app", "exceeded", "limit", "receive", "received", "send", "started")

    def __init__(self, app: ASGIApp, limit: int, receive: Receive, send: Send) -> None:
        self.app = app
        self.limit = limit
        self.receive = receive
        self.send = send
        self.received = 0
        self.exceeded = False
        self.started = False

    async def run(self, scope: Scope) -> None:
        try:
            await self.app(scope, self.counted_receive, self.guarded_send)
        except Exception:
            if not self.exceeded or self.started:
                raise
            # The app failed because it was told the client left: the 413 below is the answer.
        if self.exceeded and not self.started:
            self.started = True
            await _too_large(scope, self.send, self.limit)

    async def counted_receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(self, message: Message) -> None:
        if self.exceeded and not self.started:
            return  # the app's answer to the disconnect we made up; the 413 replaces it
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    request_id, _ = request_id_and_ip(scope)
    await reject(
        scope,
        send,
        "payload_too_large",
        f"Request body larger than the limit of {limit} bytes",
        request_id,
        headers=_CLOSE,
    )
