"""The WebSocket proxy endpoint.

The backend connection is opened *before* the client is accepted. A backend that answers the
upgrade with an HTTP response instead of 101 (a 401 for a bad token, a 403 for a wrong
subprotocol) has answered: its status, headers (minus hop-by-hop ones) and body are relayed to the
client through the ASGI ``websocket.http.response`` extension, exactly as a plain request's answer
would be, and only a 5xx counts against the backend (the circuit breaker reads the status). A
backend that cannot be reached or does not answer in ``connect_timeout_ms`` is the gateway's 502 /
504 and sets ``Exchange.upstream_failure``. A server without the extension gets a close before
accept (i.e. 403). Then frames are relayed both ways until one side closes; the close code and
reason are passed to the other side.

Ping/pong: ASGI does not expose control frames, so each hop answers its own pings (uvicorn to the
client, the ``websockets`` client to the backend) — both connections stay alive and both peers get
their pongs; the frames themselves are not forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from kairos.errors import reject
from kairos.exchange import get_exchange
from kairos.proxy.headers import ClientAddress, downstream_response_headers, prepare_upstream

logger = logging.getLogger("kairos.websocket")

# Codes that may not be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CLOSE = {1004, 1005, 1006, 1015}


def _to_client(code: int) -> int:
    """The code to relay to the client for a backend close seen with ``code``: a close frame
    without a status (1005) is a normal closure (ASGI cannot send a status-less close); the other
    reserved codes (connection lost, TLS failure) become "going away"."""
    if code == CloseCode.NO_STATUS_RCVD:
        return CloseCode.NORMAL_CLOSURE
    return CloseCode.GOING_AWAY if code in _RESERVED_CLOSE else code


def _to_backend(code: int) -> int:
    """The code to relay to the backend for a client disconnect seen with ``code``. Every reserved
    code, 1005 included, becomes "going away": uvicorn reports both a status-less close frame and
    a lost TCP connection as 1005, and a vanished client must not look like a normal closure."""
    return CloseCode.GOING_AWAY if code in _RESERVED_CLOSE else code


class WebSocketProxy:
    def __init__(
        self, forwarding: Callable[[], ClientAddress], on_open: Callable[[int], None] | None = None
    ) -> None:
        self._forwarding = forwarding
        self._on_open = on_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route, backend = exchange.route, exchange.backend
        assert route is not None and backend is not None
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        url, prepared = prepare_upstream(scope, exchange, self._forwarding, websocket=True)
        headers = prepared.headers
        subprotocols = [p for p in scope.get("subprotocols", ()) if p]
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                subprotocols=subprotocols or None,
                open_timeout=route.connect_timeout,
                ssl=backend.ssl if url.startswith("wss:") else None,
                max_size=None,
                compression=None,
                user_agent_header=None,
                ping_interval=20,
                ping_timeout=20,
                proxy=None,
            )
        except InvalidStatus as exc:
            await _relay_refusal(scope, send, exc, exchange.request_id, url)
            return
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            timed_out = isinstance(exc, TimeoutError)
            exchange.upstream_failure = "timeout" if timed_out else "connect"
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.warning("websocket upstream %s failed (%s): %s", url, exchange.request_id, detail)
            await reject(
                scope,
                send,
                "timeout" if timed_out else "upstream",
                f"WebSocket upstream error for {backend.key}: {detail}",
                exchange.request_id,
            )
            return
        try:
            accept_headers = [(b"x-request-id", exchange.request_id.encode())]
            if upstream.response is not None:
                accept_headers += [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in upstream.response.headers.raw_items()
                    if name.lower() == "set-cookie"
                ]
            await send(
                {"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": accept_headers}
            )
            if self._on_open is not None:
                self._on_open(1)
            await _relay(upstream, receive, send)
        finally:
            if self._on_open is not None and upstream.state.name != "CONNECTING":
                self._on_open(-1)
            await upstream.close()


async def _relay_refusal(scope: Scope, send: Send, refusal: InvalidStatus, request_id: str, url: str) -> None:
    """Pass the backend's HTTP answer to the upgrade on to the client, as it is."""
    response = refusal.response
    status = response.status_code
    level = logging.WARNING if status >= 500 else logging.DEBUG
    logger.log(level, "websocket upstream %s answered the upgrade with %d (%s)", url, status, request_id)
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": f"upstream answered {status}"})
        return
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers.raw_items()]
    headers = [
        header
        for header in downstream_response_headers(raw, request_id.encode())
        if header[0] != b"content-length"
    ]
    body = response.body or b""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _relay(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    client_to_backend = asyncio.create_task(_client_to_backend(upstream, receive))
    backend_to_client = asyncio.create_task(_backend_to_client(upstream, send))
    done, pending = await asyncio.wait(
        {client_to_backend, backend_to_client}, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.debug("websocket relay ended with %r", task.exception())


async def _client_to_backend(upstream: ClientConnection, receive: Receive) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            try:
                await upstream.send(text if text is not None else message.get("bytes") or b"")
            except ConnectionClosed:
                return
        elif kind == "websocket.disconnect":
            code = _to_backend(message.get("code", CloseCode.NORMAL_CLOSURE))
            await upstream.close(code, message.get("reason") or "")
            return


async def _backend_to_client(upstream: ClientConnection, send: Send) -> None:
    try:
        async for frame in upstream:
            if isinstance(frame, str):
                await send({"type": "websocket.send", "text": frame})
            else:
                await send({"type": "websocket.send", "bytes": frame})
    except ConnectionClosed:
        pass
    close = upstream.protocol.close_rcvd
    code = close.code if close is not None else CloseCode.INTERNAL_ERROR
    reason = close.reason if close is not None else "upstream connection lost"
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": _to_client(code), "reason": reason})
