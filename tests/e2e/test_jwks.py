"""`jwt.jwks_url` through the real gateway (uvicorn), against a real JWKS server on 127.0.0.1.

The JWKS server (tests/servers/jwks_server.py) serves a document the tests change between phases
and counts how often it is fetched; the signing keys are generated here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from tests.processes import Server, backend, free_port, gateway_server, route, server_process

SECRET = "a-jwks-test-secret-that-is-at-least-32-chars"
ISSUER = "https://idp.test"


class SigningKey:
    def __init__(self, kid: str, algorithm: str) -> None:
        self.kid = kid
        self.algorithm = algorithm
        private = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if algorithm.startswith("RS")
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.private = private  # signing with the key object: no PEM parsing (~60 ms) per token
        self.private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = jwk.construct(self.private_pem, self.algorithm).public_key().to_dict()
        return {**public, "kid": self.kid, "use": "sig", **extra}

    def token(self, kid: str | None = "", **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": "api", "exp": now + 300, **claims}
        headers = {} if kid is None else {"kid": kid or self.kid}
        return str(jwt.encode(body, self.private, algorithm=self.algorithm, headers=headers))


RSA_1 = SigningKey("rsa-1", "RS256")
RSA_2 = SigningKey("rsa-2", "RS256")
EC_1 = SigningKey("ec-1", "ES256")
OCT_SECRET = b"a-symmetric-key-published-in-the-jwks!!"


def document(*keys: SigningKey) -> dict[str, Any]:
    oct_key = {"kty": "oct", "kid": "hmac-1", "k": _b64(OCT_SECRET), "alg": "HS256"}
    enc_key = RSA_2.jwk(kid="enc-1", use="enc")
    return {"keys": [*(key.jwk() for key in keys), oct_key, enc_key]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: bytes, kid: str, **claims: Any) -> str:
    """An HS256 token made by hand, so any bytes (a public key!) can be the HMAC secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = {"sub": "mallory", "iss": ISSUER, "aud": "api", "exp": int(time.time()) + 300, **claims}
    payload = _b64(json.dumps(body).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def with_kid(token: str, kid: str) -> str:
    """The same token under another header ``kid`` (its signature no longer matters: an attacker's)."""
    _, payload, signature = token.split(".")
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{payload}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Jwks:
    """Steers a running jwks_server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = f"{server.url}/jwks.json"

    def set(self, doc: dict[str, Any]) -> None:
        httpx.put(f"{self.server.url}/admin/jwks", json=doc, timeout=5).raise_for_status()

    def configure(self, **changes: Any) -> None:
        httpx.put(f"{self.server.url}/admin/config", json=changes, timeout=5).raise_for_status()

    @property
    def requests(self) -> int:
        return int(httpx.get(f"{self.server.url}/admin/stats", timeout=5).json()["requests"])


def jwks_process(tmp: Path, port: int, doc: dict[str, Any]) -> Any:
    initial = tmp / f"jwks-{port}.json"
    initial.write_text(json.dumps(doc))
    args = ["-m", "tests.servers.jwks_server", "--port", str(port), "--document", str(initial)]
    return server_process(args, port, tmp / f"jwks-{port}.log")


def gateway_config(jwks_url: str, upstream: Server, **jwt_extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "jwt": {
            "jwks_url": jwks_url,
            "secret": SECRET,
            "algorithms": ["RS256", "ES256", "HS256"],
            "issuer": ISSUER,
            "audience": "api",
            **jwt_extra,
        },
        "routers": [route("/me", "/echo/me", [backend(upstream)], auth_required=True)],
    }


@pytest.fixture(scope="module")
def jwks(module_tmp: Path) -> Iterator[Jwks]:
    with jwks_process(module_tmp, free_port(), document(RSA_1, EC_1)) as server:
        yield Jwks(server)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, jwks: Jwks) -> Iterator[Server]:
    with gateway_server(module_tmp, gateway_config(jwks.url, upstream)) as server:
        yield server


def refused(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.json()["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    return str(response.json()["error"])


def test_rs256_and_es256_tokens_with_jwks_keys_are_accepted(client: httpx.Client, jwks: Jwks) -> None:
    # The first request may arrive while the startup fetch is still running: it waits for it.
    assert client.get("/me", headers=bearer(RSA_1.token())).status_code == 200
    assert client.get("/me", headers=bearer(EC_1.token())).status_code == 200
    assert client.get("/me", headers=bearer(RSA_1.token(sub="bob"))).status_code == 200
    assert jwks.requests == 1  # one fetch at startup, none per request


def test_expired_token_is_rejected(client: httpx.Client) -> None:
    assert "expired" in refused(client.get("/me", headers=bearer(RSA_1.token(exp=int(time.time()) - 600))))


def test_key_confusion_and_mismatched_keys_are_rejected(client: httpx.Client) -> None:
    # HS256 "signed" with the RSA public key (PEM or its JWK): HS keys come only from `secret`.
    for material in (RSA_1.public_pem.encode(), json.dumps(RSA_1.jwk()).encode()):
        assert "signature" in refused(client.get("/me", headers=bearer(hs256(material, "rsa-1"))))
    # A symmetric key published in the JWKS is never used.
    assert "signature" in refused(client.get("/me", headers=bearer(hs256(OCT_SECRET, "hmac-1"))))
    # RS256 signed with the RSA key but naming the EC key's kid: the kid decides, and it does not fit.
    assert "no signing key for algorithm RS256" in refused(
        client.get("/me", headers=bearer(RSA_1.token(kid="ec-1")))
    )
    # Tokens without a kid are checked against the (few) keys of their algorithm.
    assert client.get("/me", headers=bearer(RSA_1.token(kid=None))).status_code == 200
    assert "signature" in refused(client.get("/me", headers=bearer(RSA_2.token(kid=None))))


def test_key_rotation_a_new_kid_triggers_one_refresh(client: httpx.Client, jwks: Jwks) -> None:
    before = jwks.requests
    jwks.set(document(RSA_1, EC_1, RSA_2))
    assert client.get("/me", headers=bearer(RSA_2.token())).status_code == 200
    assert jwks.requests == before + 1
    assert client.get("/me", headers=bearer(RSA_2.token(sub="carol"))).status_code == 200
    assert client.get("/me", headers=bearer(RSA_1.token())).status_code == 200
    assert jwks.requests == before + 1


def test_a_flood_of_random_kids_costs_one_fetch(module_tmp: Path, upstream: Server, jwks: Jwks) -> None:
    with (
        gateway_server(module_tmp, gateway_config(jwks.url, upstream)) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as http,
    ):
        assert http.get("/me", headers=bearer(RSA_1.token())).status_code == 200  # keys loaded
        before = jwks.requests
        jwks.configure(delay=0.3)  # a slow IdP: concurrent unknown kids must share one fetch
        try:
            template = RSA_1.token()
            tokens = [with_kid(template, uuid.uuid4().hex) for _ in range(200)]
            with ThreadPoolExecutor(32) as pool:
                responses = list(pool.map(lambda t: http.get("/me", headers=bearer(t)), tokens))
        finally:
            jwks.configure(delay=0)
        assert all("unknown signing key id" in refused(response) for response in responses)
        # One shared fetch for the whole flood; then the unknown-kid interval (30 s) allows no more.
        assert jwks.requests - before == 1
        # The kids that are known still pass at once.
        assert http.get("/me", headers=bearer(EC_1.token())).status_code == 200


def test_jwks_down_at_startup_then_up(module_tmp: Path, upstream: Server) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/jwks.json"
    config = gateway_config(url, upstream, jwks_min_refresh_secs=1, jwks_timeout_secs=2)
    with (
        gateway_server(module_tmp, config) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as http,
    ):
        message = refused(http.get("/me", headers=bearer(RSA_1.token())))
        assert message == "signing keys are not available yet"
        # HS256 with the configured secret does not need the JWKS.
        own = jwt.encode({"sub": "svc", "iss": ISSUER, "aud": "api"}, SECRET, algorithm="HS256")
        assert http.get("/me", headers=bearer(own)).status_code == 200
        with jwks_process(module_tmp, port, document(RSA_1, EC_1)):
            deadline = time.monotonic() + 8
            while True:
                response = http.get("/me", headers=bearer(RSA_1.token()))
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                assert refused(response) == "signing keys are not available yet"
                time.sleep(0.2)
            assert response.status_code == 200, response.text
            assert http.get("/me", headers=bearer(EC_1.token())).status_code == 200
        log = gateway.output()
        assert log.count("fetch failed") == 1, log  # once per failure streak
        assert "fetched again after" in log
