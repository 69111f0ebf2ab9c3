"""The server's own cost per request: an ASGI app that answers the bench's bodies itself, with no
upstream and no work, under the same uvicorn command as every Python SUT.

No Python proxy can do better than this per request, so it bounds what a gateway can reach at all:
e.g. a cache hit can serve at most (plain proxy CPU per request / this app's) times the plain
proxy's requests/s, however cheap the cache itself is.

Run: ``uvicorn asgi_floor:app --app-dir bench``.
"""

from __future__ import annotations

from typing import Any

# The same bodies as the nginx upstream (bench/suts.py BODIES), with the headers nginx sends.
_BODIES = {"/small": b"x" * 100, "/16k": b"x" * 16384}
_NOT_FOUND = b"not found"


async def lifespan(receive: Any, send: Any) -> None:
    """Startup and shutdown with nothing to start (also used by minimal_hit.py)."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = _BODIES.get(scope["path"])
    status = 200 if body is not None else 404
    body = body if body is not None else _NOT_FOUND
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
        (b"etag", b'"bench"'),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
