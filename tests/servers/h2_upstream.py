"""An HTTP/2 (h2c, prior knowledge) upstream under hypercorn that reports the protocol it saw."""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps(
        {
            "http_version": scope["http_version"],
            "path": scope["raw_path"].decode(),
            "query_string": scope["query_string"].decode(),
            "body_bytes": len(body),
            "x_request_id": dict(scope["headers"]).get(b"x-request-id", b"").decode(),
        }
    ).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": payload})
