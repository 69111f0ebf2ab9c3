"""Default engine: one pooled aiohttp session for the process, created in the lifespan.

Configured as a proxy needs it: no cookie jar, no automatic headers (no Accept-Encoding the client
did not send), no decompression, no redirects, URLs passed through encoded as built.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from kairos.proxy.engine import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamRequest,
    UpstreamTimeout,
)

STREAM_CHUNK = 64 * 1024


class AiohttpResponse:
    __slots__ = ("_response", "content_length", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: list[tuple[bytes, bytes]] = list(response.raw_headers)
        self.content_length = response.content_length

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(f"reading the upstream body failed: {exc!r}") from exc

    def ready_body(self) -> bytes | None:
        content = self._response.content
        if not content.is_eof():
            return None
        return content.read_nowait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(f"upstream body interrupted: {exc!r}") from exc

    async def close(self) -> None:
        self._response.release()


class AiohttpEngine:
    name = "aiohttp"

    def __init__(self, max_connections: int = 0, keepalive_timeout: float = 4.0) -> None:
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=10,
            keepalive_timeout=self._keepalive_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, connect: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        return timeout

    async def _request(
        self, session: aiohttp.ClientSession, request: UpstreamRequest
    ) -> aiohttp.ClientResponse:
        return await session.request(
            request.method,
            URL(request.url, encoded=True),
            headers=request.headers,
            data=request.body,
            timeout=self._timeout(request.connect_timeout),
            allow_redirects=False,
            ssl=request.ssl if request.ssl is not None else True,
        )

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        session = self._session
        if session is None:
            raise RuntimeError("engine not started")
        try:
            try:
                response = await self._request(session, request)
            except aiohttp.ClientOSError as exc:
                # A pooled keep-alive connection the upstream closed just before our write: nothing
                # reached it ("Can not write request body"), so a body held in memory is sent once
                # more on a fresh connection, as nginx retries a request it could not send.
                if "Can not write request body" not in str(exc) or not isinstance(request.body, bytes | None):
                    raise
                response = await self._request(session, request)
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to the upstream timed out after {request.connect_timeout}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc.os_error or exc}") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(f"upstream request failed: {exc!r}") from exc
        except TimeoutError:
            raise
        return AiohttpResponse(response)
