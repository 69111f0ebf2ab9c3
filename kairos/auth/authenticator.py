"""Who is calling: verifies a JWT (python-jose) or an API key and returns an Identity.

Rules that kairos-rs got wrong and this gets right (reference §3.4, §10.12):
- the token's ``alg`` must be in the configured allow-list (never ``none``), and the key is chosen by
  algorithm family, so an HS256 token "signed" with an RSA public key cannot pass (no key confusion);
- ``exp``/``nbf`` are checked with a small leeway, ``iat`` is not required, ``iss`` and ``aud``
  (string or list, on either side) are enforced when configured, ``required_claims`` too;
- ``Bearer`` is matched case-insensitively;
- API keys are kept as SHA-256 digests only and looked up by digest.
Verified tokens are cached until they expire (at most ``CACHE_SECONDS``), so a client reusing its
token costs a dict lookup instead of a signature check.

Verification is two steps. The signature: python-jose for HS/RS/ES, and ``cryptography`` for
PS256/384/512 (RSASSA-PSS, which python-jose lacks; see kairos/auth/pss.py); the ``alg`` in the
header picks both the key family and the padding, so RS and PS may share an RSA key but a PS token
is never checked with the HMAC secret or an EC key. Then the claims, by one function
(:meth:`JwtVerifier._check_claims`) whatever checked the signature.

With ``jwks_url`` the RS/PS/ES keys come from a :class:`~kairos.auth.jwks.JwksFetcher` (the gateway's,
kept across reloads). Verification stays synchronous: a token with a known ``kid`` is checked against
that key only, and only for an algorithm the key fits. A token whose ``kid`` is unknown (or that
arrives before the first keys loaded) raises :class:`KeyRefreshNeeded` when a bounded refresh can be
waited for (the caller awaits ``wait()`` and calls ``authenticate`` once more), else a plain
AuthFailure. A token without ``kid`` is checked with ``public_key`` when one is configured, else
against each JWKS key of its algorithm when there are at most ``MAX_KIDLESS_KEYS`` (JWKS sets are
small; more would make a forged token cost many signature checks), else refused. The cache of
verified tokens is emptied whenever the key set changes, so a key removed from the JWKS stops
working at the next refresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jose import jws, jwt
from jose.exceptions import JOSEError, JWTError

from kairos.auth import pss
from kairos.auth.jwks import JwksFetcher, KeySet
from kairos.config.jwt import JwtConfig
from kairos.config.model import ApiKeyConsumer

logger = logging.getLogger("kairos.auth")

CACHE_SECONDS = 300.0
CACHE_ENTRIES = 10_000
MAX_KIDLESS_KEYS = 4


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str  # "jwt" | "api_key"
    subject: str  # the token's sub, or the API-key consumer's name
    roles: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)


class AuthFailure(Exception):
    """401: no usable credentials. ``error`` is the RFC 6750 error code for WWW-Authenticate (None
    when no credentials were sent at all)."""

    def __init__(self, message: str, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.message = message
        self.error = error


class KeyRefreshNeeded(AuthFailure):
    """The token's signing key is not known yet and a JWKS refresh is under way: ``await wait()``
    (bounded by the fetch timeout), then authenticate once more. A caller that does not retry can
    treat it as the 401 it also is."""

    def __init__(self, message: str, wait: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self.wait = wait


_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # an empty signature: alg none


class JwtVerifier:
    def __init__(self, config: JwtConfig, jwks: JwksFetcher | None = None) -> None:
        self.algorithms = frozenset(config.effective_algorithms)
        self._secret = config.secret
        self._public_key = config.public_key
        if jwks is None and config.jwks_url is not None:
            jwks = JwksFetcher.from_config(config)  # standalone: starts on first use in a loop
        self.jwks = jwks
        self._keys_seen: KeySet | None = None
        self._issuer = config.issuer
        audience = config.audience
        self._audiences = (
            None if audience is None else frozenset([audience] if isinstance(audience, str) else audience)
        )
        self._required = tuple(config.required_claims)
        self._leeway = float(config.leeway_secs)
        self._pss_key: RSAPublicKey | None = None  # public_key parsed once, for PS tokens
        if self._public_key is not None and self.algorithms & pss.PSS_ALGORITHMS:
            try:
                self._pss_key = pss.load_public_key(self._public_key)
            except ValueError as exc:
                logger.warning("jwt.public_key cannot verify PS256/384/512 tokens: %s", exc)
        self._cache: dict[str, tuple[Identity, float]] = {}

    def verify(self, token: str) -> Identity:
        now = time.time()
        if self.jwks is not None and self.jwks.keys is not self._keys_seen:
            self._cache.clear()  # keys changed: a removed key must not live on in the cache
            self._keys_seen = self.jwks.keys
        cached = self._cache.get(token)
        if cached is not None and now < cached[1]:
            return cached[0]
        # One spelling per token (RFC 7515: base64url, no padding): python-jose also accepts junk
        # characters or "=" in the signature part, so variants of one token would each miss the
        # cache and cost a signature check, and a deny-list keyed on the string could be dodged.
        if not _TOKEN_SHAPE.fullmatch(token):
            raise AuthFailure("malformed token")
        try:
            pss.b64url_decode(token.rsplit(".", 1)[1])
        except pss.PssError:
            raise AuthFailure("malformed token") from None
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise AuthFailure("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthFailure(f"token algorithm {algorithm!r} is not allowed")
        key: Any
        if algorithm.startswith("HS"):
            key = self._secret
        elif self.jwks is not None and (self._public_key is None or header.get("kid") is not None):
            key = self._jwks_key(self.jwks, header.get("kid"), algorithm)
        elif algorithm in pss.PSS_ALGORITHMS:
            key = self._pss_key  # None when public_key is missing or not an RSA key
        else:
            key = self._public_key
        if key is None:
            raise AuthFailure(f"no key configured for algorithm {algorithm}")
        claims = _decode_claims(self._verified_payload(token, key, algorithm))
        self._check_claims(claims, now)
        identity = Identity("jwt", str(claims.get("sub", "")), _roles(claims.get("roles")), claims)
        self._remember(token, identity, claims, now)
        return identity

    @staticmethod
    def _verified_payload(token: str, key: Any, algorithm: str) -> bytes:
        """The payload once the signature is good (the signature only: claims are not looked at).
        ``algorithm`` is the header's, already in the allow-list, and ``key`` (or the list of JWKS
        candidates) was chosen for its family."""
        if algorithm in pss.PSS_ALGORITHMS:
            try:
                return pss.verify(token, key if isinstance(key, list) else [key], algorithm)
            except pss.PssError:
                raise AuthFailure("invalid token signature or format") from None
        try:
            payload: bytes = jws.verify(token, key, algorithms=[algorithm])
        except JOSEError:
            raise AuthFailure("invalid token signature or format") from None
        return payload

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        """The one claims check, for every algorithm: ``nbf``/``exp`` (NumericDate, with leeway),
        ``iss``, ``jti`` (a string), ``aud`` and ``required_claims``; ``iat`` and ``sub`` are not
        checked."""
        not_before = _numeric_date(claims, "nbf")
        if not_before is not None and not_before > now + self._leeway:
            raise AuthFailure("invalid claims: the token is not yet valid (nbf)")
        expires = _numeric_date(claims, "exp")
        if expires is not None and expires < now - self._leeway:
            raise AuthFailure("token expired")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise AuthFailure("invalid claims: invalid issuer")
        if "jti" in claims and not isinstance(claims["jti"], str):
            raise AuthFailure("invalid claims: jti must be a string")
        self._check_audience(claims)
        for name in self._required:
            if name not in claims:
                raise AuthFailure(f"token lacks required claim {name!r}")

    def _jwks_key(self, jwks: JwksFetcher, kid: object, algorithm: str) -> Any:
        """The JWKS key(s) a token may be checked with: never a key of another family or curve."""
        keys = jwks.keys
        if keys is None:
            raise self._refresh_or_fail(jwks, "signing keys are not available yet")
        if kid is None:
            candidates = keys.for_algorithm(algorithm)
            if len(candidates) > MAX_KIDLESS_KEYS:
                raise AuthFailure(f"token has no 'kid' and {len(candidates)} keys fit {algorithm}")
        elif not isinstance(kid, str):
            raise AuthFailure("malformed token: 'kid' is not a string")
        elif not keys.has_kid(kid):
            raise self._refresh_or_fail(jwks, f"unknown signing key id {kid[:64]!r}")
        else:
            candidates = keys.for_kid(kid, algorithm)
        if not candidates:
            raise AuthFailure(
                f"no signing key for algorithm {algorithm}" + (f" with id {kid[:64]!r}" if kid else "")
            )
        return candidates[0] if len(candidates) == 1 else list(candidates)

    @staticmethod
    def _refresh_or_fail(jwks: JwksFetcher, message: str) -> AuthFailure:
        wait = jwks.refresh_soon()
        return AuthFailure(message) if wait is None else KeyRefreshNeeded(message, wait)

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        if self._audiences is None:
            return
        presented = claims.get("aud")
        if isinstance(presented, str):
            accepted = presented in self._audiences
        else:
            values = presented if isinstance(presented, list) else ()
            accepted = any(isinstance(value, str) and value in self._audiences for value in values)
        if not accepted:
            raise AuthFailure("token audience is not accepted")

    def _remember(self, token: str, identity: Identity, claims: Mapping[str, Any], now: float) -> None:
        until = now + CACHE_SECONDS
        exp = claims.get("exp")  # a number: _check_claims made sure
        if isinstance(exp, int | float) and exp < until:
            until = float(exp)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[token] = (identity, until)


def _decode_claims(payload: bytes) -> Mapping[str, Any]:
    try:
        claims = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AuthFailure("malformed token: the payload is not JSON") from None
    if not isinstance(claims, dict):
        raise AuthFailure("malformed token: the payload is not a JSON object")
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | float | None:
    """``exp``/``nbf`` when present: a JSON number (not a string, not a boolean, not NaN). Returned
    as is: a huge integer compares fine with a float but would overflow converted to one."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise AuthFailure(f"invalid claims: {name} must be a number")
    return value


def _roles(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, Iterable):
        return frozenset(str(role) for role in value)
    return frozenset()


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """The gateway's credentials: built from config on every (re)load, shared by all routes."""

    def __init__(
        self,
        jwt_config: JwtConfig | None,
        api_keys: Sequence[ApiKeyConsumer] = (),
        api_key_header: str = "X-API-Key",
        *,
        jwks: JwksFetcher | None = None,
    ) -> None:
        """``jwks``: the gateway's shared fetcher for ``jwt_config.jwks_url`` (else one of its own)."""
        self.jwt = JwtVerifier(jwt_config, jwks) if jwt_config is not None else None
        self.api_key_header = api_key_header.lower().encode("latin-1")
        self._consumers = {key_digest(key): consumer.name for consumer in api_keys for key in consumer.keys}

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]], accept: str = "any") -> Identity:
        """``accept``: "any" (a valid JWT or API key), "jwt" or "api_key". Raises AuthFailure, or
        KeyRefreshNeeded (an AuthFailure) when awaiting a JWKS refresh and retrying may succeed."""
        authorization = api_key = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == self.api_key_header:
                api_key = value.decode("latin-1")
        failure: AuthFailure | None = None
        if api_key is not None and accept in ("any", "api_key") and self._consumers:
            consumer = self._consumers.get(key_digest(api_key))
            if consumer is not None:
                return Identity("api_key", consumer)
            failure = AuthFailure("invalid API key")
        if authorization is not None and accept in ("any", "jwt") and self.jwt is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthFailure("Authorization header must be 'Bearer <token>'", "invalid_request")
            return self.jwt.verify(token.strip())
        if failure is not None:
            raise failure
        raise AuthFailure("missing credentials", None)
