"""JWT and API-key authentication through the real gateway, with tokens minted here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from tests.processes import Server, backend, gateway_server, route

SECRET = "a-test-secret-that-is-at-least-32-characters-long"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def token(algorithm: str = "HS256", key: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "alice", "iss": "kairos-tests", "aud": "api", "exp": now + 300}
    body.update(claims)
    return str(jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm))


def bearer(value: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {value}"}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    config = {
        "version": 1,
        "jwt": {
            "secret": "${TEST_JWT_SECRET}",
            "public_key": PUBLIC_PEM,
            "algorithms": ["HS256", "RS256"],
            "issuer": "kairos-tests",
            "audience": ["api", "api-v2"],
            "required_claims": ["sub"],
        },
        "api_keys": [{"name": "billing-service", "keys": ["${TEST_API_KEY}", "second-key-0123456789"]}],
        "routers": [
            route("/users/{id}", "/echo/users/{id}", up, ("GET", "POST")),
            route("/users/me", "/echo/me", up, ("GET", "POST", "PATCH"), auth_required=True),
            route("/admin/{*rest}", "/echo/admin/{*rest}", up, auth_required=True, required_roles=["admin"]),
            route("/jwt-only", "/echo/jwt", up, auth_required=True, auth="jwt"),
            route("/key-only", "/echo/key", up, auth_required=True, auth="api_key"),
        ],
    }
    env = {"TEST_JWT_SECRET": SECRET, "TEST_API_KEY": "primary-key-from-env-0123456789"}
    with gateway_server(module_tmp, config, env=env) as server:
        yield server


def error_of(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == kind and body["request_id"] == response.headers["x-request-id"]
    return str(body["error"])


def test_every_listed_method_of_an_auth_route_needs_credentials(client: httpx.Client) -> None:
    for method in ("GET", "POST", "PATCH"):
        response = client.request(method, "/users/me")
        error_of(response, 401, "authentication_error")
        assert response.headers["www-authenticate"] == "Bearer"  # no credentials: no error param
        assert client.request(method, "/users/me", headers=bearer(token())).json()["raw_path"] == "/echo/me"


def test_public_dynamic_route_never_lets_the_static_auth_route_through(client: httpx.Client) -> None:
    assert client.get("/users/42").status_code == 200  # public
    error_of(client.get("/users/me"), 401, "authentication_error")
    assert client.head("/users/me").status_code == 401  # HEAD rides on GET and is guarded too


def test_valid_tokens_hs256_rs256_and_scheme_case(client: httpx.Client) -> None:
    assert client.get("/users/me", headers=bearer(token())).status_code == 200
    assert client.get("/users/me", headers=bearer(token("RS256", PRIVATE_PEM))).status_code == 200
    assert client.get("/users/me", headers=bearer(token(), "bearer")).status_code == 200
    assert client.get("/users/me", headers=bearer(token(aud=["other", "api-v2"]))).status_code == 200
    assert client.get("/users/me", headers=bearer(token(iat=None))).status_code == 200  # iat not required


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("expired", lambda: token(exp=int(time.time()) - 600), "expired"),
        ("not yet valid", lambda: token(nbf=int(time.time()) + 600), "claims"),
        ("wrong issuer", lambda: token(iss="someone-else"), "claims"),
        ("missing issuer", lambda: token(iss=None), "claims"),
        ("wrong audience", lambda: token(aud="elsewhere"), "audience"),
        ("missing required claim", lambda: token(sub=None), "sub"),
        ("bad signature", lambda: token(key="another-secret-that-is-also-32-characters"), "signature"),
        ("alg none", lambda: _none_header() + "." + token().split(".")[1] + ".", "'none'"),
        ("HS256 signed with the RS public key", lambda: _confused_token(), "signature"),
        ("HS384 not in the allow-list", lambda: token("HS384"), "'HS384'"),
        ("garbage", lambda: "not.a.jwt", "malformed"),
        # Another spelling of a valid token (python-jose accepts both): one token, one spelling.
        ("padded signature", lambda: token() + "==", "malformed"),
        ("junk in the signature", lambda: token()[:-4] + "!" + token()[-4:], "malformed"),
    ],
)
def test_bad_tokens_are_401_invalid_token(client: httpx.Client, name: str, make: Any, fragment: str) -> None:
    response = client.get("/users/me", headers=bearer(make()))
    message = error_of(response, 401, "authentication_error")
    assert fragment in message, (name, message)
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def _none_header() -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()


def _confused_token() -> str:
    """The classic key-confusion attack: HS256 with the server's RSA public key as the HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(
        json.dumps(
            {"sub": "mallory", "iss": "kairos-tests", "aud": "api", "exp": int(time.time()) + 300}
        ).encode()
    )
    signature = hmac.new(PUBLIC_PEM.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def test_malformed_authorization_header(client: httpx.Client) -> None:
    response = client.get("/users/me", headers={"Authorization": "Basic YWxpY2U6cHc="})
    error_of(response, 401, "authentication_error")
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_roles_are_403_when_the_token_is_valid(client: httpx.Client) -> None:
    error_of(client.get("/admin/x", headers=bearer(token(roles=["user"]))), 403, "authorization_error")
    assert client.get("/admin/x", headers=bearer(token(roles=["user", "admin"]))).status_code == 200
    error_of(client.get("/admin/x"), 401, "authentication_error")
    # An API-key consumer has no roles: authenticated, but not authorised.
    error_of(
        client.get("/admin/x", headers={"X-API-Key": "second-key-0123456789"}), 403, "authorization_error"
    )


def test_api_keys_including_one_from_the_environment(client: httpx.Client) -> None:
    assert (
        client.get("/users/me", headers={"X-API-Key": "primary-key-from-env-0123456789"}).status_code == 200
    )
    assert client.get("/users/me", headers={"x-api-key": "second-key-0123456789"}).status_code == 200
    error_of(client.get("/users/me", headers={"X-API-Key": "wrong"}), 401, "authentication_error")
    # A valid JWT is enough even when a wrong key rides along.
    both = {"X-API-Key": "wrong", **bearer(token())}
    assert client.get("/users/me", headers=both).status_code == 200


def test_routes_restricted_to_one_kind(client: httpx.Client) -> None:
    key = {"X-API-Key": "second-key-0123456789"}
    error_of(client.get("/jwt-only", headers=key), 401, "authentication_error")
    assert client.get("/jwt-only", headers=bearer(token())).status_code == 200
    refused = client.get("/key-only", headers=bearer(token()))
    error_of(refused, 401, "authentication_error")
    assert refused.headers["www-authenticate"] == 'ApiKey header="x-api-key"'
    assert client.get("/key-only", headers=key).status_code == 200
