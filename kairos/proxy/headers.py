"""Header rules of a well-behaved proxy (RFC 9110 §7.6.1), precomputed as byte sets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

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


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return frozenset(tokens)


def _is_hop_by_hop(name: bytes, named: frozenset[bytes]) -> bool:
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in named


class ClientAddress:
    """Resolves the client IP: the socket peer, unless the peer is a trusted proxy, in which case
    ``X-Forwarded-For`` is read right to left and the first untrusted address is the client."""

    __slots__ = ("_cache", "_networks")

    def __init__(self, trusted: Sequence[IpNetwork]) -> None:
        self._networks = tuple(trusted)
        self._cache: dict[str, bool] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def is_trusted(self, ip: str) -> bool:
        if not self._networks:
            return False
        cached = self._cache.get(ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                cached = False
            else:
                cached = any(address in network for network in self._networks)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[ip] = cached
        return cached

    def resolve(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        if not self.is_trusted(peer):
            return peer
        chain = forwarded_for(headers)
        for hop in reversed(chain):
            if not self.is_trusted(hop):
                return hop
        return chain[0] if chain else peer


def forwarded_for(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip())
    return hops


def upstream_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    request_id: str,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """Client headers minus hop-by-hop ones, plus X-Forwarded-* and X-Request-ID.

    From a trusted proxy the incoming ``X-Forwarded-For`` chain is extended; from anyone else it is
    replaced by the peer address, so an upstream that trusts the header is not lied to.
    """
    named = connection_tokens(headers)
    out: list[tuple[str, str]] = []
    forwarded: list[str] = []
    proto = host = None
    for name, value in headers:
        if _is_hop_by_hop(name, named):
            continue
        if name in _REPLACED_UPSTREAM:
            if name == b"x-forwarded-for" and peer_trusted:
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto" and peer_trusted:
                proto = value.decode("latin-1")
            elif (name == b"x-forwarded-host" and peer_trusted) or (name == b"host" and host is None):
                host = value.decode("latin-1")
            continue
        if websocket and name in _WEBSOCKET_HANDSHAKE:
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    forwarded.append(peer)
    out.append(("x-forwarded-for", ", ".join(forwarded)))
    out.append(("x-forwarded-proto", proto or scheme))
    if host is not None:
        out.append(("x-forwarded-host", host))
    out.append(("x-request-id", request_id))
    return out


def downstream_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, repeated headers kept (two Set-Cookie stay
    two), plus X-Request-ID."""
    raw = [(name.lower(), value) for name, value in raw_headers]
    named = connection_tokens(raw)
    out = [
        (name, value) for name, value in raw if not _is_hop_by_hop(name, named) and name not in _SET_BY_SERVER
    ]
    out.append((b"x-request-id", request_id))
    return out
