"""Calling an ASGI app in process, through httpx: what the ``asgi_client`` fixture (conftest.py) hands
out. No server, no socket: httpx.ASGITransport calls the app directly.

Sync tests call an app in one line; the body is read before the call returns::

    def test_x(asgi_client: AsgiClients) -> None:
        response = asgi_client(app).get("/x", headers={"X-Api-Key": "k"})  # an httpx.Response
        reply = asgi_client(app).raw("GET", "/page", headers={"Accept-Encoding": None})
        reply.raw  # the body bytes exactly as the app sent them (not decoded)

All sync calls of one test share one event loop, which the fixture closes at the end of the test
(cancelling whatever the app left running). Each call uses a fresh httpx client, so nothing (cookies)
carries over between calls.
A header given as ``None`` is left out, including one httpx adds by default (``Accept-Encoding``,
``User-Agent``, ...).

Async code (a scenario run with ``asyncio.run``) takes an httpx.AsyncClient on its own loop::

    async with asgi_client(app, client=("127.0.0.1", 1234)).async_client() as http:
        response = await http.get("/x")
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from starlette.types import ASGIApp

BASE_URL = "http://testserver"
CLIENT = ("127.0.0.1", 123)  # httpx's default client address, what scope["client"] holds

Headers = Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A response with its body as sent: no Content-Encoding undone."""

    status_code: int
    headers: httpx.Headers
    raw: bytes


class AsgiClient:
    """One ASGI app, called in process. Make it with the ``asgi_client`` fixture (:class:`AsgiClients`)."""

    def __init__(
        self,
        app: ASGIApp,
        runner: asyncio.Runner,
        *,
        base_url: str = BASE_URL,
        client: tuple[str, int] = CLIENT,
        raise_app_exceptions: bool = True,
    ) -> None:
        self.app = app
        self.base_url = base_url
        self._runner = runner
        self.transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=raise_app_exceptions, client=client
        )

    def async_client(self) -> httpx.AsyncClient:
        """An httpx.AsyncClient on the app, to use as ``async with`` from async code."""
        return httpx.AsyncClient(transport=self.transport, base_url=self.base_url)

    def request(
        self, method: str, url: str, *, headers: Headers | None = None, **kwargs: Any
    ) -> httpx.Response:
        """``kwargs``: what httpx.AsyncClient.build_request takes (content, json, params, ...)."""
        return self._runner.run(self._request(method, url, headers, kwargs))

    def get(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, headers=headers, **kwargs)

    def head(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, headers=headers, **kwargs)

    def options(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, headers=headers, **kwargs)

    def post(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, headers=headers, **kwargs)

    def put(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, headers=headers, **kwargs)

    def patch(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, headers=headers, **kwargs)

    def delete(self, url: str, *, headers: Headers | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, headers=headers, **kwargs)

    def raw(self, method: str, url: str, *, headers: Headers | None = None, **kwargs: Any) -> RawResponse:
        """The response streamed, its body bytes kept exactly as the app sent them."""
        return self._runner.run(self._raw(method, url, headers, kwargs))

    async def _request(
        self, method: str, url: str, headers: Headers | None, kwargs: dict[str, Any]
    ) -> httpx.Response:
        async with self.async_client() as http:
            return await http.send(_build(http, method, url, headers, kwargs))

    async def _raw(
        self, method: str, url: str, headers: Headers | None, kwargs: dict[str, Any]
    ) -> RawResponse:
        async with self.async_client() as http:
            response = await http.send(_build(http, method, url, headers, kwargs), stream=True)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            return RawResponse(response.status_code, response.headers, raw)


def _build(
    http: httpx.AsyncClient, method: str, url: str, headers: Headers | None, kwargs: dict[str, Any]
) -> httpx.Request:
    headers = headers or {}
    sent = {name: value for name, value in headers.items() if value is not None}
    request = http.build_request(method, url, headers=sent, **kwargs)
    for name, value in headers.items():
        if value is None and name in request.headers:
            del request.headers[name]
    return request


class AsgiClients:
    """The ``asgi_client`` fixture: ``asgi_client(app, ...)`` makes an :class:`AsgiClient`. It owns the
    event loop the sync calls run on, and closes it on exit (the fixture: at the end of the test).

    ``base_url``: scheme and Host of the requests; ``client``: the (host, port) the app sees as
    ``scope["client"]``; ``raise_app_exceptions=False``: an exception from the app becomes a 500
    response instead of propagating into the test.
    """

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def __call__(
        self,
        app: ASGIApp,
        *,
        base_url: str = BASE_URL,
        client: tuple[str, int] = CLIENT,
        raise_app_exceptions: bool = True,
    ) -> AsgiClient:
        return AsgiClient(
            app, self._runner, base_url=base_url, client=client, raise_app_exceptions=raise_app_exceptions
        )

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> AsgiClients:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
