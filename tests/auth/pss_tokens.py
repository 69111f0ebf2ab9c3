"""Minting PS256/384/512 tokens by hand (python-jose cannot): base64url header and payload, then an
RSASSA-PSS signature made with ``cryptography``. Shared by tests/auth/test_pss.py and
tests/e2e/test_auth_pss.py; every knob a test needs to forge a bad token is a parameter."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HASHES: dict[str, hashes.HashAlgorithm] = {
    "PS256": hashes.SHA256(),
    "PS384": hashes.SHA384(),
    "PS512": hashes.SHA512(),
    "RS256": hashes.SHA256(),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Default claims (valid for 5 minutes) with ``changes``; a change to None removes the claim."""
    body: dict[str, Any] = {
        "sub": "alice",
        "iss": "kairos-tests",
        "aud": "api",
        "exp": int(time.time()) + 300,
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def sign(
    key: rsa.RSAPrivateKey,
    body: dict[str, Any],
    algorithm: str = "PS256",
    *,
    header_alg: str | None = None,
    salt_length: int | None = None,
    mgf_hash: hashes.HashAlgorithm | None = None,
    pkcs1v15: bool = False,
    **header: Any,
) -> str:
    """A compact JWS: ``algorithm`` chooses the hash (and PSS unless ``pkcs1v15``), ``header_alg``
    what the header claims (default: ``algorithm``). Salt length defaults to the hash size (RFC 7518)."""
    digest = HASHES[algorithm]
    signing_input = (
        b64(json.dumps({"alg": header_alg or algorithm, "typ": "JWT", **header}).encode())
        + "."
        + b64(json.dumps(body).encode())
    )
    scheme: padding.AsymmetricPadding
    if pkcs1v15:
        scheme = padding.PKCS1v15()
    else:
        scheme = padding.PSS(
            mgf=padding.MGF1(mgf_hash or digest),
            salt_length=digest.digest_size if salt_length is None else salt_length,
        )
    signature = key.sign(signing_input.encode(), scheme, digest)
    return f"{signing_input}.{b64(signature)}"


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_jwk(key: rsa.RSAPrivateKey, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()

    def uint(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "n": uint(numbers.n), "e": uint(numbers.e), **extra}
