"""What a real client sees through the gateway that a direct upstream would have given it: redirects
that stay on the gateway, the head as soon as the upstream sends it, one Server header, forwarding
headers a client cannot forge, and an overhead metric that is the gateway's own time (issue 13)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Server, backend, gateway_server, route


def _config(upstream: Server, **top: Any) -> dict[str, Any]:
    up = [backend(upstream)]
    return {
        "version": 1,
        "routers": [
            route("/hb/{*rest}", "/{rest}", up),
            route("/v/{ver}/{*rest}", "/{rest}", up),
            route("/raw/{*rest}", "/{rest}", up, rewrite_location=False),
            route("/ck/{*rest}", "/{rest}", up, rewrite_cookies=True),
            route("/echo/{*rest}", "/echo/{rest}", up, methods=("GET", "POST")),
        ],
        **top,
    }


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, _config(upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def behind_proxy(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    """The same routes with 127.0.0.1 as a trusted proxy and RFC 7239 Forwarded emitted."""
    config = _config(upstream, trusted_proxies=["127.0.0.1/32"], forwarded_header=True)
    with gateway_server(module_tmp, config) as server:
        yield server


# -- 5. redirects stay on the gateway ---------------------------------------------------------------


def test_curl_follows_relative_redirects_through_a_prefix_route(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=True) as client:
        response = client.get("/hb/redirect/3")
    assert response.status_code == 200, response.text
    assert response.url.path == "/hb/get"
    hops = [hop.headers["location"] for hop in response.history]
    assert hops == ["/hb/relative-redirect/2", "/hb/relative-redirect/1", "/hb/get"]


def test_an_absolute_redirect_never_names_the_internal_backend(gateway: Server, upstream: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=True) as client:
        response = client.get("/hb/absolute-redirect/3")
    assert response.status_code == 200, response.text
    assert response.url.host == "127.0.0.1" and response.url.port == gateway.port
    hops = [hop.headers["location"] for hop in response.history]
    assert hops == ["/hb/absolute-redirect/2", "/hb/absolute-redirect/1", "/hb/get"]
    assert all(str(upstream.port) not in hop for hop in hops)


def test_every_header_naming_the_backend_is_mapped(gateway: Server) -> None:
    response = httpx.get(f"{gateway.url}/hb/located", timeout=10)
    assert response.status_code == 201
    assert response.headers["location"] == "/hb/items/7?x=1#top"
    assert response.headers["content-location"] == "/hb/items/7"
    assert response.headers["refresh"] == "3; url=/hb/items/8"
    # Cookies are left alone unless the route asks (rewrite_cookies).
    assert response.headers.get_list("set-cookie")[1] == "pref=2; Path=/"


def test_a_parameter_only_the_external_path_has_takes_the_requests_value(gateway: Server) -> None:
    response = httpx.get(f"{gateway.url}/v/2/located", params={"location": "/items/9"}, timeout=10)
    assert response.headers["location"] == "/v/2/items/9"


def test_redirects_elsewhere_and_opted_out_routes_are_left_alone(gateway: Server, upstream: Server) -> None:
    elsewhere = "https://login.example.com/start?next=%2F"
    response = httpx.get(f"{gateway.url}/hb/located", params={"location": elsewhere}, timeout=10)
    assert response.headers["location"] == elsewhere
    raw = httpx.get(f"{gateway.url}/raw/absolute-redirect/2", timeout=10)
    assert raw.headers["location"] == f"http://127.0.0.1:{upstream.port}/absolute-redirect/1"


def test_cookie_path_and_domain_follow_the_route_when_asked(gateway: Server) -> None:
    response = httpx.get(f"{gateway.url}/ck/located", timeout=10)
    cookies = response.headers.get_list("set-cookie")
    assert cookies == ["sid=1; Path=/ck/items; HttpOnly", "pref=2; Path=/ck/"]


# -- 6 and 7. the head as soon as it is sent; overhead is the gateway's own time --------------------


def _overhead(server: Server) -> tuple[float, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "kairos_overhead_duration_seconds":
            values = {sample.name: sample.value for sample in family.samples}
            return values["kairos_overhead_duration_seconds_count"], values[
                "kairos_overhead_duration_seconds_sum"
            ]
    raise AssertionError("no overhead histogram")


def test_a_dripped_small_body_does_not_hold_back_the_head(gateway: Server) -> None:
    """10 bytes over ~3 s: the head arrives at once, the body when it is done."""
    count_before, sum_before = _overhead(gateway)
    started = time.monotonic()
    with (
        httpx.Client(timeout=20) as client,
        client.stream("GET", f"{gateway.url}/hb/drip", params={"size": 10, "interval": 0.3}) as response,
    ):
        head_after = time.monotonic() - started
        body = response.read()
    total = time.monotonic() - started
    assert response.status_code == 200 and body == b"x" * 10
    assert response.headers["content-length"] == "10"
    assert head_after < 1.0, f"head after {head_after:.2f}s"
    assert total >= 2.5
    # The 3 s of body streaming are the upstream's time, not the gateway's.
    count_after, sum_after = _overhead(gateway)
    assert count_after - count_before == 1
    assert sum_after - sum_before < 0.5, sum_after - sum_before


def test_a_slow_upload_is_not_counted_as_overhead(gateway: Server) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(4):
            time.sleep(0.3)
            yield b"y" * 10

    count_before, sum_before = _overhead(gateway)
    response = httpx.post(
        f"{gateway.url}/echo/up", content=body(), headers={"content-length": "40"}, timeout=20
    )
    assert response.status_code == 200 and response.json()["body_bytes"] == 40
    count_after, sum_after = _overhead(gateway)
    assert count_after - count_before == 1
    assert sum_after - sum_before < 0.5, sum_after - sum_before


# -- 12. one Server header ------------------------------------------------------------------------


def test_a_response_carries_one_server_header(gateway: Server) -> None:
    """The upstream (aiohttp) sends its own Server; the gateway drops it, as nginx does."""
    response = httpx.get(f"{gateway.url}/hb/get", timeout=10)
    servers = response.headers.get_list("server")
    assert len(servers) == 1 and "aiohttp" not in servers[0], servers


# -- 4. forwarding headers cannot be spoofed ------------------------------------------------------

SPOOFED = {
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Real-IP": "6.6.6.6",
    "True-Client-IP": "6.6.6.6",
    "X-Client-IP": "6.6.6.6",
    "CF-Connecting-IP": "6.6.6.6",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
}


def _seen_upstream(server: Server) -> dict[str, str]:
    data = httpx.get(f"{server.url}/echo/h", headers=SPOOFED, timeout=10).json()
    return {name.lower(): value for name, value in data["headers"]}


def test_an_untrusted_client_cannot_name_its_source_to_the_upstream(gateway: Server) -> None:
    seen = _seen_upstream(gateway)
    for name in ("forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "cf-connecting-ip"):
        assert name not in seen, (name, seen)
    assert "x-forwarded-port" not in seen and "x-forwarded-prefix" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert seen["x-forwarded-proto"] == "http"


def test_a_trusted_proxy_vouches_for_them_and_forwarded_gets_this_hop(behind_proxy: Server) -> None:
    seen = _seen_upstream(behind_proxy)
    assert seen["x-real-ip"] == "6.6.6.6" and seen["true-client-ip"] == "6.6.6.6"
    assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert (
        seen["forwarded"]
        == f'for=6.6.6.6;proto=https, for=127.0.0.1;host="127.0.0.1:{behind_proxy.port}";proto=http'
    )


# -- 2 and 3. head limits and Host under a bare ASGI server ---------------------------------------


def _raw(server: Server, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"X-H: 1\r\n" * 100, b"431"),
        (b"X-Big: " + b"a" * 70_000 + b"\r\n", b"431"),
        (b"X-H: 1\r\n" * 20_000, b"431"),
        (b"X-H: 1\r\n" * 98, b"200"),
    ],
    ids=["101-fields", "70kb", "20000-lines", "at-the-limit"],
)
def test_head_limits_hold_under_bare_uvicorn(gateway: Server, extra: bytes, status: bytes) -> None:
    """uvicorn itself has no header limits: the app refuses what it is handed."""
    reply = _raw(gateway, b"GET /hb/get HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]


@pytest.mark.parametrize("path", [b"/hb/get", b"/health", b"/metrics"])
def test_host_rules_hold_under_bare_uvicorn(gateway: Server, path: bytes) -> None:
    for head in (b"", b"Host: a\r\nHost: b\r\n"):
        reply = _raw(gateway, b"GET " + path + b" HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b'"type": "bad_request"' in reply
