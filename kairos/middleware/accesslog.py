"""AccessLogMiddleware: one structured access-log line per request, written off the hot path.

Placed just inside ``MetricsMiddleware``, so it sees every request the gateway answers (404/405
from routing, 401/403, 429, the last guard's 500, proxied responses). Per HTTP request, when the
response ends, it builds one small dict and logs it through the ``kairos.access`` logger:

``request_id``, ``method``, ``path``, ``route`` (the route's template or null), ``backend`` (the
last attempt's backend key or null), ``status``, ``source`` (``gateway`` when the response start
carries ``errors.GENERATED``, else ``upstream``), ``duration_ms``, ``upstream_ms`` (or null),
``client_ip``, ``bytes_in`` (request body bytes the gateway read), ``bytes_out`` (response body
bytes sent, after compression), ``user_agent``; on AI routes also ``ai_backend`` (the index AI
routing chose, or null) and ``ai_outcome`` (text: ``ai=<index|->/<outcome>``). The line's ``ts``
is the time it was logged (the end of the response), like nginx's ``$time_local``.

``path`` is the raw (percent-encoded) path **without the query string**: queries often carry
secrets (``?token=``, ``?api_key=``, signed URLs) and access logs are kept and shipped widely.
Percent-encoded, it cannot carry a newline into a text log either.

WebSocket scopes log one line per upgrade outcome (101 when accepted, else the refusal's status),
as soon as it is known, like the metrics.

Off the hot path's critical section: the request only appends ``(time(), fields)`` to a list
(``AccessLog.put``); every 100 ms the ``AccessLog`` owned by the Gateway formats the batch (JSON
when ``KAIROS_LOG_FORMAT=json``, one compact text line otherwise) and writes it to stderr from a
thread in one call (kairos/observability/accesslog.py). ``KAIROS_ACCESS_LOG=false`` leaves the
middleware out of the pipeline entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, unanswered, watch_upgrade
from kairos.exchange import SCOPE_KEY
from kairos.observability.accesslog import Entry

_MAX_USER_AGENT = 512


def _user_agent(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent: str = value[:_MAX_USER_AGENT].decode("latin-1")
            return agent
    return None


def _path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw:
        path: str = raw.split(b"?", 1)[0].decode("latin-1")
        return path
    return str(scope.get("path", ""))


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, emit: Callable[[Entry], None]) -> None:
        self.app = app
        self.emit = emit  # AccessLog.put

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        status = 0
        generated = False
        bytes_in = 0
        bytes_out = 0

        async def receive_counted() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def send_watched(message: Message) -> None:
            nonlocal status, generated, bytes_out
            kind = message["type"]
            if kind == "http.response.body":
                bytes_out += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                generated = bool(message.get(GENERATED))
            await send(message)

        failed = True
        try:
            await self.app(scope, receive_counted, send_watched)
            failed = False
        finally:
            elapsed = perf_counter() - started
            if not status:
                status, generated = unanswered(failed)
            self._emit(scope, scope["method"], status, generated, elapsed, bytes_in, bytes_out)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()

        def outcome(code: int, generated: bool) -> None:
            self._emit(scope, "GET", code, generated, perf_counter() - started, 0, 0)

        await watch_upgrade(self.app, scope, receive, send, outcome)

    def _emit(
        self,
        scope: Scope,
        method: str,
        status: int,
        generated: bool,
        elapsed: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        exchange = scope.get(SCOPE_KEY)
        if exchange is not None:
            route = exchange.route
            backend = exchange.backend
            upstream = exchange.upstream_seconds
            request_id: str | None = exchange.request_id
            client_ip: str | None = exchange.client_ip
        else:
            route = backend = upstream = request_id = None
            client = scope.get("client")
            client_ip = client[0] if client else None
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "path": _path(scope),
            "route": route.name if route is not None else None,
            "backend": backend.key if backend is not None else None,
            "status": status,
            "source": "gateway" if generated else "upstream",
            "duration_ms": elapsed * 1000.0,
            "upstream_ms": upstream * 1000.0 if upstream is not None else None,
            "client_ip": client_ip,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "user_agent": _user_agent(scope),
        }
        if exchange is not None and exchange.ai_outcome is not None:  # AI routes only
            fields["ai_backend"] = exchange.preferred_backend
            fields["ai_outcome"] = exchange.ai_outcome
        # One tuple handed to the queue; the record, formatting and writing happen on the listener's thread.
        self.emit((time(), fields))
