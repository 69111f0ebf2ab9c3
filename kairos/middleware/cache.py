"""CacheMiddleware: answer GET/HEAD from a stored response, store cacheable misses.

Position (kairos/pipeline.py): inside rate limits and auth (a hit still counts against the client's
limit, and the identity is known), outside everything that makes upstream calls (transforms,
retries, balancing), so a hit costs no upstream work and a stored response is the transformed one.

Per request, on a route with an enabled ``cache`` block (others pass straight through):

- Only GET and HEAD. HEAD is answered from GET's entry without the body; a HEAD miss goes
  upstream as HEAD and is not stored.
- A route with ``auth_required`` is cached only with ``cache_authenticated``, and then keyed by
  the verified identity (kind + subject): two users never share an entry. Otherwise BYPASS.
- Client ``Cache-Control: no-cache`` / ``max-age=0`` / ``Pragma: no-cache`` skips the lookup and
  fetches fresh (the new response may replace the entry); ``no-store`` also stores nothing. BYPASS.
- What is stored and for how long: kairos/cache/policy.py (RFC 9111 shared-cache rules). A
  response is held back while it is read, up to ``max_bytes``; one that turns out bigger (or says
  so in ``Content-Length``) is sent on as it streams, uncached.
- Answers carry ``X-Cache: HIT|MISS|BYPASS``; hits carry ``Age``. Stored responses carry an
  ``ETag`` (the upstream's, else a strong hash of the body); an ``If-None-Match`` that matches it
  gets a 304.
- ``coalesce``: concurrent misses for one key (in one process) make one upstream request; the
  others wait and get its answer when it was stored, or when it is an error (an upstream 5xx or a
  gateway-made answer: waiters get the same status and body, nothing is stored). A response that
  may not be shared (``private``, ``Set-Cookie``, too big, another ``Vary`` variant) sends each
  waiter upstream on its own.
- A store that fails (Redis down) is bypassed: requests are proxied as if uncached, never failed.

Standalone (no gateway Exchange) the constructor's ``config`` applies and the identity is read
from ``scope["state"]["identity"]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.cache.entry import CachedResponse, VaryMarker
from kairos.cache.manager import Outcome, ResponseCache
from kairos.cache.memory import MemoryStore
from kairos.cache.policy import (
    NOT_MODIFIED_HEADERS,
    UNSTORED_HEADERS,
    StorePlan,
    client_bypasses,
    etag_matches,
    request_headers,
    store_plan,
    strong_etag,
    url_key,
    variant_digest,
    vary_suffix,
    vary_values,
)
from kairos.cache.redis_store import CacheUnavailable, RedisCacheStore
from kairos.config.policies import CacheConfig
from kairos.errors import GENERATED
from kairos.exchange import SCOPE_KEY
from kairos.proxy.headers import content_length_value
from kairos.request import as_accessor, policy_of

if TYPE_CHECKING:
    from kairos.routing.route import Route

_METHODS = frozenset({"GET", "HEAD"})
HIT, MISS, BYPASS = b"HIT", b"MISS", b"BYPASS"
_LENGTH_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


# A route without a ``cache`` block is not cached, whatever the constructor's (standalone) default.
_NOT_CACHED = CacheConfig(enabled=False)


def _cache(route: Route) -> CacheConfig:
    cache = route.config.cache
    return cache if cache is not None else _NOT_CACHED


class CacheMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        cache: ResponseCache | None = None,
        config: CacheConfig | Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.cache = cache if cache is not None else ResponseCache()
        self._default = as_accessor(
            CacheConfig.model_validate(config) if isinstance(config, Mapping) else config
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = scope.get(SCOPE_KEY)
        route = exchange.route if exchange is not None else None
        config = policy_of(route, _cache, self._default)
        if config is None or not config.enabled or scope["method"] not in _METHODS:
            await self.app(scope, receive, send)
            return
        if exchange is not None:
            identity, request_id = exchange.identity, exchange.request_id.encode()
        else:
            identity, request_id = scope.get("state", {}).get("identity"), None
        if (identity is not None or (route is not None and route.config.auth_required)) and (
            not config.cache_authenticated or identity is None
        ):
            await self._bypass(scope, receive, send)  # never mix users' responses
            return
        partition = route.key if route is not None else "-"
        store = self.cache.store_for(partition, config)
        if not store.available():
            await self._bypass(scope, receive, send)
            return
        headers = request_headers(scope["headers"])
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        url = url_key(headers.get(b"host", b""), path, scope.get("query_string", b""))
        key = f"{partition}\n{url}\n{variant_digest(identity, config.vary_headers, headers)}"
        refresh, no_store = client_bypasses(headers)
        head = scope["method"] == "HEAD"
        if not refresh:
            try:
                entry = await store.get(key)
                if isinstance(entry, VaryMarker):
                    entry = await store.get(key + vary_suffix(entry.names, headers))
            except CacheUnavailable:
                await self._bypass(scope, receive, send)
                return
            if isinstance(entry, CachedResponse):
                self.cache.results["hit"] += 1
                await _answer(send, entry, headers, head, HIT, request_id, hit=True)
                return
        if head:  # a HEAD miss cannot fill GET's entry: proxied as it is
            self.cache.results["miss"] += 1
            await self.app(scope, receive, _tagged(send, MISS))
            return
        results = self.cache.results
        fetch = _Fetch(self.app, config, store, key, headers, request_id, refresh, no_store, identity)
        if not config.coalesce or refresh:
            results["bypass" if refresh else "miss"] += 1
            await fetch.run(scope, receive, send, share=False)
            return
        inflight = self.cache.inflight
        flight = inflight.get(key)
        if flight is not None:
            outcome = await asyncio.shield(flight)
            if outcome is not None and (
                outcome.error
                or (outcome.stored and vary_values(outcome.response.vary, headers) == outcome.vary)
            ):
                results["hit" if outcome.stored else "coalesced"] += 1
                stored = outcome.stored
                await _answer(
                    send,
                    outcome.response,
                    headers,
                    False,
                    HIT if stored else MISS,
                    request_id,
                    hit=stored,
                    generated=outcome.generated,
                )
                return
            results["miss"] += 1
            await fetch.run(scope, receive, send, share=False)  # not shareable: upstream on its own
            return
        results["miss"] += 1
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        inflight[key] = future
        result: Outcome | None = None
        try:
            result = await fetch.run(scope, receive, send, share=True)
        finally:
            if inflight.get(key) is future:
                del inflight[key]
            if not future.done():
                future.set_result(result)

    async def _bypass(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.cache.results["bypass"] += 1
        await self.app(scope, receive, _tagged(send, BYPASS))


def _tagged(send: Send, value: bytes) -> Send:
    async def send_tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers")
            if isinstance(headers, list):
                headers.append((b"x-cache", value))
            else:
                message["headers"] = [*(headers or ()), (b"x-cache", value)]
        await send(message)

    return send_tagged


class _Fetch:
    """One upstream request of a miss: held back while it may be stored (or shared), else relayed."""

    __slots__ = ("app", "config", "headers", "identity", "key", "no_store", "refresh", "request_id", "store")

    def __init__(
        self,
        app: ASGIApp,
        config: CacheConfig,
        store: MemoryStore | RedisCacheStore,
        key: str,
        headers: dict[bytes, bytes],
        request_id: bytes | None,
        refresh: bool,
        no_store: bool,
        identity: Any,
    ) -> None:
        self.app = app
        self.config = config
        self.store = store
        self.key = key
        self.headers = headers
        self.request_id = request_id
        self.refresh = refresh
        self.no_store = no_store
        self.identity = identity

    async def run(self, scope: Scope, receive: Receive, send: Send, share: bool) -> Outcome | None:
        # A request with credentials, unless its key holds the identity, needs the response's leave.
        authorized = self.identity is None and b"authorization" in self.headers
        label = BYPASS if self.refresh else MISS
        recorder = _Recorder(send, self.config, label, authorized, self.no_store, share)
        await self.app(scope, receive, recorder)
        if not recorder.complete:
            await recorder.flush()  # the app returned mid-body: relay what it sent
            return None
        start = recorder.start
        assert start is not None
        now = time.time()
        plan = recorder.plan
        headers = [
            (name, value)
            for name, value in start.get("headers") or ()
            if name.lower() not in UNSTORED_HEADERS and name.lower() not in _LENGTH_HEADERS
        ]
        body = b"".join(recorder.chunks)
        status = start["status"]
        if status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        etag = b""
        if plan is not None:
            etag = plan.etag or strong_etag(body)
            if plan.etag is None:
                headers.append((b"etag", etag))
        response = CachedResponse(
            status=status,
            headers=headers,
            body=body,
            etag=etag,
            stored_at=now,
            expires_at=now + (plan.ttl if plan is not None else 0.0),
            initial_age=plan.age if plan is not None else 0.0,
            vary=plan.vary if plan is not None else (),
        )
        if plan is not None:
            await self._store(response, plan)
        generated = bool(start.get(GENERATED))
        await _answer(send, response, self.headers, False, label, self.request_id, generated=generated)
        return Outcome(
            response, plan is not None, recorder.error, vary_values(response.vary, self.headers), generated
        )

    async def _store(self, response: CachedResponse, plan: StorePlan) -> None:
        if plan.vary:
            await self.store.set(self.key, VaryMarker(plan.vary, response.expires_at))
            await self.store.set(self.key + vary_suffix(plan.vary, self.headers), response)
        else:
            await self.store.set(self.key, response)


class _Recorder:
    """The ``send`` of a miss: decides at the response start whether to hold the response (to store
    or share it) and holds at most ``max_bytes`` of body; past that it gives up and relays."""

    __slots__ = (
        "authorized",
        "chunks",
        "complete",
        "config",
        "error",
        "held",
        "label",
        "no_store",
        "plan",
        "relaying",
        "send",
        "share",
        "size",
        "start",
    )

    def __init__(
        self, send: Send, config: CacheConfig, label: bytes, authorized: bool, no_store: bool, share: bool
    ) -> None:
        self.send = send
        self.config = config
        self.label = label
        self.authorized = authorized
        self.no_store = no_store
        self.share = share
        self.start: Message | None = None
        self.plan: StorePlan | None = None
        self.error = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.held = False
        self.relaying = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if self.relaying:
            await self.send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._decide(message)
            if not self.held:
                await self._relay(message)
            return
        if kind == "http.response.body" and self.held:
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.config.max_bytes:
                await self.flush()
                await self.send(message)
                return
            if chunk:
                self.chunks.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
            return
        await self.flush()
        await self.send(message)

    def _decide(self, message: Message) -> None:
        self.start = message
        status = message["status"]
        headers = message.get("headers") or []
        generated = bool(message.get(GENERATED))
        if not generated and not self.no_store:
            self.plan = store_plan(status, headers, self.config.ttl_secs, self.authorized, time.time())
        if self.plan is None and self.share and (generated or status >= 500):
            self.error = not any(name.lower() == b"set-cookie" for name, _ in headers)
        if self.plan is None and not self.error:
            return
        for name, value in headers:
            if name.lower() == b"content-length":
                length = content_length_value(value)
                if length is None or length > self.config.max_bytes:
                    return  # known to be too big: relay at once
                break
        self.held = True

    async def _relay(self, start: Message) -> None:
        self.relaying = True
        await _tagged(self.send, self.label)(start)

    async def flush(self) -> None:
        """Give up holding: relay the start and the body read so far, then everything else."""
        if self.relaying or self.start is None:
            self.relaying = True
            return
        self.held = False
        await self._relay(self.start)
        if self.chunks:
            await self.send({"type": "http.response.body", "body": b"".join(self.chunks), "more_body": True})
            self.chunks = []


async def _answer(
    send: Send,
    entry: CachedResponse,
    request: dict[bytes, bytes],
    head: bool,
    label: bytes,
    request_id: bytes | None,
    hit: bool = False,
    generated: bool = False,
) -> None:
    status = entry.status
    if_none_match = request.get(b"if-none-match") if entry.etag and 200 <= status < 300 else None
    if if_none_match is not None and etag_matches(if_none_match, entry.etag):
        status, body = 304, b""
        headers = [header for header in entry.headers if header[0].lower() in NOT_MODIFIED_HEADERS]
    else:
        body = b"" if head else entry.body
        headers = list(entry.headers)
    if hit:
        headers.append((b"age", str(entry.age(time.time())).encode()))
    elif entry.initial_age:
        headers.append((b"age", str(int(entry.initial_age)).encode()))
    headers.append((b"x-cache", label))
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    if generated:
        start[GENERATED] = True
    await send(start)
    await send({"type": "http.response.body", "body": body})
