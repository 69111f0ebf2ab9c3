"""Pure cache decisions (RFC 9111, shared cache): what may be stored, for how long, under which key.

Stored: GET responses (HEAD is served from GET's entry) with a status cacheable by default
(RFC 9110 §15.1: 200, 203, 204, 300, 301, 404, 405, 410, 414, 501) and none of: ``Set-Cookie``,
``Cache-Control: no-store`` / ``private`` / ``no-cache`` (the gateway never revalidates, so a
response that must be revalidated before each use is simply not stored), ``Vary: *``. Freshness:
``s-maxage`` wins over ``max-age``, then ``Expires``, then the route's ``ttl_secs``; the upstream's
``Age`` counts against it. A request carrying ``Authorization`` whose key does not hold the
identity is stored only when the response allows it (``public``, ``s-maxage``,
``must-revalidate``: RFC 9111 §3.5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

CACHEABLE_STATUS = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})
# Never stored with the entry: per-request or per-hop facts the cache sets itself on each answer.
UNSTORED_HEADERS = frozenset({b"age", b"x-cache", b"x-request-id", b"connection", b"keep-alive"})
# What a 304 carries of the 200 it stands for (RFC 9110 §15.4.5), plus the cache's own headers.
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def parse_cache_control(value: bytes | None) -> dict[str, str | None]:
    if not value:
        return {}
    directives: dict[str, str | None] = {}
    for part in value.decode("latin-1").split(","):
        name, eq, argument = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = argument.strip().strip('"') if eq else None
    return directives


def _seconds(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(slots=True)
class StorePlan:
    ttl: float  # seconds the response stays fresh from now
    age: float  # the upstream's Age
    vary: tuple[str, ...]
    etag: bytes | None  # the upstream's


def store_plan(
    status: int,
    headers: list[tuple[bytes, bytes]],
    default_ttl: int,
    authorized_request: bool,
    now: float,
) -> StorePlan | None:
    """How to store this response, or None when it must not be stored."""
    if status not in CACHEABLE_STATUS:
        return None
    cache_control: bytes | None = None
    vary: list[str] = []
    etag = expires = date = age = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"set-cookie":
            return None
        if name == b"cache-control":
            cache_control = value if cache_control is None else cache_control + b"," + value
        elif name == b"vary":
            vary += (token.strip().lower() for token in value.decode("latin-1").split(","))
        elif name == b"etag":
            etag = value
        elif name == b"expires":
            expires = value
        elif name == b"date":
            date = value
        elif name == b"age":
            age = value
    directives = parse_cache_control(cache_control)
    if "no-store" in directives or "private" in directives or "no-cache" in directives:
        return None
    if "*" in vary:
        return None
    if authorized_request and not (
        "public" in directives or "s-maxage" in directives or "must-revalidate" in directives
    ):
        return None
    ttl: float | None = _seconds(directives.get("s-maxage"))
    if ttl is None:
        ttl = _seconds(directives.get("max-age"))
    if ttl is None and expires is not None:
        ttl = _expires_in(expires, date, now)
    if ttl is None:
        ttl = default_ttl
    upstream_age = float(_seconds(age.decode("latin-1")) or 0) if age is not None else 0.0
    ttl -= upstream_age
    if ttl <= 0:
        return None
    return StorePlan(ttl, upstream_age, tuple(sorted({name for name in vary if name})), etag)


def _expires_in(expires: bytes, date: bytes | None, now: float) -> float:
    """Seconds until ``Expires`` (relative to the upstream's ``Date`` when sent); an invalid date
    means already expired (RFC 9111 §5.3)."""
    try:
        until = parsedate_to_datetime(expires.decode("latin-1")).timestamp()
        base = parsedate_to_datetime(date.decode("latin-1")).timestamp() if date is not None else now
    except (ValueError, TypeError, IndexError):
        return 0.0
    return until - base


def request_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Request headers by lower-case name, repeated ones joined with ", " (one pass)."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in found:
            found[name] += b", " + value
        else:
            found[name] = value
    return found


def client_bypasses(headers: dict[bytes, bytes]) -> tuple[bool, bool]:
    """(skip the lookup, skip storing) for the client's ``Cache-Control``/``Pragma``: ``no-cache``
    or ``max-age=0`` fetch fresh (and may refresh the entry); ``no-store`` stores nothing."""
    value = headers.get(b"cache-control")
    if value is None:
        pragma = headers.get(b"pragma")
        return (pragma is not None and b"no-cache" in pragma.lower()), False
    directives = parse_cache_control(value)
    no_store = "no-store" in directives
    refresh = no_store or "no-cache" in directives or directives.get("max-age") == "0"
    return refresh, no_store


def sorted_query(query: bytes) -> str:
    if not query:
        return ""
    parts = sorted(part for part in query.split(b"&") if part)
    return "?" + b"&".join(parts).decode("latin-1")


def url_key(host: bytes, path: str, query: bytes) -> str:
    """The readable part of a key, e.g. ``GET api.example.com/users?a=1&b=2``; HEAD shares it."""
    return f"GET {host.decode('latin-1').lower()}{path}{sorted_query(query)}"


def variant_digest(identity: object, names: tuple[str, ...], headers: dict[bytes, bytes]) -> str:
    """The key part for who is asking and the configured ``vary_headers``: ``-`` when neither applies."""
    if identity is None and not names:
        return "-"
    material = [f"{getattr(identity, 'kind', '')}:{getattr(identity, 'subject', '')}"] if identity else []
    material += (f"{name}={headers.get(name.encode(), b'').decode('latin-1')}" for name in names)
    return hashlib.sha256("\n".join(material).encode()).hexdigest()[:32]


def vary_values(names: tuple[str, ...], headers: dict[bytes, bytes]) -> tuple[bytes, ...]:
    return tuple(headers.get(name.encode(), b"") for name in names)


def vary_suffix(names: tuple[str, ...], headers: dict[bytes, bytes]) -> str:
    material = b"\n".join(
        name.encode() + b"=" + value for name, value in zip(names, vary_values(names, headers), strict=True)
    )
    return "\n" + hashlib.sha256(material).hexdigest()[:32]


def strong_etag(body: bytes) -> bytes:
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Weak comparison, as If-None-Match requires (RFC 9110 §13.1.2)."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    own = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == own for tag in value.split(b","))
