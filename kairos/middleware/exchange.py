"""ExchangeMiddleware: opens the per-request Exchange (request id, client IP, start time).

In the gateway pipeline it sits inside the layers that only watch (tracing, metrics, access log,
security headers) and outside every layer that decides, so every later concern, and every error it
renders, has the request id (kairos/pipeline.py). A client-sent ``X-Request-ID`` is kept when it is
sane (printable, at most 128 chars) so a trace spans systems; otherwise a new one is made. It is
also the pipeline's last guard: an unexpected exception becomes a JSON 500 with the request id
instead of a bare server error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.request import new_request_id

logger = logging.getLogger("kairos")

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
        exchange = Exchange(
            request_id=request_id or new_request_id(),
            client_ip=self._resolve(peer, headers) if self._resolve is not None else peer,
            started=time.perf_counter(),
        )
        scope[SCOPE_KEY] = exchange
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            await _internal_error(scope, send, exc, exchange.request_id)


async def _internal_error(scope: Scope, send: Send, exc: Exception, request_id: str) -> None:
    """A JSON 500 if nothing was sent yet; otherwise re-raise so the server drops the connection
    (the only honest signal once a response has started)."""
    try:
        await reject(scope, send, "internal", "Internal gateway error", request_id)
    except Exception:
        raise exc from None
    logger.error("unhandled error in the pipeline (%s)", request_id, exc_info=exc)
