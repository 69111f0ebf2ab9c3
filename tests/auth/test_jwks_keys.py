"""kairos.auth.jwks in process: JWKS parsing, refresh timing, the bounded fetcher, the verifier."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kairos.auth.authenticator import Authenticator, AuthFailure, JwtVerifier, KeyRefreshNeeded
from kairos.auth.jwks import (
    MAX_KEYS,
    JwksError,
    JwksFetcher,
    KeySet,
    backoff_delay,
    parse_jwks,
    refresh_delay,
)
from kairos.config.jwt import JwtConfig
from kairos.middleware.auth import AuthMiddleware
from tests.asgi import AsgiClients

RS = ("RS256",)
URL = "http://idp.test/jwks.json"


class Key:
    def __init__(self, kid: str | None, kind: str = "RSA", bits: int = 2048, curve: Any = None) -> None:
        self.kid = kid
        if kind == "RSA":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            self.algorithm = "RS256"
        else:
            self.private = ec.generate_private_key(curve or ec.SECP256R1())
            self.algorithm = {"secp256r1": "ES256", "secp384r1": "ES384"}[self.private.curve.name]

    @property
    def public_pem(self) -> str:
        return str(
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = jwk.construct(self.public_pem, self.algorithm).to_dict()
        public.pop("alg", None)
        if self.kid is not None:
            public["kid"] = self.kid
        return {**public, **extra}

    def token(self, kid: str | None = "", algorithm: str | None = None, **claims: Any) -> str:
        body = {"sub": "alice", "exp": int(time.time()) + 300, **claims}
        kid = self.kid if kid == "" else kid
        headers = {} if kid is None else {"kid": kid}
        return str(jwt.encode(body, self.private, algorithm=algorithm or self.algorithm, headers=headers))


RSA_A = Key("a")
RSA_B = Key("b")
EC_256 = Key("e", "EC")
EC_384 = Key("e384", "EC", curve=ec.SECP384R1())


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [None, [], "keys", {"keys": {}}, {"kid": "a"}, {"keys": "x"}],
)
def test_documents_that_are_not_jwks_are_errors(document: object) -> None:
    with pytest.raises(JwksError, match="not a JWKS document"):
        parse_jwks(document, RS)


def test_rsa_and_ec_keys_by_kid_and_algorithm() -> None:
    keys = parse_jwks({"keys": [RSA_A.jwk(use="sig", alg="RS256"), EC_256.jwk()]}, ("RS256", "ES256"))
    assert len(keys) == 2 and keys.ignored == ()
    assert keys.has_kid("a") and keys.has_kid("e") and not keys.has_kid("b")
    assert len(keys.for_kid("a", "RS256")) == 1
    assert keys.for_kid("a", "ES256") == ()  # a key is only ever used for its own family
    assert keys.for_kid("e", "RS256") == ()
    assert len(keys.for_algorithm("ES256")) == 1


def test_an_rsa_key_without_alg_serves_each_allowed_rs_algorithm() -> None:
    keys = parse_jwks({"keys": [RSA_A.jwk()]}, ("RS256", "RS384", "ES256", "HS256"))
    assert sorted(keys.by_kid["a"]) == ["RS256", "RS384"]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("not-a-dict", "not an object"),
        (RSA_A.jwk(use="enc"), "use 'enc' is not 'sig'"),
        (RSA_A.jwk(key_ops=["encrypt"]), "key_ops does not allow 'verify'"),
        ({"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256"}, "oct"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, "'OKP'"),
        (RSA_A.jwk(d="AQAB"), "private key material"),
        (RSA_A.jwk(alg="ES256"), "alg 'ES256' does not fit a RSA key"),
        (RSA_A.jwk(alg="PS256"), "no allowed algorithm for this key (fits PS256)"),  # PS256 not allowed
        (EC_256.jwk(alg="ES384"), "alg 'ES384' does not fit a EC key"),
        (EC_384.jwk(), "no allowed algorithm for this key (fits ES384)"),
        ({**EC_256.jwk(), "crv": "secp256k1"}, "unsupported EC curve"),
        ({"kty": "RSA", "kid": "n", "e": "AQAB"}, "missing or invalid key parameters"),
        ({"kty": "RSA", "kid": "n", "n": "!!!", "e": "AQAB"}, "invalid key"),
        (RSA_A.jwk(kid=7), "kid is not a string"),
        (Key("small", bits=1024).jwk(), "shorter than 2048 bits"),
    ],
)
def test_unusable_keys_are_ignored_with_a_reason(entry: object, reason: str) -> None:
    keys = parse_jwks({"keys": [entry, RSA_B.jwk()]}, ("RS256", "ES256", "HS256"))
    assert list(keys.by_kid) == ["b"]
    assert len(keys.ignored) == 1 and keys.ignored[0].startswith("keys[0]") and reason in keys.ignored[0]


def test_a_document_without_a_usable_key_is_an_error() -> None:
    with pytest.raises(JwksError, match="no usable signing key") as caught:
        parse_jwks({"keys": [RSA_A.jwk(use="enc"), {"kty": "oct", "k": "AAAA"}]}, RS)
    assert "use 'enc'" in str(caught.value) and "oct" in str(caught.value)
    with pytest.raises(JwksError, match="no keys"):
        parse_jwks({"keys": []}, RS)
    with pytest.raises(JwksError, match="no allowed algorithm"):
        parse_jwks({"keys": [RSA_A.jwk()]}, ("ES256",))


def test_keys_without_kid_serve_only_tokens_without_kid() -> None:
    keys = parse_jwks({"keys": [Key(None).jwk()]}, RS)
    assert keys.by_kid == {} and len(keys.for_algorithm("RS256")) == 1


def test_at_most_max_keys_are_read() -> None:
    entry = RSA_A.jwk()
    keys = parse_jwks({"keys": [{**entry, "kid": str(i)} for i in range(MAX_KEYS + 5)]}, RS)
    assert len(keys) == MAX_KEYS and f"more than {MAX_KEYS} keys" in keys.ignored[0]


# -- timing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "default", "expected"),
    [
        (None, 300.0, 300.0),
        ("public", 300.0, 300.0),
        ("public, max-age=3600, must-revalidate", 300.0, 3600.0),
        ("max-age=5", 300.0, 60.0),  # bounded below
        ("max-age=5", 10.0, 10.0),  # ... but never above what the operator asked for
        ("max-age=999999999", 300.0, 86_400.0),  # bounded above
        ("no-store", 300.0, 60.0),
        ('MAX-AGE="120"', 300.0, 120.0),
    ],
)
def test_refresh_delay_respects_max_age_within_bounds(
    header: str | None, default: float, expected: float
) -> None:
    assert refresh_delay(header, default) == expected


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [backoff_delay(n, 300.0) for n in range(1, 10)]
    assert 0.9 <= delays[0] <= 1.1 and 1.8 <= delays[1] <= 2.2
    assert all(d <= 66.0 for d in delays) and delays[-1] >= 54.0
    assert backoff_delay(10, 5.0) <= 5.5


# -- the fetcher -----------------------------------------------------------------------------------


class Idp:
    """An in-process JWKS endpoint (httpx.MockTransport) that counts requests."""

    def __init__(self, document: object, delay: float = 0.0) -> None:
        self.document = document
        self.delay = delay
        self.status = 200
        self.cache_control: str | None = None
        self.requests = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "down"})
        if isinstance(self.document, bytes):
            return httpx.Response(200, content=self.document, headers=headers)
        return httpx.Response(200, json=self.document, headers=headers)

    def fetcher(self, algorithms: tuple[str, ...] = RS, **options: Any) -> JwksFetcher:
        options = {"min_refresh_secs": 30.0, "timeout_secs": 1.0, **options}
        return JwksFetcher(URL, algorithms, transport=httpx.MockTransport(self.handler), **options)


def run(coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coroutine())


def running(fetcher: JwksFetcher) -> bool:
    """Read afresh through a call: mypy keeps ``fetcher.running`` narrowed by an assert across the
    calls that change it, and would call the opposite assert unreachable."""
    return fetcher.running


def test_single_flight_and_bounded_unknown_kid_refreshes() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]}, delay=0.05)

    async def scenario() -> None:
        fetcher = idp.fetcher()
        fetcher.start()
        try:
            assert await fetcher.refresh() and fetcher.keys is not None and idp.requests == 1
            waiters = [fetcher.refresh_soon() for _ in range(100)]
            assert all(waiter is not None for waiter in waiters)
            await asyncio.gather(*(waiter() for waiter in waiters if waiter is not None))
            assert idp.requests == 2  # 100 unknown kids, one shared fetch
            assert fetcher.refresh_soon() is None  # then nothing until min_refresh_secs passed
            assert idp.requests == 2
        finally:
            await fetcher.stop()
        assert fetcher.refresh_soon() is None  # stopped: no restart

    run(scenario)


def test_the_unknown_kid_interval_elapses() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]})

    async def scenario() -> None:
        fetcher = idp.fetcher(min_refresh_secs=0.1)
        fetcher.start()
        try:
            await fetcher.refresh()
            for _ in range(2):
                waiter = fetcher.refresh_soon()
                assert waiter is not None
                await waiter()
                assert fetcher.refresh_soon() is None
                await asyncio.sleep(0.12)
            assert idp.requests == 3
        finally:
            await fetcher.stop()

    run(scenario)


def test_a_waiting_request_gives_up_after_the_timeout() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]}, delay=5.0)

    async def scenario() -> None:
        fetcher = idp.fetcher(timeout_secs=0.2)
        started = time.monotonic()
        waiter = fetcher.refresh_soon()  # starts the fetcher lazily inside a running loop
        assert waiter is not None
        await waiter()
        assert time.monotonic() - started < 1.0 and fetcher.keys is None
        await asyncio.sleep(0.05)
        assert fetcher.last_error == "timed out"
        await fetcher.stop()

    run(scenario)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_failures_keep_the_last_good_keys_and_log_once_per_streak() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]})
    # A handler of its own: once a gateway started in this process, "kairos" does not propagate.
    logger = logging.getLogger("kairos.auth.jwks")
    captured, level = Records(), logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG)

    async def scenario() -> None:
        fetcher = idp.fetcher()
        fetcher.start()
        try:
            assert await fetcher.refresh()
            good = fetcher.keys
            failures: tuple[object, ...] = (503, b"<html>", [], {"keys": [{"kty": "oct", "k": "AAAA"}]})
            for failure in failures:
                if isinstance(failure, int):
                    idp.status = failure
                else:
                    idp.status, idp.document = 200, failure
                assert not await fetcher.refresh()
                assert fetcher.keys is good
            assert fetcher.failures == 4
            idp.document = {"keys": [RSA_A.jwk()]}
            assert await fetcher.refresh() and fetcher.keys is good  # same keys: same object
            idp.document = {"keys": [RSA_A.jwk(), RSA_B.jwk()]}
            assert await fetcher.refresh() and fetcher.keys is not good
        finally:
            await fetcher.stop()

    try:
        run(scenario)
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
    records = captured.records
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len([m for m in warnings if "fetch failed: HTTP 503" in m]) == 1, warnings
    assert "keeping the 1 key(s)" in warnings[0]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert [m.split(": ", 1)[1] for m in debug] == [
        "fetch failed again (2): the document is not JSON",
        'fetch failed again (3): not a JWKS document (expected an object with a "keys" array)',
        "fetch failed again (4): no usable signing key for ['RS256'] "
        "(keys[0]: symmetric (oct) keys are never taken from a JWKS)",
    ]
    assert any("fetched again after 4 failed attempt(s)" in r.getMessage() for r in records)


def test_max_age_schedules_the_next_periodic_fetch() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]})
    idp.cache_control = "max-age=600"

    async def scenario() -> None:
        fetcher = idp.fetcher(refresh_secs=30.0)
        fetcher.start()
        try:
            await fetcher.refresh()
            assert 590 < fetcher._next_fetch - time.monotonic() <= 600
        finally:
            await fetcher.stop()

    run(scenario)


def test_configure_refilters_the_last_document_without_fetching() -> None:
    idp = Idp({"keys": [RSA_A.jwk(), EC_256.jwk()]})

    async def scenario() -> None:
        fetcher = idp.fetcher(("RS256",))
        fetcher.start()
        try:
            await fetcher.refresh()
            assert fetcher.keys is not None and not fetcher.keys.has_kid("e")
            config = JwtConfig(jwks_url=URL, algorithms=("RS256", "ES256"), jwks_min_refresh_secs=5)
            fetcher.configure(config)
            assert fetcher.keys is not None and fetcher.keys.has_kid("e")
            assert fetcher.min_refresh_secs == 5 and idp.requests == 1
        finally:
            await fetcher.stop()

    run(scenario)


# -- the verifier ------------------------------------------------------------------------------------


def verifier(keys: KeySet | None, **config: Any) -> tuple[JwtVerifier, JwksFetcher]:
    jwt_config = JwtConfig(jwks_url=URL, algorithms=("RS256", "ES256"), **config)
    fetcher = JwksFetcher.from_config(jwt_config)
    fetcher.keys = keys
    return JwtVerifier(jwt_config, fetcher), fetcher


def test_known_kids_verify_synchronously_and_unknown_ones_fail_outside_a_loop() -> None:
    check, _ = verifier(parse_jwks({"keys": [RSA_A.jwk(), EC_256.jwk()]}, ("RS256", "ES256")))
    assert check.verify(RSA_A.token()).subject == "alice"
    assert check.verify(EC_256.token(sub="bob")).subject == "bob"
    with pytest.raises(AuthFailure, match="unknown signing key id 'b'") as caught:
        check.verify(RSA_B.token())
    assert not isinstance(caught.value, KeyRefreshNeeded)  # no loop, nothing to wait for
    with pytest.raises(AuthFailure, match="no signing key for algorithm RS256 with id 'e'"):
        check.verify(RSA_A.token(kid="e"))
    with pytest.raises(AuthFailure, match="signature"):
        check.verify(RSA_B.token(kid="a"))
    empty, _ = verifier(None)
    with pytest.raises(AuthFailure, match="signing keys are not available yet"):
        empty.verify(RSA_A.token())


def test_tokens_without_kid() -> None:
    few = parse_jwks({"keys": [RSA_A.jwk(), RSA_B.jwk()]}, RS)
    check, _ = verifier(few)
    assert check.verify(RSA_B.token(kid=None)).subject == "alice"
    many = parse_jwks({"keys": [{**RSA_A.jwk(), "kid": str(i)} for i in range(5)]}, RS)
    check, _ = verifier(many)
    with pytest.raises(AuthFailure, match="no 'kid' and 5 keys fit RS256"):
        check.verify(RSA_A.token(kid=None))
    # With a static public_key too, a token without kid is checked with that key.
    other = Key("static")
    check, _ = verifier(few, public_key=other.public_pem)
    assert check.verify(other.token(kid=None)).subject == "alice"
    with pytest.raises(AuthFailure, match="signature"):
        check.verify(RSA_A.token(kid=None))
    assert check.verify(RSA_A.token()).subject == "alice"  # with kid: the JWKS


def test_verified_tokens_are_forgotten_when_the_keys_change() -> None:
    check, fetcher = verifier(parse_jwks({"keys": [RSA_A.jwk(), RSA_B.jwk()]}, RS))
    token = RSA_A.token()
    assert check.verify(token).subject == "alice"
    fetcher.keys = parse_jwks({"keys": [RSA_B.jwk()]}, RS)  # key "a" was withdrawn
    with pytest.raises(AuthFailure, match="unknown signing key id 'a'"):
        check.verify(token)


def test_unknown_kid_in_a_loop_waits_for_the_refresh_then_passes() -> None:
    idp = Idp({"keys": [RSA_A.jwk()]})

    async def scenario() -> None:
        config = JwtConfig(jwks_url=URL, algorithms=("RS256",))
        fetcher = idp.fetcher(min_refresh_secs=0.05)
        authenticator = Authenticator(config, jwks=fetcher)
        headers = [(b"authorization", f"Bearer {RSA_B.token()}".encode())]
        try:
            with pytest.raises(KeyRefreshNeeded, match="signing keys are not available yet") as caught:
                authenticator.authenticate(headers)
            await caught.value.wait()
            with pytest.raises(AuthFailure, match="unknown signing key id 'b'") as failure:
                authenticator.authenticate(headers)
            assert not isinstance(failure.value, KeyRefreshNeeded)  # within min_refresh_secs
            await asyncio.sleep(0.06)
            with pytest.raises(KeyRefreshNeeded, match="unknown signing key id 'b'") as caught:
                authenticator.authenticate(headers)
            idp.document = {"keys": [RSA_A.jwk(), RSA_B.jwk()]}
            await caught.value.wait()
            assert authenticator.authenticate(headers).subject == "alice"
            assert idp.requests == 2
        finally:
            await fetcher.stop()

    run(scenario)


def test_standalone_middleware_fetches_keys_on_first_use(asgi_client: AsgiClients) -> None:
    idp = Idp({"keys": [EC_256.jwk()]})

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"subject": request.scope["state"]["identity"].subject})

    async def scenario() -> None:
        config = JwtConfig(jwks_url=URL, algorithms=("ES256",))
        fetcher = idp.fetcher(("ES256",))
        app = AuthMiddleware(
            Starlette(routes=[Route("/", whoami)]), Authenticator(config, jwks=fetcher), required=True
        )
        try:
            async with asgi_client(app).async_client() as client:
                response = await client.get("/", headers={"Authorization": f"Bearer {EC_256.token()}"})
                assert response.status_code == 200 and response.json() == {"subject": "alice"}
                response = await client.get("/", headers={"Authorization": f"Bearer {RSA_A.token()}"})
                assert response.status_code == 401 and "'RS256' is not allowed" in response.json()["error"]
        finally:
            await fetcher.stop()
        assert idp.requests == 1

    run(scenario)


# -- the gateway -------------------------------------------------------------------------------------


def test_the_gateway_keeps_its_fetcher_across_reloads_of_the_same_url() -> None:
    from kairos.config import load_data
    from kairos.gateway import Gateway
    from kairos.settings import Settings
    from tests.processes import free_port

    def config(url: str | None, algorithms: list[str]) -> dict[str, Any]:
        jwt_section = {"jwks_url": url, "algorithms": algorithms} if url else None
        return {"version": 1, "routers": [], **({"jwt": jwt_section} if jwt_section else {})}

    first_url = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens: fetches fail, startup does not
    second_url = f"http://127.0.0.1:{free_port()}/keys"

    def fetcher_of(gateway: Gateway) -> JwksFetcher | None:
        return gateway.jwks  # read afresh after each apply(), as running() does

    async def scenario() -> None:
        gateway = Gateway(Settings(), config(first_url, ["RS256"]))
        first = gateway.jwks
        assert first is not None and not running(first)  # nothing starts before the lifespan
        await gateway.startup()
        try:
            assert running(first)
            gateway.apply(load_data(config(first_url, ["RS256", "ES256"])))
            assert fetcher_of(gateway) is first and first.algorithms == {"RS256", "ES256"}
            assert gateway.authenticator is not None and gateway.authenticator.jwt is not None
            assert gateway.authenticator.jwt.jwks is first
            gateway.apply(load_data(config(second_url, ["RS256"])))
            second = fetcher_of(gateway)
            assert second is not None and second is not first and second.url == second_url
            assert running(second) and not running(first)
            gateway.apply(load_data(config(None, [])))
            assert fetcher_of(gateway) is None and not running(second)
        finally:
            await gateway.shutdown()

    run(scenario)
