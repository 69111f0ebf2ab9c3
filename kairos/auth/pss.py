"""RSASSA-PSS signatures (PS256/384/512, RFC 7518 §3.5), checked with ``cryptography`` directly.

python-jose 3.5 has no PS algorithms, so :class:`~kairos.auth.authenticator.JwtVerifier` checks
their signatures here and then applies the same claims checks as for every other algorithm. Only
the signature is this module's business: MGF1 with the same hash as the signature, and a salt as
long as the hash output, as RFC 7518 requires (a token signed with any other salt length is
refused, never auto-detected). The token's segments must be canonical unpadded base64url.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PSS_HASHES: Mapping[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
PSS_ALGORITHMS = frozenset(PSS_HASHES)

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class PssError(Exception):
    """The token is malformed or its signature does not verify with any of the keys."""


def b64url_decode(segment: str, *, canonical: bool = True) -> bytes:
    """Strict base64url without padding: only the URL alphabet, and (``canonical``) zero unused
    trailing bits, so that a token has one spelling only."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise PssError("malformed token")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise PssError("malformed token") from None
    if canonical and base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise PssError("malformed token")  # non-zero padding bits: another spelling of the same bytes
    return data


def verify(token: str, keys: Iterable[object], algorithm: str) -> bytes:
    """The payload bytes of the compact JWS ``token`` once its ``algorithm`` (PS256/384/512)
    signature verifies with one of ``keys``; anything but an RSA public key is never tried."""
    hash_type = PSS_HASHES.get(algorithm)
    if hash_type is None:
        raise PssError(f"{algorithm!r} is not an RSASSA-PSS algorithm")
    segments = token.split(".")
    if len(segments) != 3:
        raise PssError("malformed token")
    b64url_decode(segments[0])  # the caller read the header; here it is held to the same strictness
    payload, signature = b64url_decode(segments[1]), b64url_decode(segments[2])
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    digest = hash_type()
    scheme = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    for key in keys:
        if not isinstance(key, rsa.RSAPublicKey) or len(signature) != (key.key_size + 7) // 8:
            continue
        try:
            key.verify(signature, signing_input, scheme, digest)
        except InvalidSignature:
            continue
        return payload
    raise PssError("invalid token signature")


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """The RSA public key in ``pem`` (public key, certificate, or private key, as python-jose takes
    them for RS256). ValueError when it is not an RSA key."""
    data = pem.encode()
    key: object
    try:
        if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError:
                key = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"not an RSA key ({type(key).__name__})")
    return key


def public_key_from_jwk(n: str, e: str) -> rsa.RSAPublicKey:
    """An RSA public key from a JWK's ``n`` and ``e`` (base64url; padding and unused bits tolerated
    as python-jose does for the same key's RS algorithms). ValueError when they are not valid."""
    try:
        modulus = int.from_bytes(b64url_decode(n.rstrip("="), canonical=False), "big")
        exponent = int.from_bytes(b64url_decode(e.rstrip("="), canonical=False), "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except PssError:
        raise ValueError("n or e is not base64url") from None
