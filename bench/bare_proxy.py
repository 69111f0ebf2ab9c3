"""The reference proxy: the least a correct aiohttp-based ASGI proxy can do per request.

Kairos's performance goal is stated relative to this app (same server, same client library, no
routing, no middleware), so the gap between the two is the cost of the gateway's own features.
It forwards every request to ``BENCH_UPSTREAM`` (e.g. ``http://127.0.0.1:8080``) with one shared
``aiohttp.ClientSession`` and answers with raw ASGI messages.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:8080 uvicorn bare_proxy:app --app-dir bench``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from yarl import URL

Scope = dict[str, Any]
Message = dict[str, Any]

# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded; Host is set by aiohttp from the URL, and
# Date/Server are written by uvicorn itself.
_SKIP_REQUEST = frozenset({b"host", b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"})
_SKIP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})


class BareProxy:
    """A pure-ASGI app; the session lives from lifespan startup to shutdown."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._proxy(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                    skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                    timeout=aiohttp.ClientTimeout(total=30),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.session is not None, "lifespan startup did not run"
        url = self.upstream + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _SKIP_REQUEST
        ]
        body = await _read_body(scope, receive)
        async with self.session.request(
            scope["method"], URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
        ) as response:
            content = await response.read()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (name.lower(), value)
                        for name, value in response.raw_headers
                        if name.lower() not in _SKIP_RESPONSE
                    ],
                }
            )
            await send({"type": "http.response.body", "body": content})


async def _read_body(scope: Scope, receive: Any) -> bytes | None:
    """None for a request without a body (skips a receive() round trip, as Kairos does)."""
    if not any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]):
        return None
    parts: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


app = BareProxy(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8080"))
