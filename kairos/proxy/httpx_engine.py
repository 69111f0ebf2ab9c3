"""HTTP/2 engine for backends marked ``"http2": true`` (aiohttp speaks HTTP/1.1 only).

httpx's pool costs ~10x aiohttp's per request here, so it is used only where HTTP/2 is asked for.
``sniffio`` is a declared dependency: without it httpcore retries the import on every request.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx

from kairos.proxy.engine import UpstreamConnectError, UpstreamError, UpstreamRequest, UpstreamTimeout
from kairos.proxy.headers import content_length_value


class HttpxResponse:
    __slots__ = ("_response", "content_length", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = list(response.headers.raw)
        length = response.headers.get("content-length")
        self.content_length = content_length_value(length) if length else None

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"reading the upstream body failed: {exc!r}") from exc

    def ready_body(self) -> bytes | None:
        return None  # httpx does not say what is buffered: the body is streamed

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

    def __init__(self) -> None:
        self._cleartext: httpx.AsyncClient | None = None
        # httpx sets TLS per client, so one client per TLS context (None = system trust store).
        self._tls: dict[ssl.SSLContext | None, httpx.AsyncClient] = {}

    @staticmethod
    def _client(http1: bool, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            http1=http1,
            http2=True,
            verify=verify,
            timeout=None,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        )

    async def start(self) -> None:
        # https:// negotiates h2 by ALPN; plain http:// speaks h2 with prior knowledge (h2c), since
        # a backend marked http2 has said it understands it.
        if self._cleartext is None:
            self._cleartext = self._client(http1=False)

    async def close(self) -> None:
        clients = [*self._tls.values(), *([self._cleartext] if self._cleartext else [])]
        for client in clients:
            await client.aclose()
        self._tls = {}
        self._cleartext = None

    def _client_for(self, request: UpstreamRequest) -> httpx.AsyncClient:
        if not request.url.startswith("https:"):
            assert self._cleartext is not None
            return self._cleartext
        client = self._tls.get(request.ssl)
        if client is None:
            client = self._tls[request.ssl] = self._client(http1=True, verify=request.ssl or True)
        return client

    async def send(self, request: UpstreamRequest) -> HttpxResponse:
        if self._cleartext is None:
            await self.start()
        client = self._client_for(request)
        timeout = httpx.Timeout(None, connect=request.connect_timeout)
        built = client.build_request(
            request.method, request.url, headers=request.headers, content=request.body, timeout=timeout
        )
        try:
            response = await client.send(built, stream=True)
        except httpx.ConnectTimeout as exc:
            raise UpstreamTimeout(
                f"connecting to the upstream timed out after {request.connect_timeout}s"
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream request failed: {exc!r}") from exc
        return HttpxResponse(response)
