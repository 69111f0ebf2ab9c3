"""WebSocket proxying (``protocol: websocket``): the real gateway (uvicorn) in front of real aiohttp
upstreams, driven by the ``websockets`` client, all on 127.0.0.1.

Every test runs its asyncio code under a bounded ``asyncio.wait_for`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.processes import Server, backend, free_port, gateway_server, route

TIMEOUT = 20.0


def websocket_route(
    external: str, internal: str, backends: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return route(external, internal, backends, protocol="websocket", **extra)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    dead = free_port()  # nothing listens here: connection refused
    config = {
        "version": 1,
        "routers": [
            websocket_route("/chat/{room}", "/ws/room/{room}", [backend(upstream, scheme="ws")]),
            # kairos-rs answers 501 under /ws/...; Kairos proxies it like any other path.
            websocket_route("/ws/{channel}", "/ws/{channel}", [backend(upstream, scheme="http")]),
            websocket_route("/logged/{key}", "/logged-ws/{key}", [backend(upstream, scheme="ws")]),
            websocket_route(
                "/balanced",
                "/ws/balanced",
                [backend(upstream, scheme="ws"), backend(upstream_b, scheme="ws")],
                load_balancing_strategy="round_robin",
            ),
            websocket_route("/dead", "/ws/dead", [backend(dead, scheme="ws")]),
            websocket_route("/rejecting", "/ws-reject", [backend(upstream, scheme="ws")]),
            websocket_route(
                "/guarded",
                "/ws-auth",
                [backend(upstream, scheme="ws")],
                circuit_breaker={"failure_threshold": 3, "reset_timeout_ms": 60000},
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def ws_url(gateway: Server, path: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = TIMEOUT) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def open_ws(url: str, **kwargs: Any) -> Any:
    """A client that ignores proxy environment variables and accepts large messages."""
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    return connect(url, proxy=None, **kwargs)


async def whoami(ws: ClientConnection) -> dict[str, Any]:
    await ws.send("whoami")
    reply = await ws.recv()
    assert isinstance(reply, str)
    data: dict[str, Any] = json.loads(reply)
    return data


def header_map(data: dict[str, Any]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in data["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def assert_error_body(body: bytes | bytearray, kind: str, request_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    assert set(data) == {"error", "type", "timestamp", "request_id"}
    assert data["type"] == kind
    assert data["error"]
    datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00"))
    if request_id is not None:
        assert data["request_id"] == request_id
    return data


async def refused(url: str, **kwargs: Any) -> InvalidStatus:
    """Connects expecting the upgrade to be refused with an HTTP response (never a 101)."""
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(url, **kwargs):
            pass
    return info.value


def poll_json(url: str, predicate: Any, timeout: float = 5.0) -> Any:
    """GETs ``url`` on the upstream directly until ``predicate(json)`` holds."""
    deadline = time.monotonic() + timeout
    data = None
    with httpx.Client(timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            data = http.get(url).json()
            if predicate(data):
                return data
            time.sleep(0.05)
    raise AssertionError(f"{url} never satisfied the condition; last answer {data!r}")


# --- messages -----------------------------------------------------------------------------------


def test_text_and_binary_echo_keep_their_type(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/lobby")) as ws:
            await ws.send("hello ünïcode ✓")
            assert await ws.recv() == "hello ünïcode ✓"
            await ws.send(b"\x00\x01\xffbinary")
            reply = await ws.recv()
            assert isinstance(reply, bytes) and reply == b"\x00\x01\xffbinary"
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(b"")
            assert await ws.recv() == b""

    run(scenario())


def test_large_binary_message_round_trips(gateway: Server) -> None:
    payload = bytes(range(256)) * (2 * 1024 * 1024 // 256)  # 2 MiB

    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/big")) as ws:
            await ws.send(payload)
            reply = await ws.recv()
            assert isinstance(reply, bytes)
            assert len(reply) == len(payload) and reply == payload

    run(scenario())


def test_many_messages_arrive_in_order(gateway: Server) -> None:
    count = 500

    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/ordered")) as ws:

            async def sender() -> None:
                for index in range(count):
                    await ws.send(f"m{index}" if index % 2 else f"m{index}".encode())

            sending = asyncio.create_task(sender())
            received = [await ws.recv() for _ in range(count)]
            await sending
        expected = [f"m{index}" if index % 2 else f"m{index}".encode() for index in range(count)]
        assert received == expected

    run(scenario())


def test_concurrent_connections_get_their_own_echoes(gateway: Server) -> None:
    async def session(number: int) -> list[str]:
        async with open_ws(ws_url(gateway, f"/chat/room{number}")) as ws:
            info = await whoami(ws)
            assert info["path"] == f"/ws/room/room{number}"
            replies = []
            for index in range(10):
                await ws.send(f"client{number}-{index}")
                replies.append(await ws.recv())
                await asyncio.sleep(0)
            return replies

    async def scenario() -> None:
        results = await asyncio.gather(*(session(number) for number in range(20)))
        for number, replies in enumerate(results):
            assert replies == [f"client{number}-{index}" for index in range(10)]

    run(scenario())


# --- what reaches the backend ------------------------------------------------------------------


def test_path_params_and_query_reach_backend(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/blue%20room?token=abc&x=1&x=2&enc=%2F%20")) as ws:
            info = await whoami(ws)
        assert info["server"] == "a"
        assert info["path"] == "/ws/room/blue%20room?token=abc&x=1&x=2&enc=%2F%20"

    run(scenario())


def test_ws_prefixed_path_is_proxied(gateway: Server) -> None:
    """kairos-rs answers 501 for /ws/...; here it is an ordinary route (with an http:// backend)."""

    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/ws/feed?since=42")) as ws:
            info = await whoami(ws)
            await ws.send("still echoing")
            assert await ws.recv() == "still echoing"
        assert info["path"] == "/ws/feed?since=42"

    run(scenario())


def test_subprotocol_cookies_auth_and_request_id_reach_backend(gateway: Server, upstream: Server) -> None:
    async def scenario() -> None:
        async with open_ws(
            ws_url(gateway, "/chat/secure"),
            subprotocols=["chat.v2", "chat.v1"],
            additional_headers={
                "Cookie": "session=s3cr3t; theme=dark",
                "Authorization": "Bearer token-123",
                "X-Api-Key": "key-456",
                "X-Request-ID": "trace-ws-0001",
                "X-Forwarded-For": "6.6.6.6",  # spoofed by an untrusted peer: replaced
            },
        ) as ws:
            assert ws.subprotocol == "chat.v2"  # the backend's choice, relayed to the client
            assert ws.response is not None
            assert ws.response.headers["X-Request-ID"] == "trace-ws-0001"
            info = await whoami(ws)
        headers = header_map(info)
        assert info["subprotocol"] == "chat.v2"
        assert headers["sec-websocket-protocol"] == ["chat.v2, chat.v1"]
        assert headers["cookie"] == ["session=s3cr3t; theme=dark"]
        assert headers["authorization"] == ["Bearer token-123"]
        assert headers["x-api-key"] == ["key-456"]
        assert headers["x-request-id"] == ["trace-ws-0001"]
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["http"]
        assert headers["x-forwarded-host"] == [f"127.0.0.1:{gateway.port}"]
        assert headers["host"] == [f"127.0.0.1:{upstream.port}"]  # the backend's own authority

    run(scenario())


def test_generated_request_id_is_sent_to_backend_and_client(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/ids")) as ws:
            assert ws.response is not None
            request_id = ws.response.headers["X-Request-ID"]
            info = await whoami(ws)
        assert request_id
        assert header_map(info)["x-request-id"] == [request_id]

    run(scenario())


def test_no_subprotocol_offered_means_none_negotiated(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/plain")) as ws:
            assert ws.subprotocol is None
            info = await whoami(ws)
        assert info["subprotocol"] is None
        assert "sec-websocket-protocol" not in header_map(info)

    run(scenario())


# --- refusals before accept --------------------------------------------------------------------


def test_plain_http_get_on_websocket_route_is_426(gateway: Server) -> None:
    with httpx.Client(timeout=5, trust_env=False) as http:
        response = http.get(f"{gateway.url}/chat/lobby", headers={"X-Request-ID": "plain-get-1"})
    assert response.status_code == 426
    assert response.headers["content-type"] == "application/json"
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["x-request-id"] == "plain-get-1"
    assert_error_body(response.content, "upgrade_required", "plain-get-1")


def test_upgrade_to_unknown_path_is_404_before_accept(gateway: Server) -> None:
    async def scenario() -> None:
        error = await refused(ws_url(gateway, "/nowhere/at/all"))
        assert error.response.status_code == 404
        body = assert_error_body(error.response.body, "route_not_found")
        assert body["request_id"] == error.response.headers["X-Request-ID"]
        assert "/nowhere/at/all" in body["error"]

    run(scenario())


def test_backend_not_listening_is_502_before_accept(gateway: Server) -> None:
    async def scenario() -> None:
        error = await refused(ws_url(gateway, "/dead"), additional_headers={"X-Request-ID": "dead-1"})
        assert error.response.status_code == 502
        assert error.response.headers["X-Request-ID"] == "dead-1"
        assert_error_body(error.response.body, "upstream", "dead-1")

    run(scenario())


def test_backend_refusing_upgrade_is_relayed_as_it_answered(gateway: Server) -> None:
    """A backend's HTTP answer to the upgrade is its answer, not a gateway failure."""

    async def scenario() -> None:
        error = await refused(ws_url(gateway, "/rejecting"), additional_headers={"X-Request-ID": "rej-1"})
        assert error.response.status_code == 403
        assert error.response.body == b"no"
        assert error.response.headers["X-Request-ID"] == "rej-1"

    run(scenario())


def test_refused_upgrades_do_not_open_the_circuit_for_valid_clients(gateway: Server) -> None:
    """Three anonymous clients with a bad token used to open the circuit and lock everyone out."""

    async def scenario() -> None:
        url = ws_url(gateway, "/guarded")
        for _ in range(6):
            error = await refused(url, additional_headers={"Authorization": "Bearer bad"})
            assert error.response.status_code == 401
            assert json.loads(error.response.body) == {"detail": "bad token"}
            assert error.response.headers["WWW-Authenticate"] == 'Bearer realm="chat"'
        async with open_ws(url, additional_headers={"Authorization": "Bearer good"}) as ws:
            await ws.send("still welcome")
            assert await ws.recv() == "still welcome"

    run(scenario())


# --- close codes -------------------------------------------------------------------------------


def test_backend_close_code_and_reason_reach_client(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/closing")) as ws:
            await ws.send("close:4002:server says bye")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4002
        assert info.value.rcvd.reason == "server says bye"
        assert ws.close_code == 4002 and ws.close_reason == "server says bye"

    run(scenario())


def test_backend_normal_close_reaches_client(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/closing")) as ws:
            await ws.send("close:1000:done")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1000, "done")

    run(scenario())


def test_client_close_code_and_reason_reach_backend(gateway: Server, upstream: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/logged/client-close")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close(4001, "client says bye")

    run(scenario())
    seen = poll_json(f"{upstream.url}/logged-close/client-close", lambda data: data is not None)
    assert seen == {"code": 4001, "reason": "client says bye"}


def test_client_close_code_reaches_backend_last_close(gateway: Server, upstream: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/last-close")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close(4123, "x")

    run(scenario())
    seen = poll_json(f"{upstream.url}/last-close", lambda data: data and data["code"] == 4123)
    assert seen == {"code": 4123}


def test_backend_close_code_survives_client_sending_meanwhile(gateway: Server) -> None:
    """The backend closes while the client is still sending: the backend's code must still reach
    the client (not an abnormal 1006)."""

    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/racing")) as ws:
            await ws.send("close:4003:closing while you talk")
            try:
                for index in range(200):
                    await ws.send(f"after-close-{index}")
            except ConnectionClosed:
                pass
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4003, "closing while you talk")

    for _ in range(5):
        run(scenario())


def test_client_close_code_survives_backend_sending_meanwhile(gateway: Server, upstream: Server) -> None:
    """The client closes while the backend streams to it: the client's code must still reach the
    backend (not a default 1000)."""

    async def scenario(key: str) -> None:
        async with open_ws(ws_url(gateway, f"/logged/{key}")) as ws:
            await ws.send("flood")
            for _ in range(20):
                assert str(await ws.recv()).startswith("flood-")
            await ws.close(4004, "enough")

    for attempt in range(5):
        key = f"flooded-{attempt}"
        run(scenario(key))
        seen = poll_json(f"{upstream.url}/logged-close/{key}", lambda data: data is not None)
        assert seen == {"code": 4004, "reason": "enough"}


def test_client_close_without_code_reaches_backend_as_going_away(gateway: Server, upstream: Server) -> None:
    """A close frame with no status code (a browser's ``ws.close()``) is relayed as 1001: uvicorn
    reports it exactly like a lost connection (1005), so the gateway cannot call it normal."""

    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/logged/no-code")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close(code=None)  # an empty close frame
            assert ws.close_code == 1005  # uvicorn answered our status-less close in kind

    run(scenario())
    seen = poll_json(f"{upstream.url}/logged-close/no-code", lambda data: data is not None)
    assert seen == {"code": 1001, "reason": ""}


def test_client_vanishing_closes_backend_session(gateway: Server, upstream: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/logged/vanished")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            ws.transport.abort()  # no close frame: TCP reset

    run(scenario())
    seen = poll_json(f"{upstream.url}/logged-close/vanished", lambda data: data is not None)
    assert seen["code"] == 1001  # relayed as "going away"


def test_backend_vanishing_closes_client_with_1011(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/logged/dropped")) as ws:
            await ws.send("drop")  # the backend aborts its TCP connection, no close frame
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1011
        assert ws.close_reason == "upstream connection lost"

    run(scenario())


# --- ping / pong -------------------------------------------------------------------------------


def test_client_ping_gets_pong_through_gateway(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/ping"), ping_interval=None) as ws:
            for payload in (b"one", b"two"):
                pong = await ws.ping(payload)
                latency = await asyncio.wait_for(pong, 5)
                assert latency >= 0
            await ws.send("after pings")
            assert await ws.recv() == "after pings"

    run(scenario())


def test_backend_ping_does_not_break_session(gateway: Server) -> None:
    async def scenario() -> None:
        async with open_ws(ws_url(gateway, "/chat/backend-ping")) as ws:
            for _ in range(3):
                await ws.send("ping-me")
                assert await ws.recv() == "pinged"
            await ws.send(b"still alive")
            assert await ws.recv() == b"still alive"
            info = await whoami(ws)
            assert info["path"] == "/ws/room/backend-ping"

    run(scenario())


# --- balancing ---------------------------------------------------------------------------------


def test_round_robin_alternates_backends_across_connections(gateway: Server) -> None:
    async def scenario() -> list[str]:
        servers = []
        for _ in range(6):
            async with open_ws(ws_url(gateway, "/balanced")) as ws:
                info = await whoami(ws)
                assert info["path"] == "/ws/balanced"
                servers.append(info["server"])
        return servers

    servers = run(scenario())
    assert set(servers) == {"a", "b"}
    assert all(first != second for first, second in itertools.pairwise(servers)), servers
