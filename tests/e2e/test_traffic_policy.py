"""CORS, body limits and security headers through the real gateway (uvicorn) and a real upstream."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.config.policies import DEFAULT_SECURITY_HEADERS
from tests.processes import Server, backend, gateway_server, route

ORIGIN = "https://app.example"
PARTNER = "https://partner.example"
API_KEY = "svc-key-0123456789abcdef"
SECURITY = {name.lower() for name in DEFAULT_SECURITY_HEADERS}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    config = {
        "version": 1,
        "api_keys": [{"name": "svc", "keys": [API_KEY]}],
        "cors": {
            "allowed_origins": [ORIGIN],
            "allowed_methods": ["GET", "POST"],
            "allowed_headers": ["X-API-Key", "Content-Type"],
            "exposed_headers": ["X-Request-ID"],
            "max_age": 300,
        },
        "max_body_size": 1000,
        "routers": [
            route("/api/{*rest}", "/echo/{*rest}", up, ("GET", "POST")),
            route("/private", "/echo/private", up, auth_required=True),
            route("/private-bare", "/echo/bare", up, auth_required=True, security_headers=False),
            route("/creds", "/echo/creds", up, cors={"allowed_origins": ["*"], "allow_credentials": True}),
            route("/partner", "/echo/partner", up, cors={"allowed_origins": [PARTNER]}),
            route("/no-cors", "/echo/no-cors", up, cors={"enabled": False}),
            route("/upload", "/upload", up, ("POST",)),
            route("/upload-large", "/upload", up, ("POST",), max_body_size=5000),
            route("/upload-tiny", "/upload", up, ("POST",), max_body_size=10),
            route("/rec/{key}", "/recorded-upload/{key}", up, ("POST",)),
            route("/rec-result/{key}", "/recorded/{key}", up),
            route(
                "/hardened",
                "/hop",
                up,
                security_headers={"proxied": True, "headers": {"X-Kept": "from-gateway"}},
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def preflight(method: str, origin: str = ORIGIN, headers: str | None = None) -> dict[str, str]:
    result = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        result["Access-Control-Request-Headers"] = headers
    return result


def security_names(response: httpx.Response) -> set[str]:
    return SECURITY & set(response.headers.keys())


def too_large(response: httpx.Response) -> bool:
    body = response.json()
    return (
        response.status_code == 413
        and body["type"] == "payload_too_large"
        and body["request_id"] == response.headers["x-request-id"]
    )


def upload_of(response: httpx.Response, data: bytes) -> bool:
    body = response.json()
    return (
        response.status_code == 200
        and body["bytes"] == len(data)
        and body["sha256"] == hashlib.sha256(data).hexdigest()
    )


def chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts  # a generator body: httpx sends it chunked, without Content-Length


def recorded(client: httpx.Client, key: str) -> Any:
    """What the upstream's /recorded-upload/{key} saw (None: never reached), once it settled."""
    result = None
    for _ in range(20):
        result = client.get(f"/rec-result/{key}").json()
        if result is not None:
            break
        time.sleep(0.02)
    return result


# --- CORS ----------------------------------------------------------------------------------------


def test_preflight_is_answered_on_a_route_that_does_not_list_options(client: httpx.Client) -> None:
    response = client.options("/api/items", headers=preflight("POST", headers="x-api-key, content-type"))
    assert response.status_code == 200 and response.text == "OK"  # the gateway's, not the upstream's
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    assert response.headers["access-control-max-age"] == "300"
    assert "Origin" in response.headers["vary"]
    assert security_names(response) == SECURITY  # gateway-generated
    # A plain OPTIONS is still what it was: the route does not take it.
    assert client.options("/api/items").status_code == 405


def test_preflight_needs_no_credentials_on_an_auth_route(client: httpx.Client) -> None:
    response = client.options("/private", headers=preflight("GET", headers="x-api-key"))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    # The actual request still needs them, and the browser can read the 401 (CORS headers on it).
    refused = client.get("/private", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.json()["type"] == "authentication_error"
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    allowed = client.get("/private", headers={"Origin": ORIGIN, "X-API-Key": API_KEY})
    assert allowed.status_code == 200 and allowed.json()["raw_path"] == "/echo/private"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN


def test_actual_responses_carry_allow_origin(client: httpx.Client) -> None:
    response = client.post("/api/items", headers={"Origin": ORIGIN}, content=b"{}")
    assert response.status_code == 200 and response.json()["raw_path"] == "/echo/items"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-expose-headers"] == "X-Request-ID"
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


def test_a_disallowed_origin_gets_no_allow_origin(client: httpx.Client) -> None:
    evil = "https://evil.example"
    actual = client.get("/api/items", headers={"Origin": evil})
    assert actual.status_code == 200 and "access-control-allow-origin" not in actual.headers
    refused = client.options("/api/items", headers=preflight("GET", origin=evil))
    assert refused.status_code == 400 and refused.json()["type"] == "bad_request"
    assert "access-control-allow-origin" not in refused.headers
    not_allowed_method = client.options("/api/items", headers=preflight("DELETE"))
    assert not_allowed_method.status_code == 405  # no route takes DELETE there: routing's answer
    not_allowed_header = client.options("/api/items", headers=preflight("GET", headers="x-secret"))
    assert not_allowed_header.status_code == 400 and "headers" in not_allowed_header.json()["error"]


def test_credentials_with_wildcard_echo_the_origin(client: httpx.Client) -> None:
    anywhere = "https://anywhere.example"
    actual = client.get("/creds", headers={"Origin": anywhere})
    assert actual.headers["access-control-allow-origin"] == anywhere
    assert actual.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in actual.headers["vary"]
    pre = client.options("/creds", headers=preflight("GET", origin=anywhere))
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == anywhere
    assert pre.headers["access-control-allow-credentials"] == "true"


def test_route_cors_overrides_the_global_policy(client: httpx.Client) -> None:
    assert "access-control-allow-origin" not in client.get("/partner", headers={"Origin": ORIGIN}).headers
    partner = client.get("/partner", headers={"Origin": PARTNER})
    assert partner.headers["access-control-allow-origin"] == PARTNER
    assert client.options("/partner", headers=preflight("GET", origin=PARTNER)).status_code == 200
    # CORS off for the route: no headers, and a preflight is the 405 the route's methods give.
    assert "access-control-allow-origin" not in client.get("/no-cors", headers={"Origin": ORIGIN}).headers
    off = client.options("/no-cors", headers=preflight("GET"))
    assert off.status_code == 405 and off.json()["type"] == "method_not_allowed"


# --- body limits ---------------------------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_without_reaching_upstream(client: httpx.Client) -> None:
    response = client.post("/rec/declared", content=b"x" * 1001)
    assert too_large(response) and response.headers["connection"] == "close"
    assert "1000" in response.json()["error"]
    time.sleep(0.1)
    assert client.get("/rec-result/declared").json() is None


def test_chunked_body_over_the_limit_is_refused_and_the_upstream_request_aborted(
    client: httpx.Client,
) -> None:
    response = client.post("/rec/chunked", content=chunks(b"a" * 400, b"b" * 400, b"c" * 400))
    assert "content-length" not in response.request.headers  # really chunked
    assert too_large(response)
    seen = recorded(client, "chunked")
    assert seen is None or (seen["complete"] is False and seen["bytes"] <= 1000)
    # The gateway is fine afterwards, and a chunked body within the limit goes through.
    ok = client.post("/rec/chunked-ok", content=chunks(b"a" * 400, b"b" * 400))
    assert ok.status_code == 200 and ok.json()["bytes"] == 800
    assert recorded(client, "chunked-ok") == {"bytes": 800, "complete": True}


def test_a_body_at_exactly_the_limit_reaches_upstream_intact(client: httpx.Client) -> None:
    data = bytes(range(250)) * 4  # 1000 bytes
    assert upload_of(client.post("/upload", content=data), data)
    assert upload_of(client.post("/upload", content=chunks(data[:300], data[300:])), data)
    assert too_large(client.post("/upload", content=data + b"!"))
    assert too_large(client.post("/upload", content=chunks(data, b"!")))


def test_a_route_limit_beats_the_global_one(client: httpx.Client) -> None:
    data = b"z" * 3000
    assert too_large(client.post("/upload", content=data))
    assert upload_of(client.post("/upload-large", content=data), data)
    assert upload_of(client.post("/upload-large", content=chunks(data, data[:2000])), data + data[:2000])
    assert too_large(client.post("/upload-large", content=data * 2))
    assert too_large(client.post("/upload-tiny", content=b"12345678901"))
    assert upload_of(client.post("/upload-tiny", content=b"1234567890"), b"1234567890")


# --- security headers ----------------------------------------------------------------------------


def test_gateway_errors_carry_security_headers(client: httpx.Client) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and security_names(missing) == SECURITY
    assert missing.headers["x-frame-options"] == "DENY"
    wrong_method = client.delete("/creds")
    assert wrong_method.status_code == 405 and security_names(wrong_method) == SECURITY
    assert security_names(client.post("/upload", content=b"x" * 2000)) == SECURITY  # 413
    assert security_names(client.get("/private")) == SECURITY  # 401


def test_proxied_responses_get_none_by_default(client: httpx.Client) -> None:
    response = client.get("/api/anything")
    assert response.status_code == 200 and security_names(response) == set()


def test_proxied_opt_in_never_overrides_upstream_values(client: httpx.Client) -> None:
    response = client.get("/hardened")
    assert response.status_code == 200 and response.text == "hop"
    assert security_names(response) == SECURITY
    assert response.headers.get_list("x-kept") == ["yes"]  # the upstream's own value wins


def test_route_can_turn_security_headers_off(client: httpx.Client) -> None:
    refused = client.get("/private-bare")
    assert refused.status_code == 401 and security_names(refused) == set()
