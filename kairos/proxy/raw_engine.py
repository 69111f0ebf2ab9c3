"""A lean HTTP/1.1 engine: asyncio Protocols, httptools' C response parser, a LIFO keep-alive pool.

Why it exists: aiohttp's ClientSession spends ~120 µs of CPU per request here building its request
and response objects, which alone misses the "≤ 0.35 ms added at p50" goal. A proxy needs far less
than a general client: the endpoint has already prepared the headers and owns the deadline, so this
engine only frames the request (one bytes join), parses the response and pools the connection.

Contract details that shape the code:

- No per-request timers: the endpoint's DeadlineWatch cancels the task. Every await is therefore
  cancellation-safe: a request interrupted anywhere aborts its connection, never pools it.
- Bodies stream both ways with flow control (``pause_writing``/drain on the way up, ``pause_reading``
  above HIGH_WATER buffered bytes on the way down), so a 300 MB transfer is never held in memory.
- A streamed request body is written by its own task while the response is awaited, so an upstream
  that answers early (413 before reading the body) is heard, as with aiohttp.
- A reused connection that dies before the first response byte was most likely closed by the
  upstream while idle; an idempotent request with a replayable body is retried once on a new one.
- Where a connection's exchange stands is one value, ``_Connection.state`` (a _State); every move
  between states is listed in _TRANSITIONS, and the tests check each one made against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import select
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

from httptools import HttpResponseParser

from kairos.proxy.engine import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamRequest,
    UpstreamTimeout,
)
from kairos.proxy.headers import content_length_value

# Pause reading the socket when this much response body is buffered and unread; resume below LOW.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Response head limits (aiohttp's are 8190 per line): a runaway header is an error, not a memory sink.
MAX_FIELD = 8190
MAX_HEAD = 256 * 1024
# Retried once on a fresh connection when a reused one turned out stale (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

PoolKey = tuple[str, "ssl.SSLContext | None"]


class _Endpoint:
    """What the scheme://authority part of a URL means, parsed once per backend, not per request."""

    __slots__ = ("host", "host_header", "port", "tls")

    def __init__(self, base: str) -> None:
        scheme, _, authority = base.partition("://")
        scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS or not authority:
            raise UpstreamError(f"unsupported upstream URL: {base!r}")
        self.tls = scheme == "https"
        default = _DEFAULT_PORTS[scheme]
        if authority.startswith("["):  # IPv6 literal: [::1]:8080
            host, _, rest = authority[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            shown = f"[{host}]"
        else:
            host, _, port_text = authority.partition(":")
            shown = host
        try:
            self.port = int(port_text) if port_text else default
        except ValueError:
            raise UpstreamError(f"bad port in upstream URL: {base!r}") from None
        self.host = host
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"


class _State(enum.Enum):
    """Where a connection is in its exchange cycle (``_Connection.state``); one exchange at a time.

    IDLE           connected, no exchange on it: just opened, or parked in the pool
    AWAITING_HEAD  request written (a streamed body may still be going up); no final response head yet
    INTERIM        inside a 1xx response (100, 103, ...), which is skipped
    READING_BODY   final head parsed, its body arriving
    COMPLETE       response received in full; the connection can carry another exchange
    MUST_CLOSE     response received in full; the connection can't (the response said so or ended
                   at EOF, a 101, stray bytes followed it, or it was closed by either side)
    HEAD_FAILED    no usable response head: ``error`` is what the request fails with
    BODY_FAILED    the head was delivered, then the body failed: readers get the bytes already
                   buffered, then ``error``
    CLOSED         the connection closed (or is closing) with no exchange on it

    The last four are final: a connection leaves them only by being dropped. The response's readers
    treat COMPLETE and MUST_CLOSE alike; only the pool tells them apart.
    """

    # Two groups the hot path tests, as flags on each member (set below). On CPython 3.11 a flag costs
    # about 1.5 times a bool attribute's test, an identity test against a module global 2 times, so
    # a group tested as two of those would cost 4.
    head_pending: bool  # AWAITING_HEAD, INTERIM: the final response head is still to come
    received: bool  # COMPLETE, MUST_CLOSE: the whole response is in

    IDLE = "idle"
    AWAITING_HEAD = "awaiting head"
    INTERIM = "interim"
    READING_BODY = "reading body"
    COMPLETE = "complete"
    MUST_CLOSE = "must close"
    HEAD_FAILED = "head failed"
    BODY_FAILED = "body failed"
    CLOSED = "closed"


# Module-level names for the hot path: on CPython 3.11 a test against ``_State.IDLE`` (a lookup on
# the Enum class) costs about eight times one against a module global.
IDLE = _State.IDLE
AWAITING_HEAD = _State.AWAITING_HEAD
INTERIM = _State.INTERIM
READING_BODY = _State.READING_BODY
COMPLETE = _State.COMPLETE
MUST_CLOSE = _State.MUST_CLOSE
HEAD_FAILED = _State.HEAD_FAILED
BODY_FAILED = _State.BODY_FAILED
CLOSED = _State.CLOSED
for _state in _State:
    _state.head_pending = _state is AWAITING_HEAD or _state is INTERIM
    _state.received = _state is COMPLETE or _state is MUST_CLOSE
del _state

# Every transition there is, and what makes it. ``state`` is written only by the _Connection methods
# named here, each guarded by the states it may leave (hence no runtime check on the hot path);
# tests/proxy/test_raw_engine.py runs its connections through a subclass checking every write.
_TRANSITIONS: dict[_State, frozenset[_State]] = {
    # begin(); unsolicited bytes, close()/abort() or connection_lost() while idle
    IDLE: frozenset({AWAITING_HEAD, CLOSED}),
    # on_headers_complete(): a 1xx, a final head with a body to come, the whole response of a HEAD
    # (COMPLETE or MUST_CLOSE) or a 101 (MUST_CLOSE); fail() or connection_lost()
    AWAITING_HEAD: frozenset({INTERIM, READING_BODY, COMPLETE, MUST_CLOSE, HEAD_FAILED}),
    # on_message_complete() of the 1xx; fail() or connection_lost()
    INTERIM: frozenset({AWAITING_HEAD, HEAD_FAILED}),
    # on_message_complete() (by keep_alive), or connection_lost() ending a close-delimited body
    # (MUST_CLOSE); fail() or connection_lost() mid-body (BODY_FAILED)
    READING_BODY: frozenset({COMPLETE, MUST_CLOSE, BODY_FAILED}),
    # finish() parks it in the pool; stray body bytes (on_body), close()/abort(), connection_lost()
    COMPLETE: frozenset({IDLE, MUST_CLOSE}),
    MUST_CLOSE: frozenset(),
    HEAD_FAILED: frozenset(),
    BODY_FAILED: frozenset(),
    CLOSED: frozenset(),
}


class _Connection(asyncio.Protocol):
    """One upstream connection: the transport, its parser, and the state of the exchange on it.

    The protocol is also httptools' callback object, so parsing needs no extra indirection. Where the
    exchange stands is ``state`` alone (see _State and _TRANSITIONS); the other per-exchange fields
    are facts about the request or response, reset by ``begin``. ``transport`` is None once the
    connection is lost.
    """

    __slots__ = (
        "body",
        "body_sent",
        "buffered",
        "chunked",
        "content_length",
        "drain_waiter",
        "engine",
        "eof_body",
        "error",
        "head_bytes",
        "head_request",
        "headers",
        "idle_since",
        "keep_alive",
        "key",
        "loop",
        "parser",
        "parser_dirty",
        "read_paused",
        "reused",
        "state",
        "status",
        "transport",
        "unbounded",
        "waiter",
        "write_paused",
        "writer",
    )

    def __init__(self, engine: RawEngine, key: PoolKey, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.parser_dirty = False
        self.state = IDLE
        self.reused = False
        self.idle_since = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.read_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        self._reset(False)

    def _reset(self, head_request: bool) -> None:
        self.head_request = head_request
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        # Whether the response leaves the connection reusable: no "Connection: close", HTTP/1.1 or
        # keep-alive, not close-delimited, not a 101. Decides COMPLETE or MUST_CLOSE at its end.
        self.keep_alive = True
        self.eof_body = False  # the body ends when the upstream closes (no length, not chunked)
        self.head_bytes = 0  # response head bytes so far (0: the upstream has not said a thing)
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.unbounded = False
        self.body_sent = True  # False while a streamed request body is still going up
        self.error: UpstreamError | None = None  # set exactly when state becomes a *_FAILED one

    # -- exchange lifecycle (called by the engine and the response) --------------------------------

    def begin(self, head_request: bool) -> None:
        """IDLE → AWAITING_HEAD: a new exchange (a connection closed meanwhile can't carry it)."""
        if self.state is not IDLE:
            raise UpstreamError("upstream connection closed before the request was sent")
        if self.parser_dirty:  # after a HEAD the parser still expects the advertised body
            self.parser = HttpResponseParser(self)
            self.parser_dirty = False
        self._reset(head_request)
        self.writer = None
        self.state = AWAITING_HEAD

    def finish(self) -> bool:
        """The response is done with. True: COMPLETE → IDLE, the caller pools the connection.
        False: it has been closed (politely after a complete response) or aborted."""
        state = self.state
        if state is COMPLETE and self.body_sent and (self.writer is None or self.writer.done()):
            self.state = IDLE
            self.body.clear()
            if self.read_paused and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()  # an idle connection must still notice the upstream closing
            return True
        if state.received:
            self.close()
        else:
            self.abort()
        return False

    def abort(self) -> None:
        """Drop the connection now: it is in an unknown state (cancelled, failed, half-used)."""
        self._shut(abruptly=True)

    def close(self) -> None:
        """Close politely (pending writes flushed): the exchange ended but the connection can't be kept."""
        self._shut(abruptly=False)

    def _shut(self, abruptly: bool) -> None:
        # IDLE → CLOSED, COMPLETE → MUST_CLOSE. An exchange in flight stays as it is until
        # connection_lost settles it: it is only ever aborted, which stops reading at once.
        state = self.state
        if state is IDLE:
            self.state = CLOSED
        elif state is COMPLETE:
            self.state = MUST_CLOSE
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        transport = self.transport
        if transport is not None:
            if abruptly:
                transport.abort()
            else:
                transport.close()

    def _failed(self, error: UpstreamError) -> None:
        """An exchange in flight fails: → HEAD_FAILED before the final head, BODY_FAILED after it.
        In any other state the outcome is already settled and stays."""
        state = self.state
        if state is READING_BODY:
            failed = BODY_FAILED
        elif state.head_pending:
            failed = HEAD_FAILED
        else:
            return
        self.error = error
        self.state = failed

    def fail(self, error: UpstreamError) -> None:
        self._failed(error)
        self.abort()
        self._wake()

    async def wait(self) -> None:
        waiter = self.waiter = self.loop.create_future()
        await waiter

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> bytes:
        """All buffered body bytes, resuming the socket if it was paused for backpressure."""
        body = self.body
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return chunk

    async def drain(self) -> None:
        while self.write_paused:
            if self.transport is None:
                raise self.error or UpstreamError("upstream connection closed while sending the body")
            waiter = self.drain_waiter = self.loop.create_future()
            await waiter
        if self.transport is None:
            raise self.error or UpstreamError("upstream connection closed while sending the body")

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state.head_pending:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self.fail(UpstreamError(f"upstream response head larger than {MAX_HEAD} bytes"))
                return
        elif state is not READING_BODY:
            if state is IDLE or state is CLOSED:  # unsolicited bytes: the connection is not reusable
                self.close()
                return
            if state is HEAD_FAILED or state is BODY_FAILED:
                return
            # COMPLETE, MUST_CLOSE: the parser tells a harmless CRLF from a second response
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            state = self.state
            if state.received:
                self.close()  # trailing garbage after a complete response: just don't reuse
            else:
                ours = exc.__cause__ or exc.__context__  # a limit raised in one of our callbacks
                if isinstance(ours, UpstreamError):
                    error = UpstreamError(str(ours))
                else:
                    where = "body" if state is READING_BODY else "status line or headers"
                    error = UpstreamError(f"malformed upstream response {where}: {exc!r}")
                error.__cause__ = exc
                self.fail(error)
            return
        if self.buffered > HIGH_WATER and not self.unbounded and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        state = self.state
        if state is IDLE:
            self.state = CLOSED
        elif state is COMPLETE:
            self.state = MUST_CLOSE
        elif state is READING_BODY and self.eof_body and exc is None:
            self.state = MUST_CLOSE  # a close-delimited body ends here
        elif state is READING_BODY or state.head_pending:
            # Wording as aiohttp's, which operators (and the fault tests) already know.
            what = (
                "response payload is not completed: the upstream closed the connection mid-body"
                if state is READING_BODY
                else "the upstream closed the connection before a complete response head"
            )
            error = UpstreamError(what if exc is None else f"{what}: {exc!r}")
            error.__cause__ = exc
            self._failed(error)
        self.engine._lost(self)
        self._wake()
        drain = self.drain_waiter
        if drain is not None:
            self.drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self.drain_waiter
        if drain is not None:
            self.drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    # -- httptools callbacks (only while AWAITING_HEAD, INTERIM, READING_BODY, COMPLETE, MUST_CLOSE) --

    def on_message_begin(self) -> None:
        # Every other callback follows this one, so no response is parsed outside AWAITING_HEAD.
        if self.state is not AWAITING_HEAD:  # a second response to one request
            raise UpstreamError("unexpected data after the upstream response")
        self.headers = []
        self.content_length = None
        self.chunked = False
        self.keep_alive = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD:
            raise UpstreamError(f"upstream response header field larger than {MAX_FIELD} bytes")
        self.headers.append((name, value))
        size = len(name)
        if size == 14 or size == 17 or size == 10:
            lower = name.lower()
            if lower == b"content-length":
                self.content_length = content_length_value(value.strip())
            elif lower == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif lower == b"connection" and b"close" in value.lower():
                self.keep_alive = False

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim response (100, 103): skip it
            self.state = INTERIM
            return
        self.status = status
        keep_alive = self.keep_alive
        if parser.get_http_version() != "1.1" and not any(
            name.lower() == b"connection" and b"keep-alive" in value.lower() for name, value in self.headers
        ):
            keep_alive = False
        if self.chunked:
            self.content_length = None
        no_body = self.head_request or status in (101, 204, 304)
        self.eof_body = eof_body = not no_body and self.content_length is None and not self.chunked
        self.keep_alive = keep_alive and not eof_body and status != 101
        if self.head_request or status == 101:
            if self.head_request:
                # httptools cannot be told the request was a HEAD: end the message here and give
                # the next exchange a fresh parser (the old one still waits for Content-Length bytes).
                self.parser_dirty = True
            self.state = COMPLETE if self.keep_alive else MUST_CLOSE
        else:
            self.state = READING_BODY
        self._wake()

    def on_body(self, body: bytes) -> None:
        state = self.state
        if state is READING_BODY:
            self.body.append(body)
            self.buffered += len(body)
            self._wake()
        elif state is COMPLETE:  # body bytes after a HEAD response: stray data, don't reuse
            self.state = MUST_CLOSE
        # INTERIM: the body of a 1xx response (150 with a Content-Length) is no part of the final one

    def on_message_complete(self) -> None:
        state = self.state
        if state is READING_BODY:
            self.state = COMPLETE if self.keep_alive else MUST_CLOSE
            self._wake()
        elif state is INTERIM:
            self.state = AWAITING_HEAD
        # COMPLETE, MUST_CLOSE: the end of a HEAD or 101 response, settled at its head already


class RawResponse:
    """The response head plus access to the body still arriving on the connection."""

    __slots__ = ("_conn", "_engine", "content_length", "headers", "status")

    def __init__(self, engine: RawEngine, conn: _Connection) -> None:
        self._engine = engine
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers
        self.content_length = conn.content_length

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        conn.unbounded = True  # the caller wants it all: backpressure would deadlock here
        if conn.read_paused and conn.transport is not None:
            conn.read_paused = False
            conn.transport.resume_reading()
        while not conn.state.received:
            if conn.error is not None:  # BODY_FAILED (never HEAD_FAILED: there is a response)
                raise conn.error
            await conn.wait()
        return conn.take() if conn.body else b""

    def ready_body(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return b""
        if not conn.state.received:
            return None
        return conn.take() if conn.body else b""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.body:
                yield conn.take()
            elif conn.state.received:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait()

    async def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._engine._release(conn)


class RawEngine:
    """HTTP/1.1 client engine for the proxy: see the module docstring for what it does and why."""

    name = "raw"

    def __init__(self, max_connections: int = 0, keepalive_timeout: float = 4.0) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_timeout
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._connections: set[_Connection] = set()
        self._opening = 0  # connects in progress, counted against max_connections
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._endpoints: dict[str, _Endpoint] = {}
        self._default_ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._connections):
            conn.abort()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    # -- the request --------------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> RawResponse:
        url = request.url
        start = url.find("://") + 3
        cut = len(url)
        for mark in ("/", "?"):
            index = url.find(mark, start)
            if 0 <= index < cut:
                cut = index
        base = url[:cut]
        endpoint = self._endpoints.get(base)
        if endpoint is None:
            if len(self._endpoints) > 1024:
                self._endpoints.clear()
            endpoint = self._endpoints[base] = _Endpoint(base)
        target = url[cut:] or "/"
        if target[0] == "?":
            target = "/" + target
        method = request.method
        body = request.body

        lines = [f"{method} {target} HTTP/1.1\r\nHost: {endpoint.host_header}"]
        has_length = False
        for name, value in request.headers:
            size = len(name)
            if size == 14 or size == 17 or size == 4:
                lower = name.lower()
                if lower == "content-length":
                    has_length = True
                elif lower == "transfer-encoding" or lower == "host":
                    continue  # framing and Host are this engine's to write
            lines.append(f"{name}: {value}")
        chunked = False
        if isinstance(body, bytes):
            if not has_length:
                lines.append(f"content-length: {len(body)}")
        elif body is not None and not has_length:
            chunked = True
            lines.append("transfer-encoding: chunked")
        lines.append("\r\n")
        text = "\r\n".join(lines)
        # Exactly one CR and one LF per line (the first element holds two: request line and Host): a
        # line break inside a target or header value would be request splitting. ASGI servers
        # already refuse them on input; this keeps it impossible.
        breaks = len(lines) + 1
        if text.count("\n") != breaks or text.count("\r") != breaks:
            raise UpstreamError("refusing to send a request head with a line break inside a field")
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise UpstreamError(f"request head is not latin-1: {exc}") from exc

        tls = endpoint.tls
        context = request.ssl if tls else None
        key: PoolKey = (base, context)
        replayable = method in IDEMPOTENT and (body is None or isinstance(body, bytes))
        conn = await self._acquire(key, endpoint, context, request.connect_timeout, fresh=False)
        if conn.reused and not replayable and _peer_spoke(conn):
            # A request that may not be sent twice never goes out on a pooled connection the
            # upstream has already closed (its FIN waiting to be read): urllib3's check, one poll.
            conn.close()
            conn = await self._acquire(key, endpoint, context, request.connect_timeout, fresh=True)
        try:
            return await self._exchange(conn, head, body, chunked, method == "HEAD")
        except UpstreamError:
            if not (conn.reused and not conn.head_bytes and replayable):  # not a byte of answer
                raise
        conn = await self._acquire(key, endpoint, context, request.connect_timeout, fresh=True)
        return await self._exchange(conn, head, body, chunked, method == "HEAD")

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
        head_request: bool,
    ) -> RawResponse:
        try:
            conn.begin(head_request)
            transport = conn.transport
            assert transport is not None
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                if len(body) <= 16384:
                    transport.write(head + body)
                else:
                    transport.writelines((head, body))
            else:
                transport.write(head)
                conn.body_sent = False
                conn.writer = self._loop_().create_task(_write_body(conn, body, chunked))
            while conn.state.head_pending:
                await conn.wait()
            if conn.error is not None and conn.state is HEAD_FAILED:
                raise conn.error
            # READING_BODY, COMPLETE, MUST_CLOSE, or BODY_FAILED (the body's readers raise)
        except BaseException:
            conn.abort()
            raise
        return RawResponse(self, conn)

    # -- the pool -----------------------------------------------------------------------------------

    def _loop_(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _acquire(
        self,
        key: PoolKey,
        endpoint: _Endpoint,
        context: ssl.SSLContext | None,
        connect_timeout: float,
        fresh: bool,
    ) -> _Connection:
        loop = self._loop_()
        while True:
            if not fresh:
                stack = self._idle.get(key)
                if stack:
                    now = loop.time()
                    while stack:
                        conn = stack.pop()
                        if conn.state is not IDLE:
                            continue  # closed while pooled, its connection_lost still to come
                        if now - conn.idle_since > self._keepalive:
                            conn.close()  # LIFO: everything under an expired one is older still
                            for older in stack:
                                older.close()
                            stack.clear()
                            break
                        conn.reused = True
                        return conn
            limit = self._max_connections
            if not limit or len(self._connections) + self._opening < limit:
                break
            self._evict_one()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_waiter()  # pass the slot we were given on
                raise
        self._opening += 1
        try:
            conn = await self._connect(key, endpoint, context, connect_timeout, loop)
        finally:
            self._opening -= 1
        self._connections.add(conn)
        return conn

    async def _connect(
        self,
        key: PoolKey,
        endpoint: _Endpoint,
        context: ssl.SSLContext | None,
        connect_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> _Connection:
        if endpoint.tls and context is None:
            context = self._default_ssl
            if context is None:
                context = self._default_ssl = ssl.create_default_context()

        def factory() -> _Connection:
            return _Connection(self, key, loop)

        try:
            async with asyncio.timeout(connect_timeout):
                transport, conn = await loop.create_connection(
                    factory,
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=endpoint.host if context is not None else None,
                )
        except TimeoutError as exc:
            self._wake_waiter()
            raise UpstreamTimeout(f"connecting to the upstream timed out after {connect_timeout}s") from exc
        except OSError as exc:
            self._wake_waiter()
            raise UpstreamConnectError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc!r}") from exc
        except BaseException:
            self._wake_waiter()
            raise
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            ssl_object: Any = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                transport.abort()
                raise UpstreamError('upstream chose HTTP/2 by ALPN; mark the backend "http2": true')
        return conn

    def _release(self, conn: _Connection) -> None:
        """The response is done with: pool the connection if the exchange ended cleanly, else drop it."""
        if not conn.finish():
            return
        loop = self._loop_()
        conn.idle_since = loop.time()
        stack = self._idle.get(conn.key)
        if stack is None:
            stack = self._idle[conn.key] = []
        stack.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(max(self._keepalive / 2, 0.05), self._sweep)
        if self._waiters:
            self._wake_waiter()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed (either side): forget it and give its slot to a waiter."""
        self._connections.discard(conn)
        if conn.state is CLOSED:  # it may still sit in the pool
            stack = self._idle.get(conn.key)
            if stack is not None and conn in stack:
                stack.remove(conn)
        if self._waiters:
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict_one(self) -> None:
        """At the connection limit, close the oldest idle connection of any backend to free a slot."""
        for stack in self._idle.values():
            if stack:
                stack.pop(0).close()
                return

    def _sweep(self) -> None:
        """Close connections idle longer than the keep-alive time; reschedules while any are idle."""
        self._sweeper = None
        now = self._loop_().time()
        remaining = False
        for stack in self._idle.values():
            expired = 0
            for conn in stack:
                if now - conn.idle_since <= self._keepalive:
                    break
                expired += 1
            for conn in stack[:expired]:
                conn.close()
            del stack[:expired]
            remaining = remaining or bool(stack)
        if remaining:
            self._sweeper = self._loop_().call_later(max(self._keepalive / 2, 0.05), self._sweep)


def _peer_spoke(conn: _Connection) -> bool:
    """Whether an idle pooled connection has something to read: the upstream closed it (or sent
    data nobody asked for); either way it must not carry a request that cannot be retried."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


async def _write_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream a request body with flow control, concurrently with waiting for the response.

    A failure (the client left mid-upload, the upstream reset) aborts the connection and, if the
    response head has not come yet, becomes the request's error, its cause kept in the chain."""
    transport = conn.transport
    assert transport is not None
    try:
        async for chunk in body:
            if not chunk:
                continue
            if conn.transport is None:
                raise conn.error or UpstreamError("upstream connection closed while sending the body")
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if conn.write_paused:
                await conn.drain()
        if chunked and conn.transport is not None:
            transport.write(b"0\r\n\r\n")
        conn.body_sent = True
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(f"sending the body failed: {exc!r}")
        if error is not exc:
            error.__cause__ = exc
        conn.fail(error)
