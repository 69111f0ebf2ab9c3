"""Hostile clients on raw sockets against the gateway started exactly as ``kairos run`` starts it
(the production server settings and the connection guard of kairos/server.py).

Each case is something nginx, Envoy or Kong refuse by default: request smuggling shapes, heads too
large or with too many fields, slow heads (slowloris), Host rules, forged forwarding headers, too
many connections, and WebSocket upgrades refused in bulk. Every case asserts what the client got
and what reached the upstream (its ``/seen`` log): a smuggled request would show up there.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, kairos_run, route

HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {
        "version": 1,
        "jwt": {"secret": "s" * 40},
        "routers": [
            route("/up/{*rest}", "/echo/{rest}", [backend(upstream)], methods=("GET", "POST")),
            route("/ws-guarded", "/ws/x", [backend(upstream, scheme="ws")], protocol="websocket",
                  auth_required=True),
            route("/ws-refused", "/ws-reject", [backend(upstream, scheme="ws")], protocol="websocket"),
            route("/drip", "/drip", [backend(upstream)]),
        ],
    }  # fmt: skip
    env = {"KAIROS_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "KAIROS_MAX_CONNECTIONS": "60"}
    with kairos_run(module_tmp, config, env=env) as server:
        yield server


def exchange(server: Server, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` and read until the gateway closes the connection (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return reply


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def error_type(reply: bytes) -> str:
    body = reply.split(b"\r\n\r\n", 1)[1]
    data: dict[str, Any] = json.loads(body)
    assert {"error", "type", "timestamp", "request_id"} <= set(data)
    return str(data["type"])


def seen(upstream: Server) -> list[list[str]]:
    answer: list[list[str]] = httpx.get(f"{upstream.url}/seen?clear=1", timeout=5).json()
    return answer


# -- request smuggling ----------------------------------------------------------------------------

SMUGGLED = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

SMUGGLING = {
    "cl-and-te": b"POST /up/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-and-cl": b"POST /up/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "two-content-lengths": b"POST /up/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    b"Content-Length: 40\r\n\r\n" + SMUGGLED,
    "te-obfuscated": b"POST /up/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-space-before-colon": b"POST /up/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "signed-content-length": b"POST /up/a HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd" + SMUGGLED,
    "bad-chunk-size": b"POST /up/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;\x00\r\nabcd\r\n0\r\n\r\n" + SMUGGLED,
    "lf-only-lines": b"POST /up/a HTTP/1.1\nHost: x\nContent-Length: 4\n\nabcd" + SMUGGLED,
    "nul-in-header": b"GET /up/a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" + SMUGGLED,
    "cr-in-header": b"GET /up/a HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_shapes_never_reach_the_upstream_as_a_second_request(
    gateway: Server, upstream: Server, raw: bytes
) -> None:
    seen(upstream)
    reply = exchange(gateway, raw)
    codes = statuses(reply)
    assert codes, reply
    reached = seen(upstream)
    assert ["GET", "/echo/smuggled"] not in reached, (reply, reached)
    if codes[0] == 400:
        assert error_type(reply) == "bad_request" and len(codes) == 1
    else:  # parsed one (unambiguous) way: then exactly as sent, and never twice
        assert len(reached) <= 1, reached


# -- head limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n",  # one 8 MB header
        b"X-H: 1\r\n" * 20_000,  # 20,000 header lines
        b"X-H: 1\r\n" * 100,  # 101 fields with Host
        b"X-Big: " + b"a" * (64 * 1024) + b"\r\n",  # just over 64 KiB
    ],
    ids=["8mb-header", "20000-lines", "101-fields", "64kib-plus"],
)
def test_oversized_heads_are_431_and_never_forwarded(gateway: Server, upstream: Server, head: bytes) -> None:
    seen(upstream)
    reply = exchange(gateway, b"GET /up/big HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n", timeout=15)
    assert statuses(reply) == [431], reply[:300]
    assert error_type(reply) == "headers_too_large"
    assert seen(upstream) == []


def test_a_head_at_the_limits_is_served_with_one_server_header(gateway: Server) -> None:
    reply = exchange(
        gateway, b"GET /up/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"X-H: 1\r\n" * 98 + b"\r\n"
    )
    assert statuses(reply) == [200]
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\nserver: ") == 1 and b"\r\nserver: kairos" in head, head  # never the upstream's


def test_an_oversized_pipelined_head_waits_for_the_response_before_it(gateway: Server) -> None:
    """The 431 is never written into the middle of the response still streaming ahead of it."""
    first = b"GET /drip?size=5&interval=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET /up/p HTTP/1.1\r\nHost: x\r\n" + b"X-H: 1\r\n" * 150 + b"\r\n"
    reply = exchange(gateway, first + second)
    assert statuses(reply) == [200, 431], reply
    _, rest = reply.split(b"\r\n\r\n", 1)
    assert rest.startswith(b"xxxxxHTTP/1.1 431"), rest[:80]


# -- slow and idle clients ------------------------------------------------------------------------


def test_a_slow_head_is_closed_after_the_header_timeout(gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /up/slow HTTP/1.1\r\n")
        reply = b""
        for _ in range(40):  # a header byte every 0.1 s, for up to 4 s
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                chunk = None
            finally:
                sock.setblocking(True)
            if chunk is not None:
                reply += chunk
                break
        elapsed = time.monotonic() - started
    assert statuses(reply) == [408], reply
    assert error_type(reply) == "request_timeout"
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 2.0, elapsed


def test_a_connection_that_sends_nothing_is_closed(gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT + 2.0


def test_slowloris_cannot_lock_out_other_clients(gateway: Server) -> None:
    """More slow sockets than the connection cap: new clients are refused with 503 (a descriptor
    back at once) only while the slow ones hold the cap, and served again once the head timeout
    has closed them; established clients are never starved."""
    with httpx.Client(base_url=gateway.url, timeout=10) as established:
        assert established.get("/up/before").status_code == 200
        slow: list[socket.socket] = []
        try:
            for _ in range(80):
                sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                sock.sendall(b"GET /up/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
            refused = exchange(gateway, b"GET /up/new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert statuses(refused) == [503] and error_type(refused) == "upstream_unavailable"
            assert established.get("/up/during").status_code == 200  # its connection was already in
            deadline = time.monotonic() + HEADER_TIMEOUT + 4.0
            while time.monotonic() < deadline:
                reply = exchange(gateway, b"GET /up/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if statuses(reply) == [200]:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("new clients were still refused after the header timeout")
        finally:
            for sock in slow:
                sock.close()


# -- Host -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/up/h", b"/health"])
def test_http11_without_host_or_with_two_is_400(gateway: Server, upstream: Server, path: bytes) -> None:
    seen(upstream)
    for head in (b"", b"Host: a\r\nHost: b\r\n"):
        reply = exchange(gateway, b"GET " + path + b" HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        assert statuses(reply) == [400], reply
        assert error_type(reply) == "bad_request"
    assert seen(upstream) == []
    reply = exchange(gateway, b"GET " + path + b" HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
    assert statuses(reply) == [200], reply


# -- forged forwarding headers --------------------------------------------------------------------


def test_forged_forwarding_headers_never_reach_the_upstream(gateway: Server) -> None:
    forged = (
        b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"True-Client-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n"
    )
    reply = exchange(gateway, b"GET /up/f HTTP/1.1\r\nHost: gw\r\n" + forged + b"Connection: close\r\n\r\n")
    assert statuses(reply) == [200]
    headers = {name.lower(): value for name, value in json.loads(reply.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert "6.6.6.6" not in json.dumps(headers) and "evil" not in json.dumps(headers)
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"


# -- WebSocket upgrades refused in bulk -----------------------------------------------------------

UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_refused_upgrades_are_answered_and_log_no_error(gateway: Server) -> None:
    for _ in range(10):
        unauthenticated = exchange(gateway, UPGRADE % b"/ws-guarded")
        assert statuses(unauthenticated) == [401] and error_type(unauthenticated) == "authentication_error"
        refused = exchange(gateway, UPGRADE % b"/ws-refused")
        assert statuses(refused) == [403] and refused.endswith(b"no")
    time.sleep(0.2)
    log = gateway.output()
    assert "ERROR" not in log and "handshake" not in log, log[-2000:]
