"""The connection guard `kairos run` puts in front of the app: what the ASGI server decides.

Some abuse never reaches an ASGI app: a client that sends its request head one byte a second, or
never sends one, holds a connection (and a file descriptor) for as long as it likes under bare
uvicorn, which has no header timeout; 300 such sockets exhaust a normal descriptor limit. An 8 MB
header is buffered whole by the parser before any app sees it. nginx (``client_header_timeout``,
``large_client_header_buffers``, ``limit_conn``) and Envoy (``request_headers_timeout``,
``max_request_headers_kb``, overload manager) refuse these at the connection. This module does the
same for uvicorn's httptools protocol, which `kairos run` keeps (see docs/operating.md for
the measurements against hypercorn and granian that chose it):

- **Head timeout** (``KAIROS_HEADER_TIMEOUT``, 10 s): a connection whose request head is not complete
  this long after it opened, or after the first byte of a request following an idle keep-alive
  period, is closed (with a 408 if part of a head had arrived). One sweep per second over the
  server's connections does it, so a request pays for no timer.
- **Head size and count** (``KAIROS_MAX_HEADER_BYTES`` 64 KiB, ``KAIROS_MAX_HEADERS`` 100): counted
  as bytes arrive, so an oversized head is refused with 431 before it is buffered whole, and a head
  with too many fields is refused before the app runs. The app's HeadGuardMiddleware applies the
  same limits again for servers without this guard.
- **Connection cap** (``KAIROS_MAX_CONNECTIONS`` per worker, 10,000): past it a new connection gets a
  503 and is closed at once, so its descriptor is back immediately and established clients keep
  being served.

Why uvicorn and this guard rather than another server (measured here, the same Kairos and config,
interleaved rounds, see docs/operating.md): granian used ~15% less CPU per request at 50
connections but was slower at one (p50 0.45 against 0.35 ms), never closes a connection that sends
nothing, caps header lines at a fixed 100, always adds ``server: granian`` and relays WebSocket
frames at more CPU; hypercorn cost twice uvicorn's CPU. The guard measured within noise of plain
uvicorn (CPU per request 0.95-0.96x).

What it relies on: uvicorn's ``HttpToolsProtocol`` internals (``connection_made``, ``data_received``
and the ``parser`` / ``cycle`` / ``connections`` / ``server_state`` attributes, ``on_message_begin``,
``on_url``, ``on_header``, ``on_headers_complete``, ``on_body``, ``on_message_complete``,
``send_400_response``, ``handle_websocket_upgrade``), so pyproject pins uvicorn's minor version and
tests/e2e/abuse fails if they change. Refusals are the gateway's JSON errors (``error``, ``type``,
``timestamp``, ``request_id``) with ``Connection: close``, and each kind is logged at most once per
10 s, so an attack cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from kairos.errors import STATUS_BY_TYPE, error_body
from kairos.request import new_request_id

logger = logging.getLogger("kairos.server")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_SWEEP_SECONDS = 1.0
_WARN_EVERY = 10.0  # seconds between two warnings of one kind
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GuardLimits:
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 10_000

    @classmethod
    def from_settings(cls) -> GuardLimits:
        from kairos.settings import load_settings

        settings = load_settings()
        return cls(
            settings.header_timeout, settings.max_header_bytes, settings.max_headers, settings.max_connections
        )


def refusal(status_kind: str, message: str) -> bytes:
    """A complete HTTP/1.1 response closing the connection: the gateway's JSON error."""
    status = STATUS_BY_TYPE[status_kind]
    request_id = new_request_id()
    body = error_body(status_kind, message, request_id)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n\r\n"
        % (status, _REASONS.get(status, b"Error"), len(body), request_id.encode())
    )
    return head + body


class _Sweeper:
    """Closes connections whose head is overdue; one per server (kept on uvicorn's ServerState)."""

    def __init__(self, connections: set[Any], timeout: float) -> None:
        self._connections = connections
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        self.closed_slow = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is None:
            self._handle = loop.call_later(_SWEEP_SECONDS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        limit = self._timeout
        for connection in list(self._connections):
            started = getattr(connection, "head_started", None)
            if started is not None and now - started > limit:
                connection.head_overdue()
                self.closed_slow += 1
        self._handle = loop.call_later(_SWEEP_SECONDS, self._sweep, loop)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard above (`kairos run` passes it as ``http``)."""

    _limits: GuardLimits | None = None  # read from KAIROS_* once per process
    _last_warning: dict[str, float] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = GuardedHttpToolsProtocol._limits
        if limits is None:
            limits = GuardedHttpToolsProtocol._limits = GuardLimits.from_settings()
        self.limits = limits
        self.head_started: float | None = None
        self.head_bytes = 0  # bytes received since the head started (the head and what follows it)
        self.head_size = 0  # the parsed head: request target and header lines
        self.head_fields = 0
        self.head_refused = False
        self.linger_left = 0  # bytes still read and discarded after a refusal

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        if cap and len(self.connections) >= cap:
            _warn("cap", "connection refused: %d connections open (KAIROS_MAX_CONNECTIONS)", cap)
            transport.write(refusal("upstream_unavailable", "Too many connections; try again later"))
            transport.close()
            self.transport = transport
            self.head_refused = True  # whatever it sends is ignored
            return
        super().connection_made(transport)
        self.head_started = time.monotonic()
        self._sweeper().start(self.loop)

    def _sweeper(self) -> _Sweeper:
        state = self.server_state
        sweeper: _Sweeper | None = getattr(state, "kairos_sweeper", None)
        if sweeper is None:
            sweeper = _Sweeper(state.connections, self.limits.header_timeout)
            state.kairos_sweeper = sweeper  # type: ignore[attr-defined]
        return sweeper

    def data_received(self, data: bytes) -> None:
        if self.head_refused:
            self._discard(len(data))
            return
        if self.head_started is None and (self.cycle is None or self.cycle.response_complete):
            self.head_started = time.monotonic()  # the first byte of the next request
            self.head_bytes = 0
        if self.head_started is not None:
            self.head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            # uvicorn logs a warning per malformed request; an attacker must not own the log.
            self.send_400_response(f"Invalid HTTP request: {exc}")
            return
        if (
            self.head_started is not None
            and self.head_bytes > self.limits.max_header_bytes
            and not self.head_refused
            and self.parser is not None
        ):
            self._refuse_head(f"Request head exceeds {self.limits.max_header_bytes} bytes")

    def head_overdue(self) -> None:
        """Called by the sweeper: the head did not complete in time."""
        self.head_started = None
        if self.transport is None or self.transport.is_closing():
            return
        _warn("slow", "closed a connection whose request head took over %.3gs", self.limits.header_timeout)
        if self.head_bytes:
            self.transport.write(
                refusal(
                    "request_timeout", f"Request head not complete within {self.limits.header_timeout:g}s"
                )
            )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (bad framing, both Content-Length and Transfer-Encoding, a bad
        character): the gateway's JSON 400, and the connection closed, since where the next request
        would begin is no longer known (RFC 9112 §11.2)."""
        _warn("malformed", "refused a malformed request: %s", msg)
        self._refuse("bad_request", msg)

    def _refuse_head(self, message: str) -> None:
        _warn("large", "refused a request head: %s", message)
        self._refuse("headers_too_large", message)

    def _refuse(self, kind: str, message: str) -> None:
        """Answer and close after a lingering read (nginx's ``lingering_close``): the client may
        still be sending the rest of its head or body, and closing with unread data would reset
        the connection and destroy the answer before the client reads it. What arrives meanwhile
        is discarded, for at most ``_LINGER_SECONDS`` and ``_LINGER_BYTES``."""
        self.head_refused = True
        self.head_started = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(refusal(kind, message))
        if transport.can_write_eof():
            transport.write_eof()
            self.linger_left = _LINGER_BYTES
            self.loop.call_later(_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def _discard(self, size: int) -> None:
        self.linger_left -= size
        if self.linger_left <= 0 and not self.transport.is_closing():
            self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_size = 12  # method, version and the request line's separators, roughly
        self.head_fields = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_fields += 1
        self.head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.head_started = None
        if self.head_refused:  # a pipelined request behind a refused head: never started
            return
        limits = self.limits
        if self.head_fields > limits.max_headers:
            problem = f"Request has {self.head_fields} header fields; the limit is {limits.max_headers}"
        elif self.head_size > limits.max_header_bytes:
            problem = f"Request head is {self.head_size} bytes; the limit is {limits.max_header_bytes}"
        else:
            super().on_headers_complete()
            return
        if self.cycle is None or self.cycle.response_complete:
            self._refuse_head(problem)
            return
        # Pipelined behind a response still being sent: the refusal waits its turn in uvicorn's
        # pipeline (a 431 app in place of the gateway, Connection: close), never cutting into it.
        _warn("large", "refused a request head: %s", problem)
        gateway, self.app = self.app, _refusing_app(problem)
        try:
            super().on_headers_complete()
        finally:
            self.app = gateway

    def on_body(self, body: bytes) -> None:
        if not self.head_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.head_refused:
            super().on_message_complete()


def _refusing_app(message: str) -> Any:
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        request_id = new_request_id()
        body = error_body("headers_too_large", message, request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class QuietDenialWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol (websockets' sans-I/O core: the cheapest relay measured
    here, 190 µs of gateway CPU per round trip against wsproto's 233) without its false ERROR: after
    a complete ``websocket.http.response`` denial it still logged "ASGI callable returned without
    completing handshake", so every refused upgrade (a bad token) wrote an ERROR line. The denial
    ends the handshake; this marks it so."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True


def _warn(kind: str, message: str, *args: Any) -> None:
    """At most one warning of each kind per ``_WARN_EVERY`` seconds: an attack must not flood the log."""
    now = time.monotonic()
    last = GuardedHttpToolsProtocol._last_warning.get(kind, -_WARN_EVERY)
    if now - last >= _WARN_EVERY:
        GuardedHttpToolsProtocol._last_warning[kind] = now
        logger.warning(message, *args)
