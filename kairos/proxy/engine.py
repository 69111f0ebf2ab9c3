"""The upstream engine interface: the one seam between the proxy endpoint and an HTTP client.

Engines: ``raw`` (default; asyncio protocols + httptools' C parser, kairos/proxy/raw_engine.py),
``aiohttp`` (fallback, ``KAIROS_UPSTREAM_ENGINE=aiohttp``) and httpx for backends marked
``"http2": true``. Measured on this machine by ``make bench``: the raw engine gives about twice
aiohttp's proxy throughput and meets the 0.35 ms added-latency goal aiohttp misses; httpx's own
pool is ~10x slower than aiohttp, so it only serves HTTP/2. Engines translate their client's
exceptions into the three below, so the endpoint's error handling does not depend on which client
ran.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class UpstreamError(Exception):
    """The upstream failed after a connection was made (reset, malformed response, ...): 502."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, DNS): 502. Nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """Connecting took longer than ``connect_timeout_ms``: 504."""


Body = bytes | AsyncIterator[bytes] | None


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str  # already percent-encoded; engines must not re-encode or normalise it
    headers: list[tuple[str, str]]
    body: Body
    connect_timeout: float
    ssl: ssl.SSLContext | None = None  # None: verify with the system trust store


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]
    content_length: int | None

    async def read(self) -> bytes: ...

    def ready_body(self) -> bytes | None:
        """The whole body if it has already arrived, without waiting; None if more is to come (or
        the engine cannot tell). Lets the proxy answer in one message without delaying the head."""

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None:
        """Return the connection to the pool (or drop it if the body was not fully read)."""


class UpstreamEngine(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...
