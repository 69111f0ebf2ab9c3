"""Fault injection: the real gateway (uvicorn) in front of misbehaving upstreams and clients.

The protocol-level misbehaviour comes from ``tests.servers.raw_upstream`` (raw asyncio streams);
the well-behaved upstreams ``a`` and ``b`` (aiohttp) serve the upload and balancing cases. After
each fault the gateway must still answer, and its in-flight counts must be back to zero: checked
through ``least_connections``, which only alternates evenly between two idle backends.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, gateway_server, route, rss_bytes

ALL = ("GET", "POST", "PUT", "HEAD")
HANG_TIMEOUT_MS = 800
CONNECT_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener with backlog 0 that never accepts, its accept
    queue filled by connections of our own. Linux then drops further SYNs (the client retries
    after 1 s, 3 s, ...), which is a connect timeout without leaving 127.0.0.1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip("cannot make a connect timeout on this loopback (SYNs are not dropped)")
        except TimeoutError:
            pass  # the SYN went unanswered, as wanted
        finally:
            probe.close()
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path, raw: Server, blackhole: int, upstream: Server, upstream_b: Server
) -> Iterator[Server]:
    both = [backend(upstream), backend(upstream_b)]
    lc: dict[str, Any] = {"load_balancing_strategy": "least_connections"}
    config = {
        "version": 1,
        "routers": [
            route("/raw/{*rest}", "/{*rest}", [backend(raw)], ALL, timeout_ms=10000),
            route("/hang", "/hang", [backend(raw)], ALL, timeout_ms=HANG_TIMEOUT_MS),
            route(
                "/connect-timeout",
                "/",
                [backend(blackhole)],
                connect_timeout_ms=CONNECT_TIMEOUT_MS,
                timeout_ms=10000,
            ),
            route("/lc/whoami", "/whoami", both, **lc),
            route("/lc/slow", "/slow", both, timeout_ms=2000, **lc),
            route("/lc/drop", "/drop", both, **lc),
            route("/lc/upload", "/upload", both, ("POST",), timeout_ms=10000, **lc),
            route("/lc/stream", "/stream", both, **lc),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["type"] == kind
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_healthy(gateway: Server) -> None:
    """A fresh connection gets /health and a proxied answer; counters are back to zero."""
    assert gateway.process.poll() is None, "the gateway process died"
    with httpx.Client(base_url=gateway.url, timeout=10) as fresh:
        assert fresh.get("/health").json()["status"] == "healthy"
        assert fresh.get("/raw/ok").text == "GET /ok 0"
    assert_no_requests_in_flight(gateway)


def assert_no_requests_in_flight(gateway: Server, within: float = 5.0) -> None:
    """least_connections sends sequential requests alternately to two idle backends; a leaked
    in-flight count on one of them would send every request to the other."""
    deadline = time.monotonic() + within
    with httpx.Client(base_url=gateway.url, timeout=10) as fresh:
        while True:
            names = Counter(fresh.get("/lc/whoami").json()["server"] for _ in range(10))
            if names == {"a": 5, "b": 5} or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # a request of a client that left may still be finishing
    assert names == {"a": 5, "b": 5}, f"backends not idle: {names}"


def test_upstream_closing_mid_body_is_never_a_clean_response(client: httpx.Client, gateway: Server) -> None:
    # A small body is no different: the head goes out as soon as the upstream sends it (never held
    # back for the body), so a body cut short afterwards is an aborted response too, as in nginx.
    for path in ("/raw/cut?length=500000&send=1000", "/raw/cut-chunked", "/raw/cut?length=1000&send=100"):
        received = 0
        with (
            pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
            client.stream("GET", path) as response,
        ):
            assert response.status_code == 200  # the response had started: only an abort is honest
            for chunk in response.iter_raw():
                received += len(chunk)
        assert received < 500000
    assert_healthy(gateway)


def test_garbage_instead_of_a_status_line_is_502(client: httpx.Client, gateway: Server) -> None:
    body = assert_error(client.get("/raw/garbage"), 502, "upstream")
    assert "status line" in body["error"].lower()
    assert_healthy(gateway)


def test_upstream_that_never_answers_is_504_after_the_route_timeout(
    client: httpx.Client, gateway: Server
) -> None:
    started = time.monotonic()
    body = assert_error(client.get("/hang"), 504, "timeout")
    elapsed = time.monotonic() - started
    assert HANG_TIMEOUT_MS / 1000 * 0.9 <= elapsed < 5.0, elapsed  # deadline fires up to 50 ms late
    assert "0.8s" in body["error"]
    assert_healthy(gateway)


def test_connect_timeout_is_504(client: httpx.Client, gateway: Server) -> None:
    started = time.monotonic()
    body = assert_error(client.get("/connect-timeout"), 504, "timeout")
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed  # the route allows 10 s in total: the connect timeout cut it short
    assert "connecting" in body["error"] and "0.3" in body["error"]
    assert_healthy(gateway)


def test_upstream_closing_keepalive_connections_causes_no_502(client: httpx.Client) -> None:
    # /raw/lie promises keep-alive, then closes right after every response.
    for n in range(100):
        assert client.get(f"/raw/lie?n={n}").text == f"GET /lie?n={n} 0"
        assert client.post(f"/raw/lie?n={n}", content=b"abc").text == f"POST /lie?n={n} 3"
    # Closing an idle connection after 10 ms, while the next request arrives around that moment,
    # races the gateway's reuse of the pooled connection; idempotent requests are retried once.
    for n in range(100):
        time.sleep(0.008 + (n % 5) / 1000)
        assert client.get(f"/raw/idle-close?ms=10&n={n}").status_code == 200


def raw_request(gateway: Server, head: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def test_client_leaving_mid_upload_leaks_nothing(client: httpx.Client, gateway: Server) -> None:
    client.post("/lc/upload", content=b"w" * 300_000).raise_for_status()  # warm
    before, _ = rss_bytes(gateway.pid)
    for n in range(15):
        for path, length, sent in (
            ("/lc/upload", 20_000_000, 1_000_000),  # streamed upload, cut off
            ("/lc/upload", 50_000, 1_000),  # small upload, read whole before the upstream is asked
            ("/raw/echo", 20_000_000, 1_000_000),
        ):
            sock = raw_request(
                gateway, f"POST {path}?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}", b""
            )
            sock.sendall(b"u" * sent)
            sock.close()
    time.sleep(0.3)
    data = client.post("/lc/upload", content=b"v" * 300_000).json()
    assert data["bytes"] == 300_000
    after, _ = rss_bytes(gateway.pid)
    assert after - before < 20 * 2**20, f"gateway grew by {(after - before) / 2**20:.1f} MiB"
    assert_healthy(gateway)
    # The client left: that is no upstream failure, so none is reported (or answered).
    assert "ClientDisconnected" not in gateway.output()


def test_early_upstream_answer_during_upload_reaches_the_client(
    client: httpx.Client, gateway: Server
) -> None:
    head = "POST /raw/early-413 HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000"
    with raw_request(gateway, head, b"e" * 262_144) as sock:  # most of the body is never sent
        reply = b""
        while b"too large" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert reply.endswith(b'{"error": "too large"}'), reply[-200:]
    # A client that insists on sending it all gets the 413 or a clean transport error.
    try:
        response = client.post("/raw/early-413", content=b"e" * 8_000_000)
    except httpx.TransportError:
        pass
    else:
        assert response.status_code == 413
        assert response.json() == {"error": "too large"}
    assert_healthy(gateway)


def test_huge_upstream_headers_are_proxied_or_502(client: httpx.Client, gateway: Server) -> None:
    one = client.get("/raw/huge-header?mode=one&kib=60")  # a single 60 KiB header line
    assert_error(one, 502, "upstream")
    many = client.get("/raw/huge-header?mode=many&kib=60")  # sixty 1 KiB headers
    assert many.status_code in (200, 502), many.text
    if many.status_code == 200:
        assert many.content == b"ok"
        assert len(many.headers["x-big-59"]) == 1000
    else:
        assert_error(many, 502, "upstream")
    assert_healthy(gateway)


def test_bodiless_responses_end_cleanly_and_keep_the_connection(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=5) as client:  # one keep-alive connection
        for _ in range(3):
            no_content = client.get("/raw/status/204")
            assert no_content.status_code == 204
            assert no_content.content == b""
            assert no_content.headers["x-empty"] == "yes"
            assert "content-length" not in no_content.headers
            for length in (1234, 200_000):  # a 304 may state the size of the 200 it stands for
                not_modified = client.get(f"/raw/status/304?length={length}")
                assert not_modified.status_code == 304
                assert not_modified.content == b""
                assert not_modified.headers["etag"] == '"v1"'
            for size in (5000, 200_000):  # HEAD: the GET's Content-Length, no body
                head = client.head(f"/raw/head?size={size}")
                assert head.status_code == 200
                assert head.headers["content-length"] == str(size)
                assert head.content == b""
                assert len(client.get(f"/raw/head?size={size}").content) == size
            informational = client.get("/raw/informational")  # 100 and 103 before the 200
            assert informational.status_code == 200
            assert informational.content == b"final"
    assert "shorter than Content-Length" not in gateway.output()
    assert_healthy(gateway)


def test_many_concurrent_clients_and_counters_return_to_zero(gateway: Server) -> None:
    async def wave() -> Counter[str]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        outcomes: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20, limits=limits) as http:

            async def one(n: int) -> None:
                kind = n % 10
                if kind < 6:
                    response = await http.get("/lc/slow", params={"delay": "0.2"})
                    assert response.status_code == 200 and response.json()["slow"] is True
                    outcomes["ok"] += 1
                elif kind == 6:
                    response = await http.get("/lc/stream", params={"size": "300000"})
                    assert response.status_code == 200 and len(response.content) == 300_000
                    outcomes["stream"] += 1
                elif kind == 7:
                    assert (await http.get("/lc/drop")).status_code == 502
                    outcomes["drop"] += 1
                elif kind == 8:
                    assert (await http.get("/lc/slow", params={"delay": "5"})).status_code == 504
                    outcomes["timeout"] += 1
                else:  # a client that gives up before the answer
                    with pytest.raises(httpx.ReadTimeout):
                        await http.get("/lc/slow", params={"delay": "1"}, timeout=0.3)
                    outcomes["gave_up"] += 1

            async with asyncio.timeout(30):
                await asyncio.gather(*(one(n) for n in range(200)))
        return outcomes

    outcomes = asyncio.run(wave())
    assert outcomes == {"ok": 120, "stream": 20, "drop": 20, "timeout": 20, "gave_up": 20}
    assert_healthy(gateway)
