"""ExchangeMiddleware: opens the per-request Exchange (request id, client IP, start time).

Outermost in the gateway pipeline so every later concern — and every error it renders — has the
request id. A client-sent ``X-Request-ID`` is kept when it is sane (printable, ≤ 128 chars) so a
trace spans systems; otherwise a new one is made.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.exchange import SCOPE_KEY, Exchange

_MAX_ID = 128


def _acceptable_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_ID and all(0x21 <= byte <= 0x7E for byte in value)


class ExchangeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        resolve_client_ip: Callable[[str, list[tuple[bytes, bytes]]], str] | None = None,
        before_first_request: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self._resolve = resolve_client_ip
        self._before_first_request = before_first_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._before_first_request is not None:
            await self._before_first_request()
            self._before_first_request = None
        headers = scope["headers"]
        request_id = None
        for name, value in headers:
            if name == b"x-request-id":
                if _acceptable_id(value):
                    request_id = value.decode("ascii")
                break
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        scope[SCOPE_KEY] = Exchange(
            request_id=request_id or uuid.uuid4().hex,
            client_ip=self._resolve(peer, headers) if self._resolve is not None else peer,
            started=time.perf_counter(),
        )
        await self.app(scope, receive, send)
