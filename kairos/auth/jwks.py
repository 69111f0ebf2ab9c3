"""Signing keys from a JWKS URL (``jwt.jwks_url``): parsed once per fetch, looked up by ``kid``.

Two pieces:

- :func:`parse_jwks` turns a JWKS document into an immutable :class:`KeySet` (pure logic). Only
  signature keys that fit the configured algorithm allow-list are kept: ``RSA`` keys for
  RS256/384/512 and PS256/384/512 (at least 2048 bits), ``EC`` keys for ES256/384/512 on their own
  curve (P-256, P-384, P-521). A key's ``alg``, when present, must be one of those, and the key
  then serves that algorithm only (an RSA key published for PS256 never verifies an RS256 token);
  without ``alg`` an RSA key serves every allowed RS and PS algorithm. RS and ES keys are
  python-jose keys, PS keys ``cryptography`` RSA public keys (kairos/auth/pss.py verifies them).
  Keys with ``use`` other than ``sig``, with ``key_ops`` lacking ``verify``, with private members,
  of another type (``OKP``, ...) and all symmetric ``oct`` keys are ignored: HMAC keys come only
  from ``jwt.secret``, never from a document fetched over the network. A document with no usable
  key is a failed fetch.
- :class:`JwksFetcher` downloads the document with ``httpx.AsyncClient`` in the background. It is
  started by the gateway's lifespan (or lazily on first use when a standalone Authenticator runs in
  an event loop), never at import time, and refreshes every ``jwks_refresh_secs`` or, when the
  answer has ``Cache-Control: max-age``, after that many seconds bounded to [60 s, 24 h]. A failed
  fetch keeps the last good key set, is logged once per failure streak (then at debug level) and is
  retried with exponential backoff (1 s doubling, at most 60 s or ``jwks_refresh_secs``).

The verifier stays synchronous: it reads :attr:`JwksFetcher.keys`, a plain attribute. Only a token
naming an unknown ``kid`` (or arriving before the first keys loaded) asks for a refresh with
:meth:`JwksFetcher.refresh_soon`, which is bounded two ways: single flight (every caller shares
the one fetch in progress, periodic or not) and at most one unknown-kid refresh per
``jwks_min_refresh_secs``, so a flood of tokens with random kids costs at most one fetch per
interval; in between, unknown kids fail at once (the interval acts as a negative cache). A caller
waits for the shared fetch at most ``jwks_timeout_secs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from jose import jwk
from jose.exceptions import JWKError

from kairos.auth import pss
from kairos.config.jwt import JwtConfig

logger = logging.getLogger("kairos.auth.jwks")

MAX_DOCUMENT_BYTES = 512 * 1024
MAX_KEYS = 100
MIN_RSA_BITS = 2048
MAX_AGE_BOUNDS = (60.0, 86_400.0)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class JwksError(Exception):
    """The document cannot be used at all (the last good key set stays)."""


@dataclass(frozen=True, slots=True, eq=False)
class KeySet:
    """The usable keys of one JWKS document: by ``kid`` and algorithm, and by algorithm alone."""

    by_kid: Mapping[str, Mapping[str, tuple[Any, ...]]]
    by_algorithm: Mapping[str, tuple[Any, ...]]
    ignored: tuple[str, ...] = ()
    fingerprint: tuple[tuple[str | None, str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.fingerprint)

    def has_kid(self, kid: str) -> bool:
        return kid in self.by_kid

    def for_kid(self, kid: str, algorithm: str) -> tuple[Any, ...]:
        return self.by_kid.get(kid, {}).get(algorithm, ())

    def for_algorithm(self, algorithm: str) -> tuple[Any, ...]:
        return self.by_algorithm.get(algorithm, ())


def parse_jwks(document: object, algorithms: Iterable[str]) -> KeySet:
    """Keep the keys fit for ``algorithms``; raise JwksError when the document is unusable."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWKS document (expected an object with a "keys" array)')
    allowed = frozenset(algorithms)
    by_kid: dict[str, dict[str, tuple[Any, ...]]] = {}
    by_algorithm: dict[str, tuple[Any, ...]] = {}
    ignored: list[str] = []
    fingerprint: list[tuple[str | None, str, str]] = []
    entries: list[object] = document["keys"]
    if len(entries) > MAX_KEYS:
        ignored.append(f"keys[{MAX_KEYS}:]: more than {MAX_KEYS} keys")
    for index, entry in enumerate(entries[:MAX_KEYS]):
        try:
            kid, built = _parse_key(entry, allowed)
        except JwksError as exc:
            ignored.append(f"keys[{index}]{_kid_label(entry)}: {exc}")
            continue
        for algorithm, key, public in built:
            if kid is not None:
                per_kid = by_kid.setdefault(kid, {})
                per_kid[algorithm] = (*per_kid.get(algorithm, ()), key)
            by_algorithm[algorithm] = (*by_algorithm.get(algorithm, ()), key)
            fingerprint.append((kid, algorithm, public))
    if not fingerprint:
        detail = "; ".join(ignored) if ignored else "the document has no keys"
        raise JwksError(f"no usable signing key for {sorted(allowed)} ({detail})")
    return KeySet(by_kid, by_algorithm, tuple(ignored), tuple(fingerprint))


def _kid_label(entry: object) -> str:
    kid = entry.get("kid") if isinstance(entry, Mapping) else None
    return f" (kid {kid[:64]!r})" if isinstance(kid, str) else ""


def _parse_key(entry: object, allowed: frozenset[str]) -> tuple[str | None, list[tuple[str, Any, str]]]:
    if not isinstance(entry, Mapping):
        raise JwksError("not an object")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError("kid is not a string")
    use = entry.get("use")
    if use is not None and use != "sig":
        raise JwksError(f"use {use!r} is not 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JwksError("key_ops does not allow 'verify'")
    kty = entry.get("kty")
    if kty == "oct":
        raise JwksError("symmetric (oct) keys are never taken from a JWKS")
    if _PRIVATE_MEMBERS & entry.keys():
        raise JwksError("contains private key material")
    if kty == "RSA":
        public = {"kty": "RSA", "n": entry.get("n"), "e": entry.get("e")}
        family: tuple[str, ...] = _RSA_ALGORITHMS
    elif kty == "EC":
        curve = entry.get("crv")
        public = {"kty": "EC", "crv": curve, "x": entry.get("x"), "y": entry.get("y")}
        family = (_EC_ALGORITHM_BY_CURVE[curve],) if curve in _EC_ALGORITHM_BY_CURVE else ()
        if not family:
            raise JwksError(f"unsupported EC curve {curve!r}")
    else:
        raise JwksError(f"unsupported key type {kty!r}")
    if not all(isinstance(value, str) and value for value in public.values()):
        raise JwksError("missing or invalid key parameters")
    declared = entry.get("alg")
    if declared is not None:
        if declared not in family:
            raise JwksError(f"alg {declared!r} does not fit a {kty} key")
        candidates: tuple[str, ...] = (declared,)
    else:
        candidates = family
    usable = [algorithm for algorithm in candidates if algorithm in allowed]
    if not usable:
        raise JwksError(f"no allowed algorithm for this key (fits {', '.join(candidates)})")
    built = []
    canonical = json.dumps(public, sort_keys=True)
    for algorithm in usable:
        key: Any
        try:
            if algorithm in pss.PSS_ALGORITHMS:  # python-jose has no PS: a cryptography key
                key = pss.public_key_from_jwk(str(public["n"]), str(public["e"]))
            else:
                key = jwk.construct(public, algorithm)
        except (JWKError, ValueError, TypeError) as exc:
            raise JwksError(f"invalid key: {exc}") from None
        if kty == "RSA" and _rsa_bits(key) < MIN_RSA_BITS:
            raise JwksError(f"RSA key shorter than {MIN_RSA_BITS} bits")
        built.append((algorithm, key, canonical))
    return kid, built


def _rsa_bits(key: Any) -> int:
    """The size of an RSA key: a python-jose key (RS) wraps the cryptography key (PS) it holds."""
    return int(getattr(key, "prepared_key", key).key_size)


def refresh_delay(cache_control: str | None, default: float) -> float:
    """Seconds until the next periodic fetch: ``max-age`` bounded to [60 s, 24 h] (the lower bound is
    ``default`` when that is smaller), else ``default``."""
    if cache_control:
        lowered = cache_control.lower()
        match = _MAX_AGE.search(lowered)
        if match is not None or "no-cache" in lowered or "no-store" in lowered:
            max_age = float(match.group(1)) if match is not None else 0.0
            low, high = MAX_AGE_BOUNDS
            return min(max(max_age, min(low, default)), high)
    return default


def backoff_delay(failures: int, cap: float) -> float:
    """1 s, 2 s, 4 s ... up to ``cap`` (at most 60 s), with ±10 % jitter."""
    base = min(BACKOFF_FIRST * 2.0 ** max(failures - 1, 0), cap, BACKOFF_MAX)
    return base * random.uniform(0.9, 1.1)


class JwksFetcher:
    """One JWKS URL's live key set. ``keys`` is None until the first good fetch."""

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        refresh_secs: float = 300.0,
        min_refresh_secs: float = 30.0,
        timeout_secs: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.algorithms = frozenset(algorithms)
        self.refresh_secs = refresh_secs
        self.min_refresh_secs = min_refresh_secs
        self.timeout_secs = timeout_secs
        self.keys: KeySet | None = None
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None
        self._transport = transport
        self._document: object = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._closing: asyncio.Task[None] | None = None  # held so the loop cannot drop it
        self._next_fetch = 0.0
        self._last_on_demand = -float("inf")
        self._closed = False

    @classmethod
    def from_config(cls, config: JwtConfig) -> JwksFetcher:
        assert config.jwks_url is not None
        return cls(
            config.jwks_url,
            config.effective_algorithms,
            refresh_secs=config.jwks_refresh_secs,
            min_refresh_secs=config.jwks_min_refresh_secs,
            timeout_secs=config.jwks_timeout_secs,
        )

    def configure(self, config: JwtConfig) -> None:
        """A reload with the same URL: take the new settings; keep the keys (re-filtered when the
        allow-list changed, from the last good document, without a fetch)."""
        self.refresh_secs = config.jwks_refresh_secs
        self.min_refresh_secs = config.jwks_min_refresh_secs
        self.timeout_secs = config.jwks_timeout_secs
        algorithms = frozenset(config.effective_algorithms)
        if algorithms != self.algorithms:
            self.algorithms = algorithms
            try:
                self.keys = parse_jwks(self._document, algorithms) if self._document is not None else None
            except JwksError as exc:
                self.keys = None
                logger.warning("JWKS %s: %s", self.url, exc)
            if self.keys is None and self.running:
                with contextlib.suppress(RuntimeError):  # fetch now when called inside the loop
                    self._fetch_shared()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background refresh (needs a running event loop); a no-op when running."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._closed = False
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.timeout_secs,
                follow_redirects=False,
                trust_env=False,
                headers={"Accept": "application/json, application/jwk-set+json"},
            )
        self._task = loop.create_task(self._run(), name=f"jwks-refresh {self.url}")

    def _ensure_started(self) -> bool:
        if self.running:
            return True
        if self._closed:
            return False
        try:
            self.start()
        except RuntimeError:  # no running event loop: nothing can be fetched from here
            return False
        return True

    async def stop(self) -> None:
        tasks = self._cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def stop_soon(self) -> None:
        """Synchronous stop (a reload replaced this URL): cancel now, close the client later."""
        self._cancel()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RuntimeError):
                self._closing = asyncio.get_running_loop().create_task(client.aclose())

    def _cancel(self) -> list[asyncio.Task[Any]]:
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [t for t in (self._task, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        self._task = self._inflight = None
        return tasks

    # -- refreshing ----------------------------------------------------------------------------

    def refresh_soon(self) -> Callable[[], Awaitable[None]] | None:
        """For a token whose key is unknown: join the fetch in flight, or start one unless an
        unknown-kid refresh ran less than ``min_refresh_secs`` ago. Returns an awaitable waiter
        (bounded by ``timeout_secs``), or None when no refresh is possible now."""
        if not self._ensure_started():
            return None
        inflight = self._inflight
        if inflight is None or inflight.done():
            now = time.monotonic()
            if now - self._last_on_demand < self.min_refresh_secs:
                return None
            self._last_on_demand = now
            inflight = self._fetch_shared()
        return lambda: self._wait(inflight)

    async def _wait(self, task: asyncio.Task[bool]) -> None:
        await asyncio.wait({task}, timeout=self.timeout_secs)

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch in flight); True when the key set is good afterwards."""
        if not self._ensure_started():
            return False
        return await asyncio.shield(self._fetch_shared())

    def _fetch_shared(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    async def _run(self) -> None:
        while True:
            wait = self._next_fetch - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # an on-demand fetch may have moved the schedule meanwhile
            await asyncio.shield(self._fetch_shared())

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            async with asyncio.timeout(self.timeout_secs):
                document, cache_control = await self._download()
            keys = parse_jwks(document, self.algorithms)
        except Exception as exc:
            self._failed(_describe(exc))
            return False
        self._document = document
        self._succeeded(keys, cache_control)
        return True

    async def _download(self) -> tuple[object, str | None]:
        assert self._client is not None
        async with self._client.stream("GET", self.url, timeout=self.timeout_secs) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
            cache_control = response.headers.get("cache-control")
        try:
            return json.loads(body), cache_control
        except ValueError:
            raise JwksError("the document is not JSON") from None

    def _succeeded(self, keys: KeySet, cache_control: str | None) -> None:
        if self.failures:
            logger.info("JWKS %s: fetched again after %d failed attempt(s)", self.url, self.failures)
        self.failures = 0
        self.last_error = None
        self._next_fetch = time.monotonic() + refresh_delay(cache_control, self.refresh_secs)
        if self.keys is not None and keys.fingerprint == self.keys.fingerprint:
            return  # unchanged: keep the same object, so verified-token caches stay valid
        self.keys = keys
        kids = sorted({kid for kid, _, _ in keys.fingerprint if kid is not None})
        logger.info("JWKS %s: %d signing key(s) loaded, kids %s", self.url, len(keys), kids)
        for reason in keys.ignored:
            logger.warning("JWKS %s: ignored %s", self.url, reason)

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self._next_fetch = time.monotonic() + backoff_delay(self.failures, self.refresh_secs)
        if self.failures == 1:
            kept = f"keeping the {len(self.keys)} key(s) fetched before" if self.keys else "no keys yet"
            logger.warning(
                "JWKS %s: fetch failed: %s (%s; retrying with backoff, logged once until it recovers)",
                self.url,
                error,
                kept,
            )
        else:
            logger.debug("JWKS %s: fetch failed again (%d): %s", self.url, self.failures, error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, JwksError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
