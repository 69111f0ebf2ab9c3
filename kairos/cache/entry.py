"""What the response cache stores: a whole response, or a Vary marker.

A response whose upstream sent ``Vary`` is stored under a secondary key that adds the values of
the named request headers; the primary key then holds a ``VaryMarker`` naming those headers, so a
lookup costs one read without ``Vary`` and two with it (RFC 9111 §4.1).

``encode``/``decode`` give the Redis byte format: a magic, a JSON head, the raw body. Never pickle:
whoever can write to a shared Redis must not be able to run code in the gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_MAGIC_RESPONSE = b"KC1R"
_MAGIC_VARY = b"KC1V"


@dataclass(slots=True)
class CachedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # as the upstream sent them, minus Age/X-Cache/X-Request-ID
    body: bytes
    etag: bytes  # the upstream's ETag, else a strong hash of the body (added to ``headers`` too)
    stored_at: float  # time.time() when stored
    expires_at: float  # time.time() after which it is stale (never served)
    initial_age: float = 0.0  # the upstream's Age when stored
    vary: tuple[str, ...] = ()  # lower-case request header names the upstream varies on

    def age(self, now: float) -> int:
        return max(0, int(self.initial_age + now - self.stored_at))

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(name) + len(value) + 16 for name, value in self.headers) + 200


@dataclass(slots=True)
class VaryMarker:
    names: tuple[str, ...]
    expires_at: float

    @property
    def size(self) -> int:
        return 100 + sum(len(name) for name in self.names)


Entry = CachedResponse | VaryMarker


def encode(entry: Entry) -> bytes:
    if isinstance(entry, VaryMarker):
        return _MAGIC_VARY + json.dumps({"v": entry.names, "e": entry.expires_at}).encode()
    head = json.dumps(
        {
            "s": entry.status,
            "h": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in entry.headers],
            "g": entry.etag.decode("latin-1"),
            "t": entry.stored_at,
            "e": entry.expires_at,
            "a": entry.initial_age,
            "v": entry.vary,
        },
        separators=(",", ":"),
    ).encode()
    return _MAGIC_RESPONSE + len(head).to_bytes(4, "big") + head + entry.body


def decode(raw: bytes) -> Entry | None:
    """The entry, or None for anything this version cannot read (it is then a miss)."""
    try:
        if raw.startswith(_MAGIC_VARY):
            data = json.loads(raw[len(_MAGIC_VARY) :])
            return VaryMarker(tuple(str(name) for name in data["v"]), float(data["e"]))
        if not raw.startswith(_MAGIC_RESPONSE):
            return None
        start = len(_MAGIC_RESPONSE) + 4
        length = int.from_bytes(raw[len(_MAGIC_RESPONSE) : start], "big")
        head = json.loads(raw[start : start + length])
        return CachedResponse(
            status=int(head["s"]),
            headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in head["h"]],
            body=raw[start + length :],
            etag=str(head["g"]).encode("latin-1"),
            stored_at=float(head["t"]),
            expires_at=float(head["e"]),
            initial_age=float(head["a"]),
            vary=tuple(str(name) for name in head["v"]),
        )
    except (ValueError, KeyError, TypeError, UnicodeError):
        return None
