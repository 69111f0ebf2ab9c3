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

It also drains on SIGTERM / SIGINT (``DrainingServer``, ``KAIROS_DRAIN_DELAY`` and
``KAIROS_DRAIN_TIMEOUT``): ``/ready`` turns 503 at once while everything is still served, so a load
balancer moves away before the listener closes; then requests in flight finish, WebSockets are
closed with 1001, and the process exits 0. ``serve()`` is ``uvicorn.run()`` with that server. It
relies on uvicorn's ``Server`` (``handle_exit``, ``on_tick``, ``shutdown``, ``should_exit`` /
``force_exit`` / ``started``, and not re-raising what ``_captured_signals`` holds), its supervisor
(the module-level ``Process``, ``Process.server``, ``Multiprocess.terminate_all`` and ``sockets``)
and the protocols' ``shutdown``; tests/e2e/test_drain.py fails if they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httptools
from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.supervisors import multiprocess

from kairos.errors import STATUS_BY_TYPE, error_body
from kairos.request import new_request_id

logger = logging.getLogger("kairos.server")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_SWEEP_SECONDS = 1.0
_WARN_EVERY = 10.0  # seconds between two warnings of one kind
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 * 1024 * 1024
_FRESH_GRACE = 1.0  # seconds a connection without a request yet gets at shutdown (see shutdown())


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
        self.shutting_down = False  # the server's shutdown found it before its first request

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

    def shutdown(self) -> None:
        """Called by uvicorn's shutdown (after the drain delay), which closes at once every
        connection without a request in progress. A connection that has not completed its first
        request head was accepted just before the listener closed, and its client is sending that
        request now: closing it fails a request that never reached the app (behind nginx a POST
        becomes a 502). As Go's http.Server.Shutdown does for new connections, it gets
        ``_FRESH_GRACE`` seconds for its head; a request that arrives is served with ``Connection:
        close``. Idle keep-alive connections are closed at once, as uvicorn does."""
        if self._no_request_yet() and not self.head_refused and not self.shutting_down:
            self.shutting_down = True
            self.loop.call_later(_FRESH_GRACE, self._end_grace)
            return
        super().shutdown()

    def _end_grace(self) -> None:
        if self._no_request_yet():  # still none: closed as uvicorn would have
            super().shutdown()

    def _no_request_yet(self) -> bool:
        cycle: RequestResponseCycle | None = self.cycle  # typed as never None; it is, until a request
        return cycle is None

    def handle_websocket_upgrade(self) -> None:
        if self.shutting_down:  # a WebSocket opened now would miss the shutdown's close frames
            _warn("shutdown", "refused a WebSocket upgrade: the server is shutting down")
            self._refuse("upstream_unavailable", "Server shutting down; try again")
            return
        super().handle_websocket_upgrade()

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
            if self.shutting_down and self.cycle is not None:
                self.cycle.keep_alive = False  # its one request is served, then it closes
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

    def shutdown(self) -> None:
        """The server is going down (the end of a drain): close with 1001 "going away", RFC 6455's
        code for a server going down, where uvicorn sends 1012 "service restart". The client gets
        the close frame; the app gets a ``websocket.disconnect`` with the same code, which the
        WebSocket proxy relays to the backend, so both sides of a proxied WebSocket see 1001."""
        if self.close_sent or not self.handshake_complete:
            super().shutdown()  # a close already under way, or no WebSocket yet (uvicorn's 500)
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001, "reason": _GOING_AWAY})
        self.conn.send_close(1001, _GOING_AWAY)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()


_GOING_AWAY = "server shutting down"


class DrainingServer(Server):
    """uvicorn's Server with a drain in front of its shutdown, for rolling restarts behind a load
    balancer.

    What uvicorn does by itself on SIGTERM or SIGINT: within 0.1 s it closes the listening sockets,
    closes idle keep-alive connections, sends WebSockets 1012, waits for the responses in flight up
    to ``timeout_graceful_shutdown`` (forever when None) then cancels them, runs the lifespan
    shutdown, and re-raises the signal, so a single process dies *by* SIGTERM (exit -15 / 143). A
    load balancer still sends new connections to a replica until its health check fails; with the
    listener already closed they are refused or reset, and ``/ready`` never said anything.

    Here the first signal only starts a drain: the gateway's ``draining`` flag turns ``/ready`` 503
    at once, and everything is served as before (new connections, keep-alive) for ``drain_delay``
    seconds, long enough for the balancer's probes to notice. Then uvicorn's own shutdown runs, with
    ``timeout_graceful_shutdown`` = ``drain_timeout``. The signal is not re-raised: a drained
    process exits 0. A second SIGINT (Ctrl-C again) stops at once, as it does under plain uvicorn;
    a second SIGTERM changes nothing (a supervisor and a terminal may both send one).
    """

    def __init__(
        self, config: Config, drain_delay: float | None = None, drain_timeout: float | None = None
    ) -> None:
        super().__init__(config)
        if drain_delay is None or drain_timeout is None:
            from kairos.settings import load_settings

            settings = load_settings()
            drain_delay = settings.drain_delay if drain_delay is None else drain_delay
            drain_timeout = settings.drain_timeout if drain_timeout is None else drain_timeout
        self.drain_delay = drain_delay
        # uvicorn annotates it int, but only hands it to asyncio.wait_for, which takes seconds as a float.
        config.timeout_graceful_shutdown = drain_timeout  # type: ignore[assignment]
        self.drain_started: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags (the event loop acts on them in on_tick); nothing
        # is appended to uvicorn's _captured_signals, so the signal is not re-raised at exit.
        if self.should_exit or self.drain_started is not None:
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
            return
        if not self.started:  # still starting: nothing served yet, nothing to drain
            self.should_exit = True
            return
        self.drain_started = time.monotonic()
        gateway = _gateway_of(self.config.loaded_app)
        if gateway is not None:
            gateway.draining = True

    async def on_tick(self, counter: int) -> bool:
        started = self.drain_started
        if started is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                logger.info(
                    "draining: /ready answers 503; serving for %gs more (KAIROS_DRAIN_DELAY), then "
                    "requests in flight get up to %gs (KAIROS_DRAIN_TIMEOUT)",
                    self.drain_delay,
                    self.config.timeout_graceful_shutdown,
                )
            if time.monotonic() - started >= self.drain_delay:
                logger.info(
                    "drain delay over: closing the listener, %d connection(s) open",
                    len(self.server_state.connections),
                )
                self.should_exit = True  # uvicorn's shutdown() follows
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, with the tracebacks of the requests it cuts at ``drain_timeout``
        left out of the log (only from here on: before, a cancelled request is not ours to hide)."""
        logging.getLogger("uvicorn.error").addFilter(_quiet_cut)
        await super().shutdown(sockets)


def _quiet_cut(record: logging.LogRecord) -> bool:
    """Drops uvicorn's "Exception in ASGI application" traceback for a request cut at
    ``drain_timeout`` (a CancelledError): one per request, forty lines each, all saying what uvicorn's
    single "Cancel N running task(s), timeout graceful shutdown exceeded" already said."""
    cut = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
    return not (cut and str(record.msg).startswith("Exception in ASGI application"))


def _gateway_of(app: Any) -> Any:
    """The Kairos Gateway behind the app uvicorn loaded (``app.state.gateway``), through the
    wrappers uvicorn may add (they keep the app as ``.app``); None for another app."""
    for _ in range(8):
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:
            return gateway
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class DrainingProcess(multiprocess.Process):
    """A uvicorn worker process (``--workers N``) whose server is a DrainingServer."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = DrainingServer(self.config)
        return self._server


class DrainingSupervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor for ``--workers N``, with draining workers.

    What uvicorn does by itself: on SIGTERM or SIGINT (looked at every 0.5 s) it sends SIGTERM to
    every worker and waits for all of them, without a timeout, then returns: the parent exits 0
    once its workers have drained. Two changes. The workers run DrainingServer: uvicorn builds them
    from its module-level name ``Process`` (there is no factory argument), so that name points at
    DrainingProcess while this supervisor runs (spawned workers unpickle the class by its import
    path). And the parent closes its own copy of the listening socket once the workers are told to
    stop: the workers' copies keep it open through their drain delay, and when the last one closes
    it, new connections are refused instead of queueing in the backlog of a socket that no process
    accepts on any more.
    """

    def run(self) -> None:
        original = multiprocess.Process
        multiprocess.Process = DrainingProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = original  # type: ignore[misc]

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()


def serve(config: Config) -> None:
    """``uvicorn.run()`` for a built Config, with DrainingServer (and DrainingSupervisor for several
    workers): ``uvicorn.run`` takes no server class. Exits 3 (uvicorn's STARTUP_FAILURE) when a
    single server never started."""
    if config.workers > 1:
        DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = DrainingServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # a SIGINT before the handlers are installed
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _warn(kind: str, message: str, *args: Any) -> None:
    """At most one warning of each kind per ``_WARN_EVERY`` seconds: an attack must not flood the log."""
    now = time.monotonic()
    last = GuardedHttpToolsProtocol._last_warning.get(kind, -_WARN_EVERY)
    if now - last >= _WARN_EVERY:
        GuardedHttpToolsProtocol._last_warning[kind] = now
        logger.warning(message, *args)
