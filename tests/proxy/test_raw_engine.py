"""RawEngine against real servers on 127.0.0.1: the aiohttp test upstream, the misbehaving raw
upstream, a TLS upstream, and small in-process servers for what neither can do (close-delimited
bodies, connections that go stale between requests). Every connection these tests open checks each
of its state changes against raw_engine._TRANSITIONS; the state machine itself is driven byte by
byte at the end, without a network."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import trustme

from kairos.proxy import raw_engine
from kairos.proxy.engine import UpstreamConnectError, UpstreamError, UpstreamRequest
from kairos.proxy.raw_engine import HIGH_WATER, MAX_HEAD, RawEngine, _Connection, _State
from tests.processes import Server, free_port, server_process

T = TypeVar("T")

_STATE_SLOT: Any = _Connection.__dict__["state"]


class _Checked(_Connection):
    """A _Connection whose every write to ``state`` is checked against _TRANSITIONS (and the rule
    that ``error`` is set exactly on entering a failed state) and recorded in ``trail``. Violations
    are collected, not raised: most writes happen in protocol callbacks, whose exceptions asyncio
    only logs."""

    violations: list[str] = []

    @property
    def state(self) -> _State:
        return cast(_State, _STATE_SLOT.__get__(self, _Connection))

    @state.setter
    def state(self, new: _State) -> None:
        trail: list[_State] = self.__dict__.setdefault("trail", [])
        old = trail[-1] if trail else None
        if old is None and new is not _State.IDLE:
            self.violations.append(f"starts in {new}")
        elif old is not None and new not in raw_engine._TRANSITIONS[old]:
            self.violations.append(f"{old} -> {new}")
        failed = new is _State.HEAD_FAILED or new is _State.BODY_FAILED
        error = getattr(self, "error", None)  # not set yet when __init__ makes it IDLE
        if failed != (error is not None):
            self.violations.append(f"{new} with error {error!r}")
        trail.append(new)
        _STATE_SLOT.__set__(self, new)


@pytest.fixture(autouse=True)
def checked_transitions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(raw_engine, "_Connection", _Checked)
    _Checked.violations = []
    yield
    assert not _Checked.violations


def run(main: Callable[[RawEngine], Awaitable[T]], **engine_args: Any) -> T:
    """Run ``main`` with a started engine, bounded in time, closing the engine whatever happens."""

    async def wrapper() -> T:
        engine = RawEngine(**engine_args)
        await engine.start()
        try:
            return await asyncio.wait_for(main(engine), 20)
        finally:
            await engine.close()

    return asyncio.run(wrapper())


def get(url: str, method: str = "GET", body: Any = None, headers: Any = (), **extra: Any) -> UpstreamRequest:
    return UpstreamRequest(method, url, list(headers), body, connect_timeout=2.0, **extra)


async def fetch(engine: RawEngine, request: UpstreamRequest) -> tuple[int, bytes]:
    response = await engine.send(request)
    try:
        return response.status, await response.read()
    finally:
        await response.close()


async def settle() -> None:
    """Let close callbacks run (connection_lost comes a loop iteration or two after close())."""
    for _ in range(5):
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(module_tmp: Path, ca: trustme.CA) -> Iterator[Server]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = module_tmp / "raw-tls.pem", module_tmp / "raw-tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    port = free_port()
    args = ["-m", "tests.servers.tls_upstream", "--port", str(port), "--cert", str(cert_path)]
    with server_process([*args, "--key", str(key_path)], port, module_tmp / "raw-tls.log") as server:
        yield server


@contextlib.asynccontextmanager
async def inline_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """An in-process server; ``handler`` gets the connection's number. Yields (base URL, accepted)."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await handler(reader, writer, len(accepted) - 1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


# -- basics against the aiohttp upstream ----------------------------------------------------------


def test_get_sends_host_and_keeps_raw_response_headers(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        status, body = await fetch(
            engine, get(f"{upstream.url}/echo/a%2Fb?x=1&y=", headers=[("X-Test", "v")])
        )
        assert status == 200
        assert b'"raw_path": "/echo/a%2Fb?x=1&y="' in body
        assert f'["Host", "127.0.0.1:{upstream.port}"]'.encode() in body
        assert b'["X-Test", "v"]' in body
        response = await engine.send(get(f"{upstream.url}/cookies"))
        cookies = [value for name, value in response.headers if name == b"Set-Cookie"]
        multi = [value for name, value in response.headers if name == b"X-Multi"]
        assert cookies == [b"a=1; Path=/", b"b=2; Path=/"] and multi == [b"one", b"two"]
        assert response.content_length == len(await response.read()) == 7
        await response.close()

    run(main)


def test_keep_alive_connection_is_reused(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        for n in range(20):
            status, body = await fetch(engine, get(f"{upstream.url}/echo?n={n}"))
            assert status == 200 and f"n={n}".encode() in body
        assert len(engine._connections) == 1

    run(main)


def test_bytes_body_gets_content_length(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        status, body = await fetch(engine, get(f"{upstream.url}/echo", "POST", b"payload"))
        assert status == 200 and b'"body": "payload"' in body and b'["Content-Length", "7"]' in body

    run(main)


async def _stream(size: int, piece: int = 65536) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        chunk = bytes([sent % 251]) * min(piece, size - sent)
        sent += len(chunk)
        yield chunk


def _digest(size: int, piece: int = 65536) -> str:
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        chunk = bytes([sent % 251]) * min(piece, size - sent)
        sent += len(chunk)
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_streamed_upload_with_flow_control(upstream: Server, sized: bool) -> None:
    size = 30 * 2**20

    async def main(engine: RawEngine) -> None:
        headers = [("content-length", str(size))] if sized else []
        response = await engine.send(get(f"{upstream.url}/upload", "POST", _stream(size), headers))
        data = await response.read()
        await response.close()
        assert response.status == 200
        assert f'"bytes": {size}'.encode() in data and _digest(size).encode() in data
        status, _ = await fetch(engine, get(f"{upstream.url}/whoami"))  # the connection is reusable
        assert status == 200 and len(engine._connections) == 1

    run(main)


def test_chunked_response_is_streamed(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        response = await engine.send(get(f"{upstream.url}/trickle?delay=0.05"))
        assert response.content_length is None
        assert any(name.lower() == b"transfer-encoding" for name, _ in response.headers)
        chunks = [chunk async for chunk in response.iter_chunks()]
        await response.close()
        assert b"".join(chunks) == b"firstlate" and len(chunks) == 2
        assert len(engine._connections) == 1 and len(engine._idle[(upstream.url, None)]) == 1

    run(main)


def test_large_download_is_paused_not_buffered(upstream: Server) -> None:
    size = 40 * 2**20

    async def main(engine: RawEngine) -> None:
        response = await engine.send(get(f"{upstream.url}/stream?size={size}"))
        chunks = response.iter_chunks()
        received = len(await chunks.__anext__())
        await asyncio.sleep(0.3)  # a slow consumer: the engine must stop reading the socket
        (conn,) = engine._connections
        assert conn.read_paused and conn.buffered < HIGH_WATER + 512 * 1024
        async for chunk in chunks:
            received += len(chunk)
        await response.close()
        assert received == size and len(engine._connections) == 1

    run(main)


def test_cancel_mid_body_closes_the_connection(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        response = await engine.send(get(f"{upstream.url}/stream?size={50 * 2**20}"))

        async def consume() -> None:
            async for _ in response.iter_chunks():
                await asyncio.sleep(0.01)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await response.close()
        await settle()
        assert not engine._connections and not any(engine._idle.values())
        status, _ = await fetch(engine, get(f"{upstream.url}/whoami"))
        assert status == 200

    run(main)


def test_cancel_while_waiting_for_the_head_closes_the_connection(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.send(get(f"{upstream.url}/slow?delay=2")), 0.2)
        await settle()
        assert not engine._connections and not any(engine._idle.values())

    run(main)


def test_max_connections_makes_requests_wait(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        started = time.monotonic()
        results = await asyncio.gather(
            *(fetch(engine, get(f"{upstream.url}/slow?delay=0.2")) for _ in range(3))
        )
        assert [status for status, _ in results] == [200, 200, 200]
        assert time.monotonic() - started >= 0.55  # one at a time
        assert len(engine._connections) == 1

    run(main, max_connections=1)


def test_idle_connections_expire(upstream: Server) -> None:
    async def main(engine: RawEngine) -> None:
        await fetch(engine, get(f"{upstream.url}/whoami"))
        assert len(engine._connections) == 1
        await asyncio.sleep(0.5)
        assert not engine._connections  # swept without any new request
        status, _ = await fetch(engine, get(f"{upstream.url}/whoami"))
        assert status == 200

    run(main, keepalive_timeout=0.1)


def test_refused_is_a_connect_error() -> None:
    async def main(engine: RawEngine) -> None:
        with pytest.raises(UpstreamConnectError):
            await engine.send(get(f"http://127.0.0.1:{free_port()}/"))
        assert not engine._connections and engine._opening == 0

    run(main)


# -- the misbehaving raw upstream -----------------------------------------------------------------


def test_head_204_304_and_interim_responses_keep_the_connection(raw: Server) -> None:
    async def main(engine: RawEngine) -> None:
        for _ in range(2):
            response = await engine.send(get(f"{raw.url}/head?size=200000", "HEAD"))
            assert response.status == 200 and response.content_length == 200000
            assert await response.read() == b""
            await response.close()
            assert await fetch(engine, get(f"{raw.url}/head?size=200000")) == (200, b"h" * 200000)
            assert await fetch(engine, get(f"{raw.url}/status/204")) == (204, b"")
            assert await fetch(engine, get(f"{raw.url}/status/304?length=5000")) == (304, b"")
            response = await engine.send(get(f"{raw.url}/informational"))
            assert response.status == 200 and response.headers == [(b"Content-Length", b"5")]
            assert await response.read() == b"final"
            await response.close()
        assert len(engine._connections) == 1

    run(main)


def test_garbage_and_cut_bodies_are_upstream_errors(raw: Server) -> None:
    async def main(engine: RawEngine) -> None:
        with pytest.raises(UpstreamError, match="status line"):
            await engine.send(get(f"{raw.url}/garbage"))
        response = await engine.send(get(f"{raw.url}/cut?length=1000&send=100"))
        with pytest.raises(UpstreamError, match="not completed"):
            await response.read()
        await response.close()
        for path in ("/cut?length=500000&send=100000", "/cut-chunked"):
            response = await engine.send(get(f"{raw.url}{path}"))
            received = 0
            with pytest.raises(UpstreamError):
                async for chunk in response.iter_chunks():
                    received += len(chunk)
            await response.close()
            assert received > 0
        with pytest.raises(UpstreamError, match="larger than"):
            await engine.send(get(f"{raw.url}/huge-header?mode=one&kib=60"))
        await settle()
        assert not engine._connections

    run(main)


def test_connection_closed_after_response_is_not_reused(raw: Server) -> None:
    async def main(engine: RawEngine) -> None:
        for n in range(5):  # /lie promises keep-alive and closes: POSTs (never retried) must work
            assert await fetch(engine, get(f"{raw.url}/lie?n={n}", "POST", b"abc")) == (
                200,
                f"POST /lie?n={n} 3".encode(),
            )
            await settle()

    run(main)


def test_early_answer_during_upload_is_returned(raw: Server) -> None:
    async def main(engine: RawEngine) -> None:
        never = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"e" * 65536
            await never.wait()  # the client stalls; the upstream has answered already
            yield b"never"

        headers = [("content-length", "8000000")]
        response = await engine.send(get(f"{raw.url}/early-413", "POST", body(), headers))
        assert response.status == 413 and await response.read() == b'{"error": "too large"}'
        await response.close()
        await settle()
        assert not engine._connections

    run(main)


# -- in-process servers: close-delimited bodies and stale connections -----------------------------


def test_close_delimited_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\n" + b"z" * 300_000)
        await writer.drain()

    async def main(engine: RawEngine) -> None:
        async with inline_server(handler) as (url, accepted):
            for _ in range(2):
                response = await engine.send(get(f"{url}/"))
                assert response.content_length is None
                assert await response.read() == b"z" * 300_000
                await response.close()
            assert len(accepted) == 2  # never reused

    run(main)


async def _stale_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """Answers the first request of each connection, then drops the connection on the second
    without a byte of answer: a keep-alive connection that went stale under the client."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")


async def _keep_alive_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


def test_connection_closed_while_pooled_is_never_handed_out() -> None:
    """Unsolicited bytes (a 408 before the upstream's idle close) close a pooled connection at once;
    a request in the same loop iteration, before connection_lost has run, must not get it."""

    async def main(engine: RawEngine) -> None:
        async with inline_server(_keep_alive_handler) as (url, accepted):
            assert await fetch(engine, get(f"{url}/", "POST", b"x")) == (200, b"ok")
            (pooled,) = engine._idle[(url, None)]
            pooled.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            assert pooled.state is _State.CLOSED and pooled in engine._idle[(url, None)]
            assert await fetch(engine, get(f"{url}/", "POST", b"y")) == (200, b"ok")
            assert len(accepted) == 2 and pooled not in engine._idle[(url, None)]

    run(main)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_stale_reused_connection_is_retried_once_for_idempotent_requests(method: str) -> None:
    async def main(engine: RawEngine) -> None:
        async with inline_server(_stale_handler) as (url, accepted):
            for _ in range(3):
                body = b"x" if method == "PUT" else None
                assert await fetch(engine, get(f"{url}/", method, body)) == (200, b"ok")
            assert len(accepted) == 3

    run(main)


def test_post_and_streamed_bodies_are_never_retried() -> None:
    async def main(engine: RawEngine) -> None:
        async with inline_server(_stale_handler) as (url, accepted):
            assert await fetch(engine, get(f"{url}/")) == (200, b"ok")
            with pytest.raises(UpstreamError):
                await engine.send(get(f"{url}/", "POST", b"x"))
            assert await fetch(engine, get(f"{url}/")) == (200, b"ok")
            with pytest.raises(UpstreamError):
                await engine.send(get(f"{url}/", "PUT", _stream(10), [("content-length", "10")]))
            assert len(accepted) == 2

    run(main)


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_a_private_ca(tls_upstream: Server, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"https://127.0.0.1:{tls_upstream.port}"

    async def main(engine: RawEngine) -> None:
        for _ in range(3):
            status, body = await fetch(engine, get(f"{url}/echo", ssl=context))
            assert status == 200 and f'["Host", "127.0.0.1:{tls_upstream.port}"]'.encode() in body
        assert len(engine._connections) == 1
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await engine.send(get(f"{url}/echo"))  # the system trust store does not know the CA

    run(main)


def test_line_breaks_inside_fields_are_never_sent() -> None:
    """Request splitting is impossible: a CR or LF inside a header value or the target is refused
    before anything is written (nothing listens on the port, so a send would be a connect error)."""

    async def attempt(url: str, headers: list[tuple[str, str]]) -> str:
        engine = RawEngine()
        await engine.start()
        try:
            await engine.send(UpstreamRequest("GET", url, headers, None, 1.0))
        except UpstreamError as exc:
            return str(exc)
        finally:
            await engine.close()
        return "sent"

    port = free_port()
    for url, headers in [
        (f"http://127.0.0.1:{port}/x", [("x-a", "1\r\nx-injected: 2")]),
        (f"http://127.0.0.1:{port}/x", [("x-a", "bare\nlf")]),
        (f"http://127.0.0.1:{port}/x HTTP/1.1\r\nx: y", []),
    ]:
        assert "line break" in asyncio.run(attempt(url, headers))


# -- the state machine, byte by byte (no network) -------------------------------------------------


class _FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.calls.append("write")

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
LOST = "lost"  # connection_lost(None): a FIN, or our own close/abort
RESET = "reset"  # connection_lost(ConnectionResetError())
Step = bytes | str


def state_of(conn: _Connection) -> _State:
    """``conn.state`` read afresh: mypy keeps it narrowed by an assert across the calls that change it."""
    return conn.state


def _drive(steps: list[Step], head_request: bool = False) -> tuple[_Checked, _FakeTransport, list[str]]:
    """A connection made, given ``begin``, then fed ``steps``: response bytes, LOST, RESET, "fail"
    (the request body's writer failing), "finish" (the response released), "begin" (another exchange).
    Returns it, its transport, and the states it went through after IDLE, in lower case."""
    loop = asyncio.new_event_loop()
    try:
        transport = _FakeTransport()
        conn = _Checked(RawEngine(), ("http://upstream", None), loop)
        conn.connection_made(cast(Any, transport))
        conn.begin(head_request)
        for step in steps:
            if isinstance(step, bytes):
                conn.data_received(step)
            elif step in (LOST, RESET):
                conn.connection_lost(None if step == LOST else ConnectionResetError())
            elif step == "fail":
                conn.fail(UpstreamError("sending the body failed"))
            elif step == "finish":
                conn.finish()
            else:
                assert step == "begin"
                conn.begin(False)
    finally:
        loop.close()
    trail: list[_State] = conn.__dict__["trail"]
    return conn, transport, [state.name.lower() for state in trail[1:]]


SCENARIOS: list[tuple[list[Step], list[str], bytes]] = [
    ([OK, "finish"], ["awaiting_head", "reading_body", "complete", "idle"], b""),  # pooled, emptied
    ([OK[:20], OK[20:]], ["awaiting_head", "reading_body", "complete"], b"ok"),
    (
        [OK.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n")],
        ["awaiting_head", "reading_body", "must_close"],
        b"ok",
    ),
    ([OK.replace(b"1.1", b"1.0")], ["awaiting_head", "reading_body", "must_close"], b"ok"),
    (
        [OK.replace(b"1.1", b"1.0").replace(b"OK\r\n", b"OK\r\nConnection: keep-alive\r\n")],
        ["awaiting_head", "reading_body", "complete"],
        b"ok",
    ),
    (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", b"0\r\n\r\n"],
        ["awaiting_head", "reading_body", "complete"],
        b"ok",
    ),
    (  # interim responses are skipped; a 1xx body (150 with a length) is no part of the final one
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 150 X\r\nContent-Length: 3\r\n\r\nxyz" + OK,
        ],
        [
            "awaiting_head",
            "interim",
            "awaiting_head",
            "interim",
            "awaiting_head",
            "interim",
            "awaiting_head",
            "reading_body",
            "complete",
        ],
        b"ok",
    ),
    ([OK + b"\r\n\r\n"], ["awaiting_head", "reading_body", "complete"], b"ok"),  # a stray CRLF: harmless
    ([OK + OK], ["awaiting_head", "reading_body", "complete", "must_close"], b"ok"),  # a second response
    (
        [OK, "fail"],
        ["awaiting_head", "reading_body", "complete", "must_close"],
        b"ok",
    ),  # late upload error
    ([OK, LOST], ["awaiting_head", "reading_body", "complete", "must_close"], b"ok"),
    (
        [b"HTTP/1.0 200 OK\r\n\r\nall", b" of it", LOST],
        ["awaiting_head", "reading_body", "must_close"],
        b"all of it",
    ),
    ([b"HTTP/1.0 200 OK\r\n\r\nall", RESET], ["awaiting_head", "reading_body", "body_failed"], b"all"),
    ([OK[:-1], LOST], ["awaiting_head", "reading_body", "body_failed"], b"o"),
    ([OK[:-1], "fail", OK[-1:]], ["awaiting_head", "reading_body", "body_failed"], b"o"),
    ([OK[:10], LOST], ["awaiting_head", "head_failed"], b""),
    ([b"HTTP/1.1 100 Continue\r\n", LOST], ["awaiting_head", "head_failed"], b""),
    (
        [b"HTTP/1.1 150 X\r\nContent-Length: 3\r\n\r\nx", LOST],
        ["awaiting_head", "interim", "head_failed"],
        b"",
    ),
    (
        [b"HTTP/1.1 100 Continue\r\n\r\n", "fail", LOST],
        ["awaiting_head", "interim", "awaiting_head", "head_failed"],
        b"",
    ),
    ([b"garbage\r\n\r\n"], ["awaiting_head", "head_failed"], b""),
    ([b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD], ["awaiting_head", "head_failed"], b""),
    (
        [OK, "finish", b"HTTP/1.1 408 Timeout\r\n\r\n"],
        ["awaiting_head", "reading_body", "complete", "idle", "closed"],
        b"",
    ),
    ([OK, "finish", LOST], ["awaiting_head", "reading_body", "complete", "idle", "closed"], b""),
    (
        [OK, "finish", "begin", OK],
        [
            "awaiting_head",
            "reading_body",
            "complete",
            "idle",
            "awaiting_head",
            "reading_body",
            "complete",
        ],
        b"ok",
    ),
    ([OK[:-1], "finish"], ["awaiting_head", "reading_body"], b"o"),  # abandoned mid-body: aborted
]
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


@pytest.mark.parametrize(("steps", "trail", "body"), SCENARIOS)
def test_state_machine(steps: list[Step], trail: list[str], body: bytes) -> None:
    conn, _, seen = _drive(steps)
    assert seen == trail
    assert b"".join(conn.body) == body
    assert not _Checked.violations


def test_every_transition_is_exercised() -> None:
    """SCENARIOS and two HEAD responses between them make every move _TRANSITIONS allows."""
    made: set[tuple[str, str]] = set()
    for steps, _, _ in SCENARIOS:
        trail = ["idle", *_drive(steps)[2]]
        made.update(itertools.pairwise(trail))
    for head in (HEAD_OK, HEAD_OK.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n")):
        trail = ["idle", *_drive([head], head_request=True)[2]]
        made.update(itertools.pairwise(trail))
    allowed = {
        (old.name.lower(), new.name.lower()) for old, news in raw_engine._TRANSITIONS.items() for new in news
    }
    assert set(raw_engine._TRANSITIONS) == set(_State)
    assert made == allowed
    assert {state for state in _State if state.head_pending} == {_State.AWAITING_HEAD, _State.INTERIM}
    assert {state for state in _State if state.received} == {_State.COMPLETE, _State.MUST_CLOSE}


def test_failures_keep_their_first_error_and_their_wording() -> None:
    conn, transport, _ = _drive([OK[:10], "fail", RESET])
    assert conn.state is _State.HEAD_FAILED and str(conn.error) == "sending the body failed"
    assert transport.calls == ["abort"]
    conn, _, _ = _drive([OK[:-1], RESET])
    assert "not completed: the upstream closed the connection mid-body: ConnectionResetError()" in str(
        conn.error
    )
    conn, _, _ = _drive([b"HTTP/1.1 200 OK\r\n", LOST])
    assert str(conn.error) == "the upstream closed the connection before a complete response head"
    conn, transport, _ = _drive([OK, OK])
    assert conn.error is None and transport.calls == ["close"]  # a second response costs the connection only


def test_head_and_101_responses_end_at_their_head() -> None:
    head = HEAD_OK
    conn, transport, seen = _drive([head], head_request=True)
    assert seen == ["awaiting_head", "complete"] and conn.parser_dirty and conn.finish()
    conn, transport, seen = _drive([head, b"stray"], head_request=True)
    assert seen == ["awaiting_head", "complete", "must_close"] and not conn.finish()
    assert transport.calls == ["close"]  # after a complete response: politely
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    conn, transport, seen = _drive([upgrade + b"frames"])
    assert seen == ["awaiting_head", "must_close"] and transport.calls == ["close"]
    conn, transport, seen = _drive([upgrade], head_request=True)  # a 101 to a HEAD is no keeper either
    assert seen == ["awaiting_head", "must_close"]


def test_closed_connections_take_no_exchange() -> None:
    conn, transport, seen = _drive([OK, "finish", b"HTTP/1.1 408 Timeout\r\n\r\n"])
    assert seen[-1] == "closed" and transport.calls == ["close"]
    with pytest.raises(UpstreamError, match="closed before the request was sent"):
        conn.begin(False)
    assert conn.state is _State.CLOSED
    conn, transport, _ = _drive([OK[:-1], "finish"])  # abandoned mid-body: aborted, settled when lost
    assert transport.calls == ["abort"] and state_of(conn) is _State.READING_BODY
    conn.connection_lost(None)
    assert state_of(conn) is _State.BODY_FAILED and conn.transport is None
    assert not _Checked.violations
