"""The HTTP proxy endpoint: the innermost ASGI app for ``protocol: http`` routes.

Answers with raw ASGI messages (Starlette's StreamingResponse costs 300-480 µs per request here).
Bodies stream both ways; small ones (known length up to SMALL_BODY) are read in one piece, which
saves several ``send``/``receive`` round trips on the common case. The route's ``timeout_ms`` is
one deadline for the whole exchange, upload and download included (Envoy's route timeout): before
the response starts it becomes 504; after, the connection is aborted so the client can tell the
body is incomplete, never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Message, Receive, Scope, Send

from kairos.errors import send_error
from kairos.exchange import get_exchange
from kairos.proxy.deadline import DeadlineWatch
from kairos.proxy.engine import (
    Body,
    UpstreamConnectError,
    UpstreamEngine,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
)
from kairos.proxy.headers import ClientAddress, downstream_response_headers, prepare_upstream
from kairos.proxy.redirects import RedirectRewriter
from kairos.routing.route import Backend

logger = logging.getLogger("kairos.proxy")

SMALL_BODY = 64 * 1024
# Statuses whose responses never have a body (RFC 9110 §15.3.5, §15.4.5; 1xx never reach here).
# Their Content-Length is dropped: 204 must not carry one (§8.6), and a 304's (which may state the
# size of the 200 it stands for) makes uvicorn raise "Response content shorter than Content-Length"
# after the headers went out, i.e. an error logged and the client's keep-alive connection reset.
NO_BODY_STATUS = frozenset({204, 304})


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


class ResponseAborted(Exception):
    """The upstream failed after the response started; raising makes the server drop the
    connection, which is the only honest signal left."""


class HttpProxy:
    def __init__(
        self,
        engine_for: Callable[[Backend], UpstreamEngine],
        forwarding: Callable[[], ClientAddress],
        deadlines: DeadlineWatch | None = None,
    ) -> None:
        self._engine_for = engine_for
        self._forwarding = forwarding
        self._deadlines = deadlines or DeadlineWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route = exchange.route
        backend = exchange.backend
        assert route is not None and backend is not None
        request_id = exchange.request_id
        url, prepared = prepare_upstream(scope, exchange, self._forwarding)
        upstream = UpstreamRequest(
            method=scope["method"],
            url=url,
            headers=prepared.headers,
            body=None,
            connect_timeout=route.connect_timeout,
            ssl=backend.ssl,
        )
        started = False
        timeout, per_try = _attempt_timeout(route.timeout, exchange.deadline, exchange.try_timeout)
        try:
            async with self._deadlines.within(timeout):
                waiting_since = time.perf_counter()
                upstream.body = await _request_body(prepared.content_length, prepared.chunked, receive)
                sent_at = time.perf_counter()
                try:
                    response = await self._engine_for(backend).send(upstream)
                finally:
                    head_at = time.perf_counter()
                    # The client's body and the upstream's head are others' time, not the gateway's.
                    exchange.waited += head_at - waiting_since
                exchange.upstream_seconds = head_at - sent_at
                try:
                    redirects = route.redirects
                    if redirects is None:
                        headers = downstream_response_headers(response.headers, request_id.encode())
                    else:
                        headers = downstream_response_headers(
                            response.headers,
                            request_id.encode(),
                            _rewriter(redirects, exchange.params, scope.get("root_path", "")),
                            redirects.names,
                        )
                    length = response.content_length
                    if response.status in NO_BODY_STATUS:
                        headers = [header for header in headers if header[0] != b"content-length"]
                        length = 0
                    # One message when the whole (small) body is already here; otherwise the head
                    # goes out at once and the body follows as it arrives, never held back.
                    body = response.ready_body() if length is not None and length <= SMALL_BODY else None
                    if body is not None:
                        started = True
                        await send(
                            {"type": "http.response.start", "status": response.status, "headers": headers}
                        )
                        await send({"type": "http.response.body", "body": body})
                    else:
                        started = True
                        await send(
                            {"type": "http.response.start", "status": response.status, "headers": headers}
                        )
                        await _stream_response(
                            response,
                            send,
                            receive,
                            watch=upstream.body is None or isinstance(upstream.body, bytes),
                        )
                finally:
                    await response.close()
        except ClientDisconnected:
            return
        except (TimeoutError, UpstreamTimeout) as exc:
            exchange.upstream_failure = "timeout"
            if started:
                raise ResponseAborted(f"{url}: deadline of {timeout:.3g}s hit mid-response") from exc
            if isinstance(exc, UpstreamTimeout):
                what = str(exc)
            elif per_try:
                what = f"no complete response within the per-try timeout of {timeout:.3g}s"
            else:
                what = f"no complete response within {route.timeout}s"
            await send_error(send, "timeout", f"Upstream timeout for {route.name}: {what}", request_id)
        except UpstreamError as exc:
            if _client_left(exc):
                return
            connect_failed = isinstance(exc, UpstreamConnectError)
            exchange.upstream_failure = "connect" if connect_failed else "error"
            if started:
                raise ResponseAborted(f"{url}: {exc}") from exc
            kind = "connection refused" if connect_failed else "error"
            logger.warning("upstream %s for %s (%s): %s", kind, url, request_id, exc)
            await send_error(send, "upstream", f"Upstream error for {backend.key}: {exc}", request_id)


def _rewriter(
    redirects: RedirectRewriter, params: Mapping[str, str], root: str
) -> Callable[[bytes, bytes], bytes]:
    def rewrite(name: bytes, value: bytes) -> bytes:
        return redirects.rewrite(name, value, params, root)

    return rewrite


def _attempt_timeout(
    route_timeout: float | None, deadline: float | None, try_timeout: float | None
) -> tuple[float | None, bool]:
    """Seconds this attempt may take, and whether the per-try timeout is what bounds it. Without
    retries the route's ``timeout_ms`` applies; with them, what is left of the shared deadline."""
    timeout = route_timeout if deadline is None else max(0.0, deadline - time.monotonic())
    if try_timeout is not None and (timeout is None or try_timeout < timeout):
        return try_timeout, True
    return timeout, False


async def _stream_response(response: UpstreamResponse, send: Send, receive: Receive, watch: bool) -> None:
    """Relay a streamed body. A long body is abandoned as soon as the client leaves: uvicorn
    silently drops sends after a disconnect, so without the watcher the gateway would read the
    whole upstream body for nobody. The watcher only runs once the request body is fully read, so
    it never races the upload for ``receive``."""
    watcher = asyncio.create_task(_wait_for_disconnect(receive)) if watch else None
    try:
        async for chunk in response.iter_chunks():
            if watcher is not None and watcher.done():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        if watcher is not None:
            watcher.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _request_body(length: int | None, chunked: bool, receive: Receive) -> Body:
    """None when the request has no body; bytes when it is small and sized; else a stream."""
    if not chunked and not length:
        return None
    if length is not None and length <= SMALL_BODY:
        parts: list[bytes] = []
        while True:
            message = await receive()
            _check_disconnect(message)
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)
    return _stream_body(receive)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        _check_disconnect(message)
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _client_left(exc: BaseException) -> bool:
    """Whether an engine error was caused by the client leaving mid-upload: the engine's body
    writer met our ClientDisconnected and wrapped it (aiohttp: ClientConnectionError). That is no
    upstream failure, so it must not be logged or answered as one."""
    cause = exc.__cause__ or exc.__context__
    for _ in range(8):  # chains are short; bounded in case of a cycle
        if cause is None:
            return False
        if isinstance(cause, ClientDisconnected):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _check_disconnect(message: Message) -> None:
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
