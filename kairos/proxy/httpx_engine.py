"""HTTP/2 engine for backends marked ``"http2": true`` (aiohttp speaks HTTP/1.1 only).

httpx's pool costs ~10x aiohttp's per request here, so it is used only where HTTP/2 is asked for.
``sniffio`` is a declared dependency: without it httpcore retries the import on every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from kairos.proxy.engine import UpstreamConnectError, UpstreamError, UpstreamRequest, UpstreamTimeout


class HttpxResponse:
    __slots__ = ("_response", "content_length", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = list(response.headers.raw)
        length = response.headers.get("content-length")
        self.content_length = int(length) if length and length.isdigit() else None

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"reading the upstream body failed: {exc!r}") from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream body interrupted: {exc!r}") from exc

    async def close(self) -> None:
        await self._response.aclose()


class HttpxEngine:
    name = "httpx"

    def __init__(self, http2: bool = True) -> None:
        self._http2 = http2
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                http2=self._http2,
                timeout=None,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, request: UpstreamRequest) -> HttpxResponse:
        if self._client is None:
            await self.start()
        assert self._client is not None
        timeout = httpx.Timeout(None, connect=request.connect_timeout)
        built = self._client.build_request(
            request.method, request.url, headers=request.headers, content=request.body, timeout=timeout
        )
        try:
            response = await self._client.send(built, stream=True)
        except httpx.ConnectTimeout as exc:
            raise UpstreamTimeout(
                f"connecting to the upstream timed out after {request.connect_timeout}s"
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream request failed: {exc!r}") from exc
        return HttpxResponse(response)
