"""Property 4: the Authorization header and the token in it, whatever they hold.

Why: every protected request puts attacker-chosen bytes through this parser before anything else.
The only acceptable outcomes are an AuthFailure (401/403, the project's own rejection) or an
Identity for credentials we really issued; anything else is a 500 at best and a bypass at worst.
``check_authorization`` verifies accepted tokens independently (hmac / cryptography), so a forged
signature, an algorithm confusion or an expired token passing would fail here too.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import authorization_values, claims, header_values, json_values, three_part_tokens
from tests.fuzz.targets import API_KEY, auth_setups, b64url, check_authorization, sign_token


@fuzz_settings(scale=2)
@given(authorization_values)
@example(b"")
@example(b"Bearer")
@example(b"Bearer ")
@example(b"Bearer \xff\xfe.\x00.\x85")
@example(b"Bearer a.b.c.d")
@example(b"Bearer " + b"." * 1000)
@example(b"Bearer e30.e30.")
@example(b"Bearer eyJhbGciOiJub25lIn0.e30.")  # alg none
def test_any_authorization_header_value(value: bytes) -> None:
    check_authorization([(b"authorization", value)])


@fuzz_settings(scale=2)
@given(three_part_tokens())
def test_any_three_part_token(token: str) -> None:
    check_authorization([(b"authorization", b"Bearer " + token.encode("latin-1", "replace"))])


@fuzz_settings()
@given(
    st.sampled_from(
        [("HS256", "secret"), ("HS512", "secret"), ("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "ec")]
    ),
    st.one_of(claims(), json_values(6)),
    st.dictionaries(st.sampled_from(["kid", "typ", "crit", "jku"]), json_values(2), max_size=2),
)
def test_signed_tokens_with_hostile_claims(
    signer: tuple[str, str], payload: Any, extra_header: dict[str, Any]
) -> None:
    """Validly signed, hostile contents: the claims checks (exp/nbf/aud/iss/jti/roles types, huge and
    non-finite numbers) must refuse or accept, never raise."""
    algorithm, key = signer
    body = json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")
    token = sign_token({"alg": algorithm, **extra_header}, body, key)
    check_authorization([(b"authorization", b"Bearer " + token.encode())])


@fuzz_settings()
@given(header_values, header_values)
def test_api_key_and_authorization_together(api_key: bytes, authorization: bytes) -> None:
    check_authorization([(b"x-api-key", api_key), (b"authorization", authorization)])


def test_valid_credentials_are_accepted() -> None:
    """The properties above only mean something if the setups accept what they should."""
    mixed, elliptic = auth_setups()
    token = sign_token({"alg": "HS256"}, b'{"sub": "u1", "roles": ["admin"]}')
    assert mixed.authenticator.authenticate([(b"authorization", b"Bearer " + token.encode())]).subject == "u1"
    token = sign_token({"alg": "ES256"}, b'{"sub": "u2", "aud": "api"}', "ec")
    assert (
        elliptic.authenticator.authenticate([(b"authorization", b"bearer " + token.encode())]).subject == "u2"
    )
    identity = mixed.authenticator.authenticate([(b"x-api-key", API_KEY.encode())])
    assert identity.kind == "api_key"


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    """Algorithm confusion: the RSA public key (which attackers know) used as an HMAC secret."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    setup = auth_setups()[0]
    assert setup.rsa_public is not None
    pem = setup.rsa_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = b64url(b'{"alg":"HS256"}') + "." + b64url(b'{"sub":"admin"}')
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    check_authorization([(b"authorization", f"Bearer {signing_input}.{b64url(signature)}".encode())])
