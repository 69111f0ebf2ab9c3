"""PS256/384/512 (RSASSA-PSS) through the real gateway (uvicorn) against a real upstream, with
``jwt.public_key`` and with a real JWKS server (tests/servers/jwks_server.py) on 127.0.0.1.

python-jose cannot mint PS tokens: tests/auth/pss_tokens.py signs them with ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from tests.auth.pss_tokens import b64, claims, public_jwk, public_pem, sign
from tests.processes import Server, backend, free_port, gateway_server, route, server_process

SECRET = "a-pss-gateway-test-secret-of-32-chars-or-more"
STATIC = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # jwt.public_key
PUBLISHED = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # in the JWKS, alg PS256
RS_ONLY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # in the JWKS, alg RS256
ALGORITHMS = ["PS256", "PS384", "PS512", "RS256", "HS256"]


def jwt_config(jwks_url: str | None, algorithms: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "secret": SECRET,
        "public_key": public_pem(STATIC),
        "algorithms": algorithms,
        "issuer": "kairos-tests",
        "audience": ["api", "api-v2"],
        "required_claims": ["sub"],
    }
    if jwks_url is not None:
        settings["jwks_url"] = jwks_url
    return settings


def gateway_config(upstream: Server, jwks_url: str | None, algorithms: list[str]) -> dict[str, Any]:
    return {
        "version": 1,
        "jwt": jwt_config(jwks_url, algorithms),
        "routers": [route("/me", "/echo/me", [backend(upstream)], ("GET", "POST"), auth_required=True)],
    }


@pytest.fixture(scope="module")
def jwks(module_tmp: Path) -> Iterator[Server]:
    document = {
        "keys": [
            public_jwk(PUBLISHED, kid="ps-1", alg="PS256", use="sig"),
            public_jwk(RS_ONLY, kid="rs-1", alg="RS256", use="sig"),
        ]
    }
    initial = module_tmp / "jwks-pss.json"
    initial.write_text(json.dumps(document))
    port = free_port()
    args = ["-m", "tests.servers.jwks_server", "--port", str(port), "--document", str(initial)]
    with server_process(args, port, module_tmp / f"jwks-{port}.log") as server:
        yield server


def jwks_requests(jwks: Server) -> int:
    return int(httpx.get(f"{jwks.url}/admin/stats", timeout=5).json()["requests"])


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, jwks: Server) -> Iterator[Server]:
    config = gateway_config(upstream, f"{jwks.url}/jwks.json", ALGORITHMS)
    with gateway_server(module_tmp, config) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "authentication_error" and body["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    return str(body["error"])


def tampered(token: str, **changes: Any) -> str:
    """The same header and signature over a payload with ``changes`` (an attacker's edit)."""
    header, payload, signature = token.split(".")
    body = {**json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))), **changes}
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


@pytest.mark.parametrize("algorithm", ["PS256", "PS384", "PS512"])
def test_ps_tokens_with_the_public_key_reach_the_upstream(client: httpx.Client, algorithm: str) -> None:
    token = sign(STATIC, claims(sub=f"user-{algorithm}"), algorithm)
    response = client.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["raw_path"] == "/echo/me"
    assert client.post("/me", headers=bearer(token), content=b"{}").status_code == 200  # cached now


def test_ps256_with_a_jwks_key(client: httpx.Client, jwks: Server) -> None:
    # The first request may arrive while the startup fetch is still running: it waits for it.
    assert client.get("/me", headers=bearer(sign(PUBLISHED, claims(), kid="ps-1"))).status_code == 200
    assert (
        client.get("/me", headers=bearer(sign(PUBLISHED, claims(sub="bob"), kid="ps-1"))).status_code == 200
    )
    assert jwks_requests(jwks) == 1  # one fetch at startup, none per request
    # The kid decides the key: the static key's signature under kid ps-1 fails, and so does the
    # published key without kid (a token without kid is checked with public_key).
    assert "signature" in refused(client.get("/me", headers=bearer(sign(STATIC, claims(), kid="ps-1"))))
    assert "signature" in refused(client.get("/me", headers=bearer(sign(PUBLISHED, claims()))))
    # The key published for RS256 does not serve PS256, nor the PS256 key RS256.
    message = refused(client.get("/me", headers=bearer(sign(RS_ONLY, claims(), kid="rs-1"))))
    assert "no signing key for algorithm PS256 with id 'rs-1'" in message
    rs_token = jwt.encode(claims(), PUBLISHED, algorithm="RS256", headers={"kid": "ps-1"})
    assert "no signing key for algorithm RS256" in refused(client.get("/me", headers=bearer(rs_token)))
    rs_token = jwt.encode(claims(), RS_ONLY, algorithm="RS256", headers={"kid": "rs-1"})
    assert client.get("/me", headers=bearer(rs_token)).status_code == 200


def test_tampered_payload_is_rejected(client: httpx.Client) -> None:
    for token in (sign(STATIC, claims()), sign(PUBLISHED, claims(), kid="ps-1")):
        assert client.get("/me", headers=bearer(token)).status_code == 200
        for changes in ({"sub": "mallory"}, {"roles": ["admin"]}, {"exp": int(time.time()) + 86_400}):
            forged = tampered(token, **changes)
            assert "signature" in refused(client.get("/me", headers=bearer(forged)))


def test_salt_length_other_than_the_hash_size_is_rejected(client: httpx.Client) -> None:
    for key, kid in ((STATIC, None), (PUBLISHED, "ps-1")):
        header: dict[str, Any] = {} if kid is None else {"kid": kid}
        for salt in (0, 31, 33):
            token = sign(key, claims(), "PS256", salt_length=salt, **header)
            assert "signature" in refused(client.get("/me", headers=bearer(token)))
    token = sign(STATIC, claims(), "PS512", salt_length=0)
    assert "signature" in refused(client.get("/me", headers=bearer(token)))


@pytest.mark.parametrize(
    ("name", "changes", "fragment"),
    [
        ("expired", {"exp": int(time.time()) - 600}, "expired"),
        ("wrong audience", {"aud": "elsewhere"}, "audience"),
        ("wrong issuer", {"iss": "someone-else"}, "claims"),
        ("not yet valid", {"nbf": int(time.time()) + 600}, "claims"),
        ("missing required claim", {"sub": None}, "sub"),
    ],
)
def test_ps_claims_are_checked_like_every_other_algorithm(
    client: httpx.Client, name: str, changes: dict[str, Any], fragment: str
) -> None:
    body = claims(**changes)
    messages = {
        refused(client.get("/me", headers=bearer(sign(STATIC, body, "PS256")))),
        refused(client.get("/me", headers=bearer(sign(PUBLISHED, body, "PS256", kid="ps-1")))),
        refused(client.get("/me", headers=bearer(jwt.encode(body, SECRET, algorithm="HS256")))),
        refused(client.get("/me", headers=bearer(jwt.encode(body, STATIC, algorithm="RS256")))),
    }
    assert len(messages) == 1 and fragment in messages.pop(), name


def test_a_ps_header_never_uses_the_hmac_secret_or_pkcs1(client: httpx.Client) -> None:
    header = b64(json.dumps({"alg": "PS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(sub="mallory")).encode())
    for material in (SECRET.encode(), public_pem(STATIC).encode()):
        signature = hmac.new(material, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{payload}.{b64(signature)}"
        assert "signature" in refused(client.get("/me", headers=bearer(forged)))
    pkcs1 = sign(STATIC, claims(), "RS256", header_alg="PS256", pkcs1v15=True)
    assert "signature" in refused(client.get("/me", headers=bearer(pkcs1)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.rsplit(".", 1)[0] + ".",  # no signature
        lambda t: t + "==",  # padding
        lambda t: t[:-10],  # truncated signature
        lambda t: t.replace(".", ".%%", 1),  # not base64url
        lambda t: t.split(".")[0] + ".e30." + t.split(".")[2],  # {} with another signature
        lambda t: t.split(".")[0] + "." + b64(b"[" * 5000) + "." + t.split(".")[2],
    ],
)
def test_malformed_ps_tokens_are_401_not_500(client: httpx.Client, mangle: Any) -> None:
    message = refused(client.get("/me", headers=bearer(mangle(sign(STATIC, claims())))))
    assert "signature or format" in message or "malformed" in message, message


def test_ps256_when_only_rs256_is_allowed(module_tmp: Path, upstream: Server) -> None:
    config = gateway_config(upstream, None, ["RS256"])
    config["jwt"].pop("secret")
    with (
        gateway_server(module_tmp, config) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as http,
    ):
        for algorithm in ("PS256", "PS384", "PS512"):
            message = refused(http.get("/me", headers=bearer(sign(STATIC, claims(), algorithm))))
            assert f"'{algorithm}' is not allowed" in message
        rs_token = jwt.encode(claims(), STATIC, algorithm="RS256")
        assert http.get("/me", headers=bearer(rs_token)).status_code == 200
