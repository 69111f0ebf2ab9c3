"""The single place gateway-generated errors are rendered.

Wire format kept from kairos-rs so existing clients parse it: a JSON body
``{"error": message, "type": kind, "timestamp": RFC 3339, "request_id": id}``; the request id is
also echoed in ``X-Request-ID``.

Every response start the gateway renders itself carries ``GENERATED: True`` as an extra key of the
ASGI ``http.response.start`` message (servers ignore unknown keys). That is how an outer middleware
such as SecurityHeadersMiddleware tells a gateway-made answer (an error, a CORS preflight) from a
proxied one without sharing per-request state: the mark travels with the response it describes.
A middleware that builds its own answer (not through ``send_error``) sets the same key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# type -> status, as in kairos-rs's GatewayError (reference §3.3), plus Kairos's own.
STATUS_BY_TYPE = {
    "bad_request": 400,
    "authentication_error": 401,
    "authorization_error": 403,
    "forbidden": 403,
    "route_not_found": 404,
    "not_found": 404,
    "conflict": 409,
    "precondition_failed": 412,
    "range_not_satisfiable": 416,
    "unsupported_media_type": 415,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "payload_too_large": 413,
    "headers_too_large": 431,
    "upgrade_required": 426,
    "rate_limit_error": 429,
    "rate_limit_unavailable": 503,
    "internal": 500,
    "not_implemented": 501,
    "upstream": 502,
    "config": 502,
    "circuit_open": 503,
    "upstream_unavailable": 503,
    "timeout": 504,
}


# Extra key of a response-start message: "this response was made by the gateway, not proxied".
GENERATED = "kairos.generated"


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(kind: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {"error": message, "type": kind, "timestamp": timestamp(), "request_id": request_id}
    ).encode()


async def send_error(
    send: Send,
    kind: str,
    message: str,
    request_id: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    status: int | None = None,
    message_prefix: str = "http.response",
) -> None:
    """``message_prefix`` is ``websocket.http.response`` to refuse an upgrade with a real response."""
    body = error_body(kind, message, request_id)
    await send(
        {
            "type": f"{message_prefix}.start",
            "status": status or STATUS_BY_TYPE[kind],
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *headers,
            ],
            GENERATED: True,
        }
    )
    await send({"type": f"{message_prefix}.body", "body": body})


async def reject(
    scope: Scope,
    send: Send,
    kind: str,
    message: str,
    request_id: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    status: int | None = None,
) -> None:
    """Answer with an error whatever the scope type. A WebSocket upgrade is refused with a real
    HTTP response when the server supports the ``websocket.http.response`` extension (uvicorn
    does), otherwise with a close before accept (the server turns that into 403)."""
    if scope["type"] == "http":
        await send_error(send, kind, message, request_id, headers, status)
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send_error(send, kind, message, request_id, headers, status, "websocket.http.response")
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


# What a response watcher (metrics, access log) records when no answer of its own was seen.
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before any answer
WEBSOCKET_REFUSED = (403, True)  # an upgrade closed or dropped before accept: the server sends 403


def unanswered(failed: bool) -> tuple[int, bool]:
    """(status, generated) of a request whose app sent no response start: 500 if it raised, else 499."""
    return (500 if failed else CLIENT_CLOSED), True


async def watch_upgrade(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, settled: Callable[[int, bool], None]
) -> None:
    """Run a WebSocket scope through ``app`` and call ``settled(status, generated)`` exactly once,
    as soon as the upgrade's outcome is known (accepted: 101; refused: the refusal), or at the end
    when nothing settled it (closed or dropped before accept: the server's 403)."""
    done = False

    async def send_watched(message: Message) -> None:
        nonlocal done
        if not done:
            outcome = websocket_outcome(message)
            if outcome is not None:
                done = True
                settled(*outcome)
        await send(message)

    try:
        await app(scope, receive, send_watched)
    finally:
        if not done:
            settled(*WEBSOCKET_REFUSED)


def websocket_outcome(message: Message) -> tuple[int, bool] | None:
    """(status, generated) of an upgrade, from the first message that settles it; None otherwise."""
    kind = message["type"]
    if kind == "websocket.accept":
        return 101, False
    if kind == "websocket.close":
        return WEBSOCKET_REFUSED
    if kind == "websocket.http.response.start":
        return message["status"], bool(message.get(GENERATED))
    return None
