"""PS256/384/512 (RSASSA-PSS) in process: kairos.auth.pss, the verifier with public_key and JWKS keys,
and the one claims check shared with the python-jose algorithms."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from jose import jwt

from kairos.auth import pss
from kairos.auth.authenticator import AuthFailure, JwtVerifier
from kairos.auth.jwks import JwksFetcher, KeySet, parse_jwks
from kairos.config.jwt import JwtConfig
from tests.auth.pss_tokens import b64, claims, public_jwk, public_pem, sign

SECRET = "a-pss-unit-test-secret-of-at-least-32-chars"
PS = ("PS256", "PS384", "PS512")
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PEM = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def verifier(algorithms: tuple[str, ...] = (*PS, "RS256"), **config: Any) -> JwtVerifier:
    settings: dict[str, Any] = {
        "public_key": public_pem(KEY),
        "issuer": "kairos-tests",
        "audience": ("api", "api-v2"),
        "required_claims": ("sub",),
        **config,
    }
    return JwtVerifier(JwtConfig(algorithms=algorithms, **settings))


def refused(check: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthFailure) as caught:  # AuthFailure and nothing else: never a 500
        check.verify(token)
    assert caught.value.error == "invalid_token"
    return caught.value.message


# -- public_key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", PS)
def test_ps_tokens_verify_with_the_public_key(algorithm: str) -> None:
    identity = verifier().verify(sign(KEY, claims(roles=["admin"]), algorithm))
    assert identity.kind == "jwt" and identity.subject == "alice" and identity.roles == {"admin"}
    assert identity.claims["aud"] == "api"


def test_public_key_as_pkcs1_pem_or_certificate() -> None:
    pkcs1 = (
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(KEY, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    for pem in (pkcs1, certificate):
        assert verifier(public_key=pem).verify(sign(KEY, claims())).subject == "alice"


def test_the_header_alg_decides_the_padding() -> None:
    check = verifier()
    # An RS256 (PKCS#1 v1.5) signature under a PS256 header, and a PSS signature under RS256.
    assert "signature" in refused(check, sign(KEY, claims(), "RS256", header_alg="PS256", pkcs1v15=True))
    assert "signature" in refused(check, sign(KEY, claims(), "PS256", header_alg="RS256"))
    # The hash must be the header's: PS384 bytes under a PS256 header (and the other way round).
    assert "signature" in refused(check, sign(KEY, claims(), "PS384", header_alg="PS256"))
    assert "signature" in refused(check, sign(KEY, claims(), "PS256", header_alg="PS512"))
    # RS256 and PS256 may share the RSA public key: both pass when both are allowed.
    assert check.verify(jwt.encode(claims(), KEY, algorithm="RS256")).subject == "alice"


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("salt length 0", {"salt_length": 0}),
        ("salt length 20", {"salt_length": 20}),
        ("salt length 33", {"salt_length": 33}),
        ("maximum salt length", {"salt_length": padding.PSS.MAX_LENGTH}),
        ("MGF1 with SHA-1", {"mgf_hash": hashes.SHA1()}),
        ("MGF1 with SHA-512", {"mgf_hash": hashes.SHA512()}),
    ],
)
def test_only_rfc_7518_pss_parameters_pass(name: str, options: dict[str, Any]) -> None:
    token = sign(KEY, claims(), "PS256", **options)
    assert "signature" in refused(verifier(), token), name


def test_the_salt_length_is_the_hash_size_for_each_algorithm() -> None:
    check = verifier()
    for algorithm, size in (("PS256", 32), ("PS384", 48), ("PS512", 64)):
        assert check.verify(sign(KEY, claims(), algorithm, salt_length=size)).subject == "alice"
        assert "signature" in refused(check, sign(KEY, claims(), algorithm, salt_length=size - 1))
        assert "signature" in refused(check, sign(KEY, claims(sub="x"), algorithm, salt_length=0))


def test_allow_list_and_key_family() -> None:
    token = sign(KEY, claims())
    assert "'PS256' is not allowed" in refused(verifier(("RS256",)), token)
    assert "'PS384' is not allowed" in refused(verifier(("PS256",)), sign(KEY, claims(), "PS384"))
    # Signed with another RSA key.
    assert "signature" in refused(verifier(), sign(OTHER, claims()))
    # An EC public_key can never verify a PS token (PS needs RSA); ES256 still works with it.
    ec_check = verifier(("PS256", "ES256"), public_key=EC_PEM)
    assert "no key configured for algorithm PS256" in refused(ec_check, token)
    assert ec_check.verify(jwt.encode(claims(), EC_KEY, algorithm="ES256")).subject == "alice"


def test_an_unusable_public_key_for_ps_is_logged_once_at_build(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "kairos.auth"):
        check = verifier(("PS256", "ES256"), public_key=EC_PEM)
    assert "cannot verify PS256/384/512" in caplog.text and "not an RSA key" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "kairos.auth"):
        refused(check, sign(KEY, claims()))
        verifier(public_key=public_pem(KEY))
    assert caplog.text == ""


def test_a_ps_token_never_verifies_with_the_hmac_secret() -> None:
    check = verifier(("HS256", "PS256"), secret=SECRET)
    header = b64(json.dumps({"alg": "PS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(sub="mallory")).encode())
    for material in (SECRET.encode(), public_pem(KEY).encode()):
        signature = hmac.new(material, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert "signature" in refused(check, f"{header}.{payload}.{b64(signature)}")
    # The secret still serves HS256.
    assert check.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).subject == "alice"


def _tampered(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(pss.b64url_decode(payload))
    body.update(changes)
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


def _reheadered(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    fields = {**json.loads(pss.b64url_decode(header)), **changes}
    return f"{b64(json.dumps(fields).encode())}.{payload}.{signature}"


def test_tampered_tokens_are_refused() -> None:
    check = verifier()
    token = sign(KEY, claims())
    assert "signature" in refused(check, _tampered(token, sub="mallory"))
    assert "signature" in refused(check, _tampered(token, roles=["admin"]))
    assert "signature" in refused(check, _reheadered(token, kid="other"))
    header, payload, signature = token.split(".")
    flipped = bytearray(pss.b64url_decode(signature))
    flipped[-1] ^= 1
    assert "signature" in refused(check, f"{header}.{payload}.{b64(bytes(flipped))}")
    assert check.verify(token).subject == "alice"  # the original is fine


def _segments(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


GOOD = sign(KEY, claims())
H, P, S = _segments(GOOD)


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("no signature", f"{H}.{P}."),
        ("short signature", f"{H}.{P}.{S[:-4]}"),
        ("long signature", f"{H}.{P}.{S}AAAA"),
        ("padded signature", f"{H}.{P}.{S}=="),
        ("signature with a dot", f"{H}.{P}.{S[:10]}.{S[10:]}"),
        ("standard base64 alphabet", f"{H}.{P}.{S.replace('-', '+').replace('_', '/')}x+/"),
        ("impossible length", f"{H}.{P}.{S}AAA"),  # 4n+1 characters
        ("non-canonical trailing bits", f"{H}.{P}.{S[:-1]}{'B' if S[-1] == 'A' else 'A'}"),
        ("non-ASCII", f"{H}.{P}.{S[:-2]}é"),
        ("two segments", f"{H}.{P}"),
        ("payload not base64", f"{H}.!!!.{S}"),
    ],
)
def test_malformed_ps_tokens_are_a_clean_auth_failure(name: str, token: str) -> None:
    message = refused(verifier(), token)
    assert "signature or format" in message or "malformed" in message, (name, message)


@pytest.mark.parametrize(
    ("name", "payload", "fragment"),
    [
        ("not JSON", b"not json", "not JSON"),
        ("not UTF-8", b"\xff\xfe{}", "not JSON"),
        ("a JSON array", b'["sub"]', "not a JSON object"),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
)
def test_validly_signed_payloads_that_are_not_claims(name: str, payload: bytes, fragment: str) -> None:
    header = b64(json.dumps({"alg": "PS256"}).encode())
    signing_input = f"{header}.{b64(payload)}"
    signature = KEY.sign(
        signing_input.encode(), padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )
    assert fragment in refused(verifier(), f"{signing_input}.{b64(signature)}"), name


# -- one claims check for every algorithm ----------------------------------------------------------


def _mint(algorithm: str, body: dict[str, Any]) -> str:
    if algorithm == "HS256":
        return str(jwt.encode(body, SECRET, algorithm="HS256"))
    if algorithm == "RS256":
        return str(jwt.encode(body, KEY, algorithm="RS256"))
    return sign(KEY, body, algorithm)


ALL = ("HS256", "RS256", *PS)
NOW = int(time.time())
GONE = object()  # a claim removed from the defaults (None is a present JSON null)


@pytest.fixture
def clock_at_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parameters below are computed from NOW at collection; the verifier reads the clock when
    the test runs, which in a long suite is minutes later (past the 30 s leeway they probe)."""
    monkeypatch.setattr(time, "time", lambda: float(NOW))


def body_with(changes: dict[str, Any]) -> dict[str, Any]:
    body = claims()
    for name, value in changes.items():
        if value is GONE:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@pytest.mark.parametrize(
    ("name", "changes", "fragment"),
    [
        ("expired", {"exp": NOW - 600}, "token expired"),
        ("expired as a float", {"exp": NOW - 600.5}, "token expired"),
        ("not yet valid", {"nbf": NOW + 600}, "invalid claims: the token is not yet valid (nbf)"),
        ("wrong issuer", {"iss": "someone-else"}, "invalid claims: invalid issuer"),
        ("missing issuer", {"iss": GONE}, "invalid claims: invalid issuer"),
        ("issuer in a list", {"iss": ["kairos-tests"]}, "invalid claims: invalid issuer"),
        ("wrong audience", {"aud": "elsewhere"}, "token audience is not accepted"),
        ("missing audience", {"aud": GONE}, "token audience is not accepted"),
        ("audience of another type", {"aud": 5}, "token audience is not accepted"),
        ("audience list of objects", {"aud": [{}, ["api"]]}, "token audience is not accepted"),
        ("missing required claim", {"sub": GONE}, "token lacks required claim 'sub'"),
        ("exp as a string", {"exp": str(NOW + 300)}, "invalid claims: exp must be a number"),
        ("exp null", {"exp": None}, "invalid claims: exp must be a number"),
        ("nbf NaN", {"nbf": float("nan")}, "invalid claims: nbf must be a number"),
        ("exp a boolean", {"exp": True}, "invalid claims: exp must be a number"),
        ("nbf an object", {"nbf": {}}, "invalid claims: nbf must be a number"),
        ("jti a number", {"jti": 7}, "invalid claims: jti must be a string"),
    ],
)
@pytest.mark.usefixtures("clock_at_now")
def test_every_algorithm_gets_the_same_claims_checks(
    name: str, changes: dict[str, Any], fragment: str
) -> None:
    check = verifier(ALL, secret=SECRET)
    body = body_with(changes)
    messages = {algorithm: refused(check, _mint(algorithm, body)) for algorithm in ALL}
    assert set(messages.values()) == {messages["HS256"]} and fragment in messages["HS256"], (name, messages)


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": NOW - 10},  # within the 30 s leeway
        {"nbf": NOW + 10},
        {"exp": GONE},  # exp is optional
        {"exp": 10**400},  # far future, too big for a float
        {"aud": ["other", "api-v2"]},
        {"iat": GONE},
        {"iat": "whenever", "sub": 42, "jti": "id-1"},  # iat and sub are not checked
        {"at_hash": "x"},
    ],
)
@pytest.mark.usefixtures("clock_at_now")
def test_every_algorithm_accepts_the_same_claims(changes: dict[str, Any]) -> None:
    check = verifier(ALL, secret=SECRET)
    for algorithm in ALL:
        assert check.verify(_mint(algorithm, body_with(changes))).kind == "jwt", algorithm


def test_both_signature_paths_share_one_claims_function(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = JwtVerifier._check_claims

    def spy(self: JwtVerifier, token_claims: Any, now: float) -> None:
        seen.append(str(token_claims["sub"]))
        original(self, token_claims, now)

    monkeypatch.setattr(JwtVerifier, "_check_claims", spy)
    check = verifier(ALL, secret=SECRET)
    for algorithm in ALL:
        check.verify(_mint(algorithm, claims(sub=algorithm)))
    assert seen == list(ALL)


# -- the cache ---------------------------------------------------------------------------------------


def test_a_verified_ps_token_is_cached_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    check = verifier()
    token = sign(KEY, claims())
    calls = []
    original = pss.verify

    def counting(*args: Any) -> bytes:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(pss, "verify", counting)
    for _ in range(5):
        assert check.verify(token).subject == "alice"
    assert len(calls) == 1
    soon = sign(KEY, claims(exp=int(time.time()) - 25))  # expired, but within the leeway
    check.verify(soon)
    check.verify(soon)
    assert len(calls) == 3  # cached only until exp: checked each time


# -- JWKS --------------------------------------------------------------------------------------------


def test_jwks_rsa_keys_for_ps() -> None:
    document = {
        "keys": [
            public_jwk(KEY, kid="ps", alg="PS256", use="sig"),
            public_jwk(OTHER, kid="any"),
            public_jwk(SMALL, kid="small", alg="PS256"),
            public_jwk(KEY, kid="ps512", alg="PS512"),
        ]
    }
    keys = parse_jwks(document, ("RS256", "PS256", "PS384"))
    assert sorted(keys.by_kid["ps"]) == ["PS256"]  # its alg only
    assert sorted(keys.by_kid["any"]) == ["PS256", "PS384", "RS256"]  # no alg: every allowed RS/PS
    assert "small" not in keys.by_kid and "ps512" not in keys.by_kid
    assert any("shorter than 2048 bits" in reason for reason in keys.ignored)
    assert any("fits PS512" in reason for reason in keys.ignored)
    assert all(isinstance(key, rsa.RSAPublicKey) for key in keys.for_algorithm("PS256"))
    # A key without alg, when only PS is allowed.
    assert sorted(parse_jwks({"keys": [public_jwk(OTHER, kid="o")]}, ("PS384",)).by_kid["o"]) == ["PS384"]
    # Padded n/e (python-jose takes them for RS keys) are accepted; a broken n is not.
    padded = public_jwk(KEY, kid="p", alg="PS256")
    padded["n"] += "=" * (-len(padded["n"]) % 4)
    assert parse_jwks({"keys": [padded]}, PS).has_kid("p")
    broken = {**public_jwk(KEY, kid="b", alg="PS256"), "n": "!!!"}
    with pytest.raises(Exception, match="invalid key"):
        parse_jwks({"keys": [broken]}, PS)


def jwks_verifier(keys: KeySet, algorithms: tuple[str, ...], **config: Any) -> JwtVerifier:
    jwt_config = JwtConfig(
        jwks_url="http://idp.test/jwks.json",
        algorithms=algorithms,
        issuer="kairos-tests",
        audience="api",
        **config,
    )
    fetcher = JwksFetcher.from_config(jwt_config)
    fetcher.keys = keys
    return JwtVerifier(jwt_config, fetcher)


def test_ps_tokens_with_jwks_keys() -> None:
    algorithms = ("RS256", "PS256", "ES256")
    document = {
        "keys": [
            public_jwk(KEY, kid="ps", alg="PS256"),
            public_jwk(OTHER, kid="rs", alg="RS256"),
            public_jwk(OTHER, kid="both"),
        ]
    }
    check = jwks_verifier(parse_jwks(document, algorithms), algorithms)
    assert check.verify(sign(KEY, claims(), kid="ps")).subject == "alice"
    assert check.verify(sign(OTHER, claims(), kid="both")).subject == "alice"
    assert check.verify(jwt.encode(claims(), OTHER, "RS256", headers={"kid": "both"})).subject == "alice"
    # A key published for PS256 does not verify RS256, nor a key published for RS256 PS256.
    rs_with_ps_kid = jwt.encode(claims(), KEY, "RS256", headers={"kid": "ps"})
    assert "no signing key for algorithm RS256 with id 'ps'" in refused(check, rs_with_ps_kid)
    assert "no signing key for algorithm PS256 with id 'rs'" in refused(
        check, sign(OTHER, claims(), kid="rs")
    )
    # Wrong key behind a kid, tampered payload, expired token, wrong audience.
    assert "signature" in refused(check, sign(OTHER, claims(), kid="ps"))
    assert "signature" in refused(check, _tampered(sign(KEY, claims(), kid="ps"), sub="mallory"))
    assert "expired" in refused(check, sign(KEY, claims(exp=NOW - 600), kid="ps"))
    assert "audience" in refused(check, sign(KEY, claims(aud="elsewhere"), kid="ps"))
    # Without kid: each PS256 key of the set (at most 4) is tried.
    assert check.verify(sign(KEY, claims(sub="no-kid"))).subject == "no-kid"
    assert check.verify(sign(OTHER, claims(sub="no-kid"))).subject == "no-kid"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in refused(check, sign(stranger, claims()))
    # PS256 is allowed, PS384 is not: refused before any key is looked at.
    assert "'PS384' is not allowed" in refused(check, sign(KEY, claims(), "PS384", kid="both"))
