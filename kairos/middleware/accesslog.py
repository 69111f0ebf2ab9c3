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
thread in one call. ``KAIROS_ACCESS_LOG=false`` leaves the middleware out of the pipeline entirely.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter, time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, unanswered, watch_upgrade
from kairos.exchange import SCOPE_KEY

LOGGER_NAME = "kairos.access"  # the name in each JSON line (kept from the logging-based writer)
_MAX_USER_AGENT = 512
FLUSH_SECONDS = 0.1  # a line reaches the output at most this long after its response ended
MAX_PENDING = 100_000  # lines held while the output is slower than the traffic; more are dropped

TEXT_TEMPLATE = (
    '%(client_ip)s %(request_id)s "%(method)s %(path)s" %(status)s %(source)s '
    "%(duration_ms).3fms upstream=%(upstream_ms)s route=%(route)s backend=%(backend)s "
    "in=%(bytes_in)s out=%(bytes_out)s ua=%(user_agent)r"
)

_ROUNDED = ("duration_ms", "upstream_ms")  # to the microsecond

Entry = tuple[float, dict[str, Any]]  # (time.time() at the end of the response, fields)


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def json_line(entry: Entry) -> str:
    """One JSON object per line: ``ts``, ``logger`` then the access fields (durations to the µs)."""
    created, fields = entry
    line: dict[str, Any] = {"ts": _timestamp(created), "logger": LOGGER_NAME, **fields}
    for key in _ROUNDED:
        value = line.get(key)
        if isinstance(value, float):
            line[key] = round(value, 3)
    return json.dumps(line) + "\n"


def text_line(entry: Entry) -> str:
    """``<ts> <client_ip> <request_id> "<method> <path>" <status> <source> <ms>ms upstream=<ms|-> …``"""
    created, fields = entry
    shown = {key: ("-" if value is None else value) for key, value in fields.items()}
    upstream = shown.get("upstream_ms")
    shown["upstream_ms"] = f"{upstream:.3f}ms" if isinstance(upstream, float) else upstream
    line = TEXT_TEMPLATE % shown
    if "ai_outcome" in shown:  # AI routes: the chosen backend index (or -) and the outcome
        line += f" ai={shown['ai_backend']}/{shown['ai_outcome']}"
    return f"{_timestamp(created)} " + line.replace("\n", "\\n") + "\n"


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a batch is written (a test runner swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class AccessLog:
    """Pending access lines and their writer, owned by the Gateway: ``start()`` in startup,
    ``stop()`` in shutdown; ``put`` is all a request does (one list append).

    Every ``FLUSH_SECONDS`` a task on the event loop formats what is pending and hands the batch
    to a thread for one ``write`` + ``flush``, so a slow stderr (a full pipe) never blocks the loop.
    The first version went through ``logging`` (a ``QueueListener`` thread building a
    ``LogRecord`` per line, a flush per line) and cost ~60 µs of CPU per request here, mostly in
    the record, the handler locks and the thread hand-offs on every line; batching cut that to the
    formatting itself (see the README's access log figures). Lines beyond ``MAX_PENDING`` are
    dropped and counted (``dropped``), so memory stays bounded when the output cannot keep up.
    """

    def __init__(self, fmt: str, stream: Any = None) -> None:
        self.render = json_line if fmt == "json" else text_line
        self.stream: Any = stream if stream is not None else _CurrentStderr()
        self.pending: list[Entry] = []
        self.dropped = 0
        self.written = 0
        self.running = False
        self._task: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()  # the last synchronous flush vs a batch still in a thread

    def put(self, entry: Entry) -> None:
        if not self.running:  # stopped: nobody would write it
            return
        if len(self.pending) < MAX_PENDING:
            self.pending.append(entry)
        else:
            self.dropped += 1

    def start(self) -> None:
        """Start taking lines; the periodic writer runs when there is an event loop (always under
        an ASGI server); without one, lines are written by ``stop()``."""
        if self.running:
            return
        self.running = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._flush_periodically(), name="kairos-access-log")

    def stop(self) -> None:
        """Stop taking lines and write every pending one now."""
        if not self.running:
            return
        self.running = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._write(self._take())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            text = self._take()
            if text:
                await asyncio.to_thread(self._write, text)

    def _take(self) -> str:
        entries, self.pending = self.pending, []
        self.written += len(entries)
        return "".join(map(self.render, entries))

    def _write(self, text: str) -> None:
        if not text:
            return
        with self._write_lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr must not break the gateway
                pass


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
