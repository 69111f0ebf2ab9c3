"""AccessLogMiddleware: one structured access-log line per request, written off the hot path.

Placed just inside ``MetricsMiddleware``, so it sees every request the gateway answers (404/405
from routing, 401/403, 429, the last guard's 500, proxied responses). Per HTTP request, when the
response ends, it builds one small dict and logs it through the ``kairos.access`` logger:

``request_id``, ``method``, ``path``, ``route`` (the route's template or null), ``backend`` (the
last attempt's backend key or null), ``status``, ``source`` (``gateway`` when the response start
carries ``errors.GENERATED``, else ``upstream``), ``duration_ms``, ``upstream_ms`` (or null),
``client_ip``, ``bytes_in`` (request body bytes the gateway read), ``bytes_out`` (response body
bytes sent, after compression), ``user_agent``. The line's ``ts`` is the time it was logged (the
end of the response), like nginx's ``$time_local``.

``path`` is the raw (percent-encoded) path **without the query string**: queries often carry
secrets (``?token=``, ``?api_key=``, signed URLs) and access logs are kept and shipped widely.
Percent-encoded, it cannot carry a newline into a text log either.

WebSocket scopes log one line per upgrade outcome (101 when accepted, else the refusal's status),
as soon as it is known, like the metrics.

Off the hot path's critical section: the request only puts ``(time(), fields)`` on a queue
(``AccessLog.put``); a ``QueueListener`` thread, started and stopped with the Gateway
(``AccessLog``), builds the ``LogRecord``, hands it to the ``kairos.access`` logger's handlers, whose
own formats it (JSON when ``KAIROS_LOG_FORMAT=json``, one compact text line otherwise) and writes it
to stderr. Going through ``logger.info`` + a ``QueueHandler`` on the request instead cost ~25 µs
more per request here (the ``LogRecord``: caller lookup, pid, thread and process names).
``KAIROS_ACCESS_LOG=false`` leaves the middleware out of the pipeline entirely.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter, time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, WEBSOCKET_REFUSED, unanswered, websocket_outcome
from kairos.exchange import SCOPE_KEY

LOGGER_NAME = "kairos.access"
_MAX_USER_AGENT = 512

# The record's message for handlers other than ours (a host application's): a readable line.
TEXT_TEMPLATE = (
    '%(client_ip)s %(request_id)s "%(method)s %(path)s" %(status)s %(source)s '
    "%(duration_ms).3fms upstream=%(upstream_ms)s route=%(route)s backend=%(backend)s "
    "in=%(bytes_in)s out=%(bytes_out)s ua=%(user_agent)r"
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    args = record.args
    return args if isinstance(args, dict) else {"message": record.getMessage()}


_ROUNDED = ("duration_ms", "upstream_ms")  # to the microsecond


class AccessJsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` then the access fields (durations rounded to µs)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            **fields,
        }
        for key in _ROUNDED:
            value = entry.get(key)
            if isinstance(value, float):
                entry[key] = round(value, 3)
        return json.dumps(entry)


class AccessTextFormatter(logging.Formatter):
    """``<ts> <client_ip> <request_id> "<method> <path>" <status> <source> <ms>ms upstream=<ms|-> …``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if "request_id" not in fields:
            return f"{self.formatTime(record)} {record.getMessage()}"
        shown = {key: ("-" if value is None else value) for key, value in fields.items()}
        upstream = shown.get("upstream_ms")
        shown["upstream_ms"] = f"{upstream:.3f}ms" if isinstance(upstream, float) else upstream
        return f"{self.formatTime(record)} " + (TEXT_TEMPLATE % shown).replace("\n", "\\n")


Entry = tuple[float, dict[str, Any]]  # (time.time() at the end of the response, fields)


class _AccessListener(logging.handlers.QueueListener):
    """Turns each queued entry into a ``LogRecord`` on the listener's thread: building a record
    (caller lookup, pid, thread and process names) costs more than the rest of the request's
    logging, so the request only enqueues a tuple."""

    def prepare(self, record: Any) -> logging.LogRecord:
        created, fields = record
        entry = _LOGGER.makeRecord(LOGGER_NAME, logging.INFO, "(access)", 0, TEXT_TEMPLATE, (fields,), None)
        entry.created = created
        entry.msecs = (created - int(created)) * 1000
        return entry


class _ToLogger(logging.Handler):
    """The listener's one handler: hands the record to the ``kairos.access`` logger's handlers."""

    def handle(self, record: logging.LogRecord) -> bool:
        if _LOGGER.isEnabledFor(logging.INFO):
            _LOGGER.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        _LOGGER.handle(record)


_LOGGER = logging.getLogger(LOGGER_NAME)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (a test runner swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class AccessLog:
    """The ``kairos.access`` queue, its listener thread and its output handler, owned by the Gateway:
    ``start()`` in startup, ``stop()`` in shutdown. ``put`` is all a request does."""

    def __init__(self, fmt: str, stream: Any = None) -> None:
        self.queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self.output = logging.StreamHandler(stream if stream is not None else _CurrentStderr())
        self.output.setFormatter(AccessJsonFormatter() if fmt == "json" else AccessTextFormatter())
        self.listener = _AccessListener(self.queue, _ToLogger())
        self.running = False

    def put(self, entry: Entry) -> None:
        if self.running:  # stopped: nobody would drain the queue
            self.queue.put(entry)

    def start(self) -> None:
        if self.running:
            return
        _LOGGER.setLevel(logging.INFO)  # the access log is switched by KAIROS_ACCESS_LOG, not the level
        _LOGGER.propagate = False
        _LOGGER.addHandler(self.output)
        self.listener.start()
        self.running = True

    def stop(self) -> None:
        """Stop taking entries, let the listener write what is queued, then detach."""
        if not self.running:
            return
        self.running = False
        self.listener.stop()
        _LOGGER.removeHandler(self.output)


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
        logged = False

        def outcome(code: int, generated: bool) -> None:
            nonlocal logged
            logged = True
            self._emit(scope, "GET", code, generated, perf_counter() - started, 0, 0)

        async def send_watched(message: Message) -> None:
            if not logged:
                settled = websocket_outcome(message)
                if settled is not None:
                    outcome(*settled)
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        finally:
            if not logged:
                outcome(*WEBSOCKET_REFUSED)

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
        # One tuple handed to the queue; the record, formatting and writing happen on the listener's thread.
        self.emit(
            (
                time(),
                {
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
                },
            )
        )
