"""Header rules of a well-behaved proxy (RFC 9110 §7.6.1), precomputed as byte sets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import Scope

    from kairos.exchange import Exchange

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set again by the gateway from its own knowledge, never copied from the client.
_REPLACED_UPSTREAM = frozenset(
    {b"host", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
# The ASGI server writes its own Date (as nginx does by default, the upstream's is dropped), and
# the gateway writes X-Request-ID.
_SET_BY_SERVER = frozenset({b"date", b"x-request-id"})
_WEBSOCKET_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)


_UNSEEN = object()


class ClientAddress:
    """Resolves the client IP: the socket peer, unless the peer is a trusted proxy, in which case
    ``X-Forwarded-For`` is read right to left and the first untrusted address is the client. A hop
    that is not an IP address ends the walk: the last address vouched for is used instead, so a
    malformed header can never become a rate-limit or ip_hash key."""

    __slots__ = ("_cache", "_networks")

    def __init__(self, trusted: Sequence[IpNetwork]) -> None:
        self._networks = tuple(trusted)
        self._cache: dict[str, bool | None] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def _classify(self, ip: str) -> bool | None:
        """True/False: a trusted/untrusted address; None: not an IP address at all."""
        cached = self._cache.get(ip, _UNSEEN)
        if cached is _UNSEEN:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                cached = None
            else:
                cached = any(address in network for network in self._networks)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[ip] = cached
        return cached  # type: ignore[return-value]

    def is_trusted(self, ip: str) -> bool:
        return bool(self._networks) and self._classify(ip) is True

    def resolve(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        if not self.is_trusted(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for(headers)):
            trusted = self._classify(hop)
            if trusted is None:
                return client
            client = hop
            if not trusted:
                return hop
        return client


def forwarded_for(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip())
    return hops


@dataclass(slots=True)
class UpstreamHeaders:
    """What one pass over the client's headers yields: the headers to send upstream, and what the
    proxy needs to know about the request body."""

    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool


# Headers skipped on the way up, so the common case (a header we forward) costs one set lookup.
_SKIP_UP = HOP_BY_HOP | _REPLACED_UPSTREAM
_SKIP_UP_WEBSOCKET = _SKIP_UP | _WEBSOCKET_HANDSHAKE
_SKIP_DOWN = HOP_BY_HOP | _SET_BY_SERVER
# Connection tokens that name no extra header (the common values): nothing more to strip.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade", b""})


def upstream_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    request_id: str,
    websocket: bool = False,
) -> UpstreamHeaders:
    """Client headers minus hop-by-hop ones, plus X-Forwarded-* and X-Request-ID, in one pass.

    From a trusted proxy the incoming ``X-Forwarded-For`` chain is extended; from anyone else it is
    replaced by the peer address, so an upstream that trusts the header is not lied to.
    """
    skip = _SKIP_UP_WEBSOCKET if websocket else _SKIP_UP
    out: list[tuple[str, str]] = []
    forwarded: list[str] = []
    proto = forwarded_host = host = None
    connection: list[bytes] = []
    content_length: int | None = None
    chunked = False
    for name, value in headers:
        if name in skip or name.startswith(b"proxy-"):
            if name == b"connection":
                connection.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"host":
                host = value.decode("latin-1")
            elif peer_trusted:
                if name == b"x-forwarded-for":
                    forwarded.append(value.decode("latin-1"))
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1")
                elif name == b"x-forwarded-host":
                    forwarded_host = value.decode("latin-1")
            continue
        if name == b"content-length":
            content_length = int(value) if value.isdigit() else None
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if connection:
        named = _named_by_connection(connection)
        if named:
            out = [(name, value) for name, value in out if name.encode("latin-1") not in named]
    if chunked and content_length is not None:
        # Both framings sent (a request-smuggling shape): Transfer-Encoding wins and Content-Length
        # must not be forwarded (RFC 9112 §6.3).
        out = [(name, value) for name, value in out if name != "content-length"]
        content_length = None
    forwarded.append(peer)
    out.append(("x-forwarded-for", ", ".join(forwarded)))
    out.append(("x-forwarded-proto", proto or scheme))
    if forwarded_host or host:
        out.append(("x-forwarded-host", forwarded_host or host or ""))
    out.append(("x-request-id", request_id))
    return UpstreamHeaders(out, content_length, chunked)


def downstream_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, repeated headers kept (two Set-Cookie stay
    two), plus X-Request-ID. One pass; a second only when ``Connection`` names extra headers."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        if name in _SKIP_DOWN or name.startswith(b"proxy-"):
            if name == b"connection":
                connection.append(value)
            continue
        out.append((name, value))
    if connection:
        named = _named_by_connection(connection)
        if named:
            out = [(name, value) for name, value in out if name not in named]
    out.append((b"x-request-id", request_id))
    return out


def _named_by_connection(values: list[bytes]) -> frozenset[bytes]:
    tokens = {token.strip().lower() for value in values for token in value.split(b",")}
    return frozenset(tokens - _PLAIN_CONNECTION)


_HTTP_SCHEME = {"ws": "http", "wss": "https"}  # X-Forwarded-Proto speaks of http(s), also for upgrades


def prepare_upstream(
    scope: Scope, exchange: Exchange, is_trusted: Callable[[str], bool], websocket: bool = False
) -> tuple[str, UpstreamHeaders]:
    """The upstream URL (backend + built internal path + the query as sent) and the headers to send,
    for the route and backend already chosen for this request."""
    route, backend = exchange.route, exchange.backend
    assert route is not None and backend is not None
    base = backend.ws_base if websocket else backend.http_base
    if exchange.upstream_target is not None:  # set by a transformation's path rewrite
        url = base + exchange.upstream_target
    else:
        url = base + route.upstream_path.build(exchange.params)
        query = scope.get("query_string")
        if query:
            url += "?" + query.decode("latin-1")
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    scheme: str = scope.get("scheme") or "http"
    prepared = upstream_request_headers(
        scope["headers"],
        peer=peer,
        peer_trusted=is_trusted(peer),
        scheme=_HTTP_SCHEME.get(scheme, scheme),
        request_id=exchange.request_id,
        websocket=websocket,
    )
    return url, prepared
