"""The endpoint of ``"protocol": "dns"`` routes: DNS-over-HTTPS (RFC 8484) and kairos-rs's JSON API.

On the route's ``external_path`` itself:

- ``GET ?dns=<base64url, no padding>`` and ``POST`` with ``Content-Type: application/dns-message``
  → ``200 application/dns-message`` for any DNS answer (NXDOMAIN and SERVFAIL included: the HTTP
  status says the HTTP exchange worked, the rcode says the rest). ``Cache-Control: max-age`` is the
  smallest TTL of the answer (the SOA's negative TTL for NXDOMAIN/NODATA; 0 for errors), so an HTTP
  cache never keeps an answer longer than DNS would (§5.1).

Below it, when the route has no parameters (``"external_path": "/dns"``, kairos-rs's shape):

- ``POST {path}/query`` ``{"query": "<hex wire query>"}`` → ``{"response": "<hex>", "cached": bool}``;
- ``GET {path}/cache/stats`` → the route's cache counters; ``POST {path}/cache/cleanup`` → drop the
  expired entries, ``{"removed": n}``.

Everything the gateway does for HTTP routes has already happened (auth, IP filters, rate limits,
metrics); the query then takes the same path as one from the UDP/TCP listener, so it shares the
cache, the upstreams and ``client_rate_limit``. A query for a name outside the route's zones is
answered REFUSED. Bad HTTP input is the gateway's JSON error, naming what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict
from urllib.parse import parse_qs

from starlette.types import Message, Receive, Scope, Send

from kairos.dns.forwarder import DnsRoute
from kairos.dns.service import DnsService
from kairos.dns.wire import inspect_response
from kairos.errors import send_error
from kairos.exchange import get_exchange
from kairos.routing.route import SUBTREE_PARAM

DNS_MESSAGE = "application/dns-message"
MAX_QUERY = 65_535


class _BadInput(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class DohEndpoint:
    def __init__(self, service: DnsService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route = exchange.route
        assert route is not None
        runtime = self.service.runtime_for(route)
        if runtime is None:  # the request started on a snapshot a reload has since replaced
            await send_error(
                send, "upstream_unavailable", f"DNS route {route.name} is being reloaded", exchange.request_id
            )
            return
        below = exchange.params.get(SUBTREE_PARAM, "") if route.subtree else ""
        method = scope["method"]
        try:
            if below in ("", "/"):
                await self._doh(
                    scope, receive, send, runtime, exchange.client_ip, method, exchange.request_id
                )
            elif below == "query" and method == "POST":
                await self._json_query(receive, send, runtime, exchange.client_ip, exchange.request_id)
            elif below == "cache/stats" and method in ("GET", "HEAD"):
                stats = runtime.cache.stats() if runtime.cache is not None else None
                body = {
                    "route": runtime.name,
                    "enabled": stats is not None,
                    **(asdict(stats) if stats else {}),
                }
                await _send(
                    send,
                    200,
                    "application/json",
                    json.dumps(body).encode(),
                    exchange.request_id,
                    method == "HEAD",
                )
            elif below == "cache/cleanup" and method == "POST":
                removed = runtime.cache.cleanup() if runtime.cache is not None else 0
                await _send(
                    send,
                    200,
                    "application/json",
                    json.dumps({"removed": removed}).encode(),
                    exchange.request_id,
                )
            elif below in ("query", "cache/stats", "cache/cleanup"):
                allowed = "POST" if below != "cache/stats" else "GET, HEAD"
                raise _BadInput("method_not_allowed", f"{method} {route.name}/{below}: use {allowed}")
            else:
                raise _BadInput(
                    "route_not_found",
                    f"{route.name}/{below} is not a DNS endpoint (DoH is {route.name}; also "
                    f"{route.name}/query, {route.name}/cache/stats, {route.name}/cache/cleanup)",
                )
        except _BadInput as bad:
            await send_error(send, bad.kind, bad.message, exchange.request_id)

    async def _doh(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        runtime: DnsRoute,
        client_ip: str,
        method: str,
        request_id: str,
    ) -> None:
        if method in ("GET", "HEAD"):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("dns")
            if not query:
                raise _BadInput("bad_request", "DNS-over-HTTPS GET needs ?dns=<base64url DNS query>")
            wire = _base64url(query[-1])
        elif method == "POST":
            kind = _header(scope, b"content-type").split(";")[0].strip().lower()
            if kind != DNS_MESSAGE:
                raise _BadInput(
                    "unsupported_media_type",
                    f"DNS-over-HTTPS POST needs Content-Type: {DNS_MESSAGE} (got {kind or 'none'!r})",
                )
            wire = await _body(receive, MAX_QUERY)
        else:
            raise _BadInput("method_not_allowed", f"DNS-over-HTTPS takes GET and POST, not {method}")
        if len(wire) < 12:
            raise _BadInput(
                "bad_request", f"the DNS query is {len(wire)} bytes: a DNS message has at least 12"
            )
        answer, _ = await self.service.answer(wire, client_ip, "doh", runtime)
        if answer is None:  # dropped by a `drop` rate limit: HTTP has no silence, so refuse plainly
            raise _BadInput("rate_limit_error", "DNS queries from this client are over the route's limit")
        await _send(
            send,
            200,
            DNS_MESSAGE,
            answer,
            request_id,
            method == "HEAD",
            [(b"cache-control", f"max-age={_max_age(answer)}".encode())],
        )

    async def _json_query(
        self, receive: Receive, send: Send, runtime: DnsRoute, client_ip: str, request_id: str
    ) -> None:
        raw = await _body(receive, 4 * MAX_QUERY)
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _BadInput("bad_request", 'the body must be JSON: {"query": "<hex DNS query>"}') from None
        text = document.get("query") if isinstance(document, dict) else None
        if not isinstance(text, str):
            raise _BadInput("bad_request", "`query` must be a string of hex digits (the DNS query's bytes)")
        try:
            wire = bytes.fromhex(text)
        except ValueError:
            raise _BadInput("bad_request", "`query` is not hex (two hex digits per byte)") from None
        if len(wire) < 12:
            raise _BadInput("bad_request", f"`query` is {len(wire)} bytes: a DNS message has at least 12")
        answer, cached = await self.service.answer(wire, client_ip, "doh", runtime)
        if answer is None:
            raise _BadInput("rate_limit_error", "DNS queries from this client are over the route's limit")
        body = json.dumps({"response": answer.hex(), "cached": cached}).encode()
        await _send(send, 200, "application/json", body, request_id)


def _max_age(answer: bytes) -> int:
    try:
        info = inspect_response(answer)
    except ValueError:
        return 0
    if info.rcode == 0 and info.answer_count:
        return max(0, info.min_answer_ttl or 0)
    if info.rcode in (0, 3):
        return max(0, info.soa_negative_ttl or 0)
    return 0


def _base64url(text: str) -> bytes:
    try:
        wire = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _BadInput("bad_request", "?dns= is not base64url (RFC 4648 §5, without padding)") from None
    if len(wire) > MAX_QUERY:
        raise _BadInput("payload_too_large", f"the DNS query is {len(wire)} bytes, more than {MAX_QUERY}")
    return wire


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def _body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _BadInput("bad_request", "the client went away before its query arrived")
        body += message.get("body", b"")
        if len(body) > limit:
            raise _BadInput("payload_too_large", f"the request body is over {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def _send(
    send: Send,
    status: int,
    content_type: str,
    body: bytes,
    request_id: str,
    head_only: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})
