"""The real gateway (uvicorn) in front of a real upstream (aiohttp), both on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, free_port, gateway_server, route

ALL = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    dead = free_port()  # nothing listens here: connection refused
    config = {
        "version": 1,
        "routers": [
            route("/api/{tail}", "/echo/{tail}", [backend(upstream)], ALL),
            route("/cats/{id}", "/echo/cats/{id}", [backend(upstream)]),
            route("/static", "/echo/static", [backend(upstream)], ("GET", "POST")),
            route("/cookies", "/cookies", [backend(upstream)]),
            route("/hop", "/hop", [backend(upstream)]),
            route("/slow", "/slow", [backend(upstream)], timeout_ms=500),
            route("/slow-ok", "/slow", [backend(upstream)], timeout_ms=5000),
            route("/trickle", "/trickle", [backend(upstream)], timeout_ms=700),
            route("/status/{code}", "/status/{code}", [backend(upstream)], ALL),
            route("/refused", "/echo", [backend(dead)]),
            route("/drop", "/drop", [backend(upstream)]),
            route("/upload", "/upload", [backend(upstream)], ("POST", "PUT")),
            route("/stream", "/stream", [backend(upstream)]),
            {
                "external_path": "/legacy/{id}",
                "internal_path": "/echo/legacy/{id}",
                "methods": ["GET"],
                "host": "http://127.0.0.1",
                "port": upstream.port,
            },
            route("/dns", "/", [{"host": "udp://127.0.0.1", "port": 53}], protocol="dns"),
            route("/prefix/{*rest}", "/echo/under/{*rest}", [backend(upstream)], ALL),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def echoed_headers(response: httpx.Response) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "type", "timestamp", "request_id"}
    assert body["type"] == kind
    assert body["request_id"] == response.headers["x-request-id"]
    datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    return body


def test_proxies_method_path_query_and_body(client: httpx.Client) -> None:
    response = client.post("/api/things?b=2&a=1&a=3&empty=&enc=%2F%20", content=b"payload")
    assert response.status_code == 200
    data = response.json()
    assert data["method"] == "POST"
    assert data["raw_path"] == "/echo/things?b=2&a=1&a=3&empty=&enc=%2F%20"  # query forwarded unchanged
    assert data["body"] == "payload"


def test_legacy_host_port_route(client: httpx.Client) -> None:
    assert client.get("/legacy/7").json()["raw_path"] == "/echo/legacy/7"


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/cats/..%2F..%2Fadmin", "/echo/cats/..%2F..%2Fadmin"),
        ("/cats/a%2Fb", "/echo/cats/a%2Fb"),
        ("/cats/a%3Fb%23c", "/echo/cats/a%3Fb%23c"),
        ("/cats/%2E%2E", "/echo/cats/%2E%2E"),
        ("/cats/caf%C3%A9", "/echo/cats/caf%C3%A9"),
        ("/cats/a%20b", "/echo/cats/a%20b"),
    ],
)
def test_params_cannot_change_upstream_structure(client: httpx.Client, path: str, upstream_path: str) -> None:
    response = client.get(path)
    if path in ("/cats/%2E%2E", "/cats/..%2F..%2Fadmin"):
        assert_error(response, 400, "bad_request")  # a decoded '..' segment is refused outright
        return
    assert response.status_code == 200, response.text
    assert response.json()["raw_path"] == upstream_path


def test_raw_dot_segments_are_refused(gateway: Server) -> None:
    # httpx normalises '..' away, so send the raw request line ourselves.
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /cats/../static HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"type": "bad_request"' in reply


def test_forwarded_headers_and_request_id(client: httpx.Client) -> None:
    response = client.get("/api/x", headers={"X-Forwarded-For": "6.6.6.6", "Host": "public.example"})
    headers = echoed_headers(response)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]  # untrusted peer: spoofed chain replaced
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["public.example"]
    generated = response.headers["x-request-id"]
    assert len(generated) == 32 and headers["x-request-id"] == [generated]

    sent = client.get("/api/x", headers={"X-Request-ID": "trace-123"})
    assert sent.headers["x-request-id"] == "trace-123"
    assert echoed_headers(sent)["x-request-id"] == ["trace-123"]
    bogus = client.get("/api/x", headers={"X-Request-ID": "bad id with spaces"})
    assert bogus.headers["x-request-id"] != "bad id with spaces"


def test_upstream_host_header_is_the_backend(client: httpx.Client, upstream: Server) -> None:
    headers = echoed_headers(client.get("/api/x", headers={"Host": "public.example"}))
    assert headers["host"] == [f"127.0.0.1:{upstream.port}"]


def test_hop_by_hop_request_headers_are_stripped(client: httpx.Client) -> None:
    response = client.get(
        "/api/x",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "drop-me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9v",
            "Upgrade": "h2c",
            "X-Kept": "yes",
            "Authorization": "Bearer kept",
        },
    )
    headers = echoed_headers(response)
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in headers, name
    assert headers["x-kept"] == ["yes"]
    assert headers["authorization"] == ["Bearer kept"]


def test_repeated_request_headers_are_preserved(client: httpx.Client) -> None:
    response = client.get("/api/x", headers=[("X-Dup", "1"), ("X-Dup", "2")])
    assert echoed_headers(response)["x-dup"] == ["1", "2"]


def test_response_headers_repeated_and_hop_by_hop(client: httpx.Client) -> None:
    cookies = client.get("/cookies")
    assert cookies.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert cookies.headers.get_list("x-multi") == ["one", "two"]
    assert len(cookies.headers.get_list("date")) == 1
    hop = client.get("/hop")
    assert hop.headers["x-kept"] == "yes"
    for name in ("x-private-hop", "keep-alive", "proxy-authenticate"):
        assert name not in hop.headers, name


def test_status_codes_pass_through(client: httpx.Client) -> None:
    for code in (201, 204, 302, 404, 418, 500, 503):
        response = client.request("PATCH", f"/status/{code}")
        assert response.status_code == code
    assert client.get("/status/302").headers.get("location") is None  # no redirect following


def test_head_is_allowed_where_get_is(client: httpx.Client) -> None:
    response = client.head("/cats/1")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


def test_not_found_and_method_not_allowed(client: httpx.Client) -> None:
    body = assert_error(client.get("/nowhere/at/all"), 404, "route_not_found")
    assert "/nowhere/at/all" in body["error"]
    response = client.delete("/static")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST, HEAD"


def test_timeout_is_504(client: httpx.Client) -> None:
    body = assert_error(client.get("/slow?delay=3"), 504, "timeout")
    assert "0.5" in body["error"]
    assert client.get("/slow-ok?delay=0.2").json()["slow"] is True


def test_deadline_mid_response_aborts_instead_of_clean_end(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/trickle?delay=3")


def test_connection_refused_is_502(client: httpx.Client) -> None:
    body = assert_error(client.get("/refused"), 502, "upstream")
    assert "127.0.0.1" in body["error"]


def test_upstream_dropping_connection_is_502(client: httpx.Client) -> None:
    assert_error(client.get("/drop"), 502, "upstream")


def test_health_ready_live(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "healthy"
    assert health["version"]
    assert 0 <= health["uptime"] < 600  # seconds since start, not a Unix timestamp
    datetime.fromisoformat(health["timestamp"].replace("Z", "+00:00"))
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert client.get("/live").json()["status"] == "alive"


def test_upload_streams_with_chunked_and_sized_bodies(client: httpx.Client) -> None:
    import hashlib

    data = bytes(range(256)) * 4096  # 1 MiB, above the small-body threshold
    sized = client.post("/upload", content=data).json()
    assert sized["bytes"] == len(data) and sized["sha256"] == hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield data[:65536]

    chunked = client.put("/upload", content=chunks()).json()
    assert chunked["bytes"] == 16 * 65536


def test_download_streams(client: httpx.Client) -> None:
    with client.stream("GET", "/stream?size=5000000") as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == 5_000_000
        total = sum(len(chunk) for chunk in response.iter_raw())
    assert total == 5_000_000


def test_catch_all_prefix_route(client: httpx.Client) -> None:
    response = client.post("/prefix/a/b%2Fc/d?x=1", content=b"body")
    assert response.json()["raw_path"] == "/echo/under/a/b%2Fc/d?x=1"
    assert client.get("/prefix/").json()["raw_path"] == "/echo/under/"
    assert_error(client.get("/prefix"), 404, "route_not_found")
