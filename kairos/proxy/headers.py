"""Header rules of a well-behaved proxy (RFC 9110 §7.6.1), precomputed as byte sets."""

from __future__ import annotations

import functools
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
# Headers in which a client names a source address, host or scheme that an upstream may believe
# (RFC 7239's Forwarded, nginx's X-Real-IP, the CDN and load-balancer spellings, the X-Forwarded-*
# extras frameworks read). Passed on only from a trusted proxy, which vouches for them; from anyone
# else they are dropped, so a client cannot pose as another address to the upstream.
CLIENT_SOURCE_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-original-forwarded-for",
        b"x-forwarded",
        b"forwarded-for",
        b"x-forwarded-server",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
    }
)
# The ASGI server writes its own Date and Server (as nginx does by default: the upstream's are
# dropped, so a response carries one of each and does not advertise the backend's software), and
# the gateway writes X-Request-ID.
_SET_BY_SERVER = frozenset({b"date", b"server", b"x-request-id"})
_WEBSOCKET_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)


_UNSEEN = object()


class ClientAddress:
    """Resolves the client IP: the socket peer, unless the peer is a trusted proxy, in which case
    ``X-Forwarded-For`` is read right to left and the first untrusted address is the client. A hop
    that is not an IP address ends the walk: the last address vouched for is used instead, so a
    malformed header can never become a rate-limit or ip_hash key."""

    __slots__ = ("_cache", "_networks", "forwarded_header")

    def __init__(self, trusted: Sequence[IpNetwork], forwarded_header: bool = False) -> None:
        self._networks = tuple(trusted)
        self._cache: dict[str, bool | None] = {}
        # Whether requests going upstream carry an RFC 7239 Forwarded element for this hop.
        self.forwarded_header = forwarded_header

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


HUGE_LENGTH = 1 << 62  # what a Content-Length too long for int() counts as: larger than any bound


def content_length_value(value: bytes | str) -> int | None:
    """A ``Content-Length`` value's number; None unless it is ASCII digits only (``str.isdigit``
    also takes ``²``). A number too long for ``int()`` (over 4300 digits: httptools passes
    ``000…0`` of any length, found by tests/fuzz) is ``HUGE_LENGTH``, not an exception."""
    if not value.isdigit() or not value.isascii():
        return None
    digits = value.lstrip(b"0") if isinstance(value, bytes) else value.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else HUGE_LENGTH


@dataclass(slots=True)
class UpstreamHeaders:
    """What one pass over the client's headers yields: the headers to send upstream, and what the
    proxy needs to know about the request body."""

    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool


# Headers skipped on the way up, so the common case (a header we forward) costs one set lookup.
_SKIP_UP = HOP_BY_HOP | _REPLACED_UPSTREAM | CLIENT_SOURCE_HEADERS
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
    emit_forwarded: bool = False,
) -> UpstreamHeaders:
    """Client headers minus hop-by-hop ones, plus X-Forwarded-* and X-Request-ID, in one pass.

    From a trusted proxy the incoming ``X-Forwarded-For`` chain is extended and the other
    source-address headers (``CLIENT_SOURCE_HEADERS``) pass; from anyone else the chain is replaced
    by the peer address and those headers are dropped, so an upstream that trusts them is not lied
    to. ``emit_forwarded`` adds this hop to RFC 7239 ``Forwarded`` (extending a trusted one).
    """
    skip = _SKIP_UP_WEBSOCKET if websocket else _SKIP_UP
    out: list[tuple[str, str]] = []
    forwarded: list[str] = []
    rfc7239: list[str] = []
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
                elif name == b"forwarded":
                    rfc7239.append(value.decode("latin-1"))
                elif name in CLIENT_SOURCE_HEADERS:
                    out.append((name.decode("latin-1"), value.decode("latin-1")))
            continue
        if name == b"content-length":
            content_length = content_length_value(value)
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
    if emit_forwarded:
        rfc7239.append(forwarded_element(peer, host, scheme))
    if rfc7239:
        out.append(("forwarded", ", ".join(rfc7239)))
    out.append(("x-request-id", request_id))
    return UpstreamHeaders(out, content_length, chunked)


# RFC 9110 tchar: a parameter value made only of these needs no quotes in Forwarded (RFC 7239 §4).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def forwarded_element(peer: str, host: str | None, scheme: str) -> str:
    """This hop's RFC 7239 element: ``for`` the peer (an IPv6 address bracketed and quoted, a
    non-address as ``unknown``), the ``host`` the client asked for, and the ``proto``."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        node = "unknown"
    else:
        node = f'"[{address}]"' if address.version == 6 else str(address)
    parts = [f"for={node}"]
    if host:
        parts.append(f"host={_quoted(host)}")
    parts.append(f"proto={_quoted(scheme)}")
    return ";".join(parts)


def _quoted(value: str) -> str:
    """A token as it is; anything else as an RFC 9110 quoted-string."""
    if value and all(char in _TOKEN for char in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def downstream_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
    request_id: bytes,
    rewrite: Callable[[bytes, bytes], bytes] | None = None,
    rewritable: frozenset[bytes] = frozenset(),
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, repeated headers kept (two Set-Cookie stay
    two), plus X-Request-ID. One pass; a second only when ``Connection`` names extra headers.
    Headers named in ``rewritable`` are passed through ``rewrite(name, value)`` (the redirect
    mapping); the common header costs the same single set lookup as without it."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    special = _skip_or_rewrite(rewritable) if rewritable else _SKIP_DOWN
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        if name in special or name.startswith(b"proxy-"):
            if name in rewritable and rewrite is not None:
                out.append((name, rewrite(name, value)))
            elif name == b"connection":
                connection.append(value)
            continue
        out.append((name, value))
    if connection:
        named = _named_by_connection(connection)
        if named:
            out = [(name, value) for name, value in out if name not in named]
    out.append((b"x-request-id", request_id))
    return out


@functools.lru_cache(maxsize=64)
def _skip_or_rewrite(rewritable: frozenset[bytes]) -> frozenset[bytes]:
    return _SKIP_DOWN | rewritable


def _named_by_connection(values: list[bytes]) -> frozenset[bytes]:
    tokens = {token.strip().lower() for value in values for token in value.split(b",")}
    return frozenset(tokens - _PLAIN_CONNECTION)


_HTTP_SCHEME = {"ws": "http", "wss": "https"}  # X-Forwarded-Proto speaks of http(s), also for upgrades


def prepare_upstream(
    scope: Scope, exchange: Exchange, forwarding: Callable[[], ClientAddress], websocket: bool = False
) -> tuple[str, UpstreamHeaders]:
    """The upstream URL (backend + built internal path + the query as sent) and the headers to send,
    for the route and backend already chosen for this request. ``forwarding`` gives the live
    trusted-proxy policy (it changes on reload)."""
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
    policy = forwarding()
    prepared = upstream_request_headers(
        scope["headers"],
        peer=peer,
        peer_trusted=policy.is_trusted(peer),
        scheme=_HTTP_SCHEME.get(scheme, scheme),
        request_id=exchange.request_id,
        websocket=websocket,
        emit_forwarded=policy.forwarded_header,
    )
    return url, prepared
