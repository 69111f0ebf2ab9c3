"""The least a cache hit can cost in Python: the bound behind "a cache hit serves ≥ 3x plain".

One ASGI app doing only what every gateway answer must do, with Kairos's own pieces and nothing
else, all inline (no middleware layers): match the route in a RouteTable, make a request id, count
and time the request in RequestMetrics, look the entry up in a MemoryStore, and send the stored
response with ``age``, ``x-cache`` and ``x-request-id``. No security headers, compression, CORS,
auth or rate-limit checks, which the real hit path also passes. Served by the bench's uvicorn
command, its CPU per request is what a hit could cost if the gateway were rebuilt around hits.

Run (one core for the server, the other for wrk), from the repository root::

    taskset -c 0 .venv/bin/uvicorn minimal_hit:app --app-dir bench --port 18777 \\
        --loop uvloop --http httptools --no-access-log --log-level warning &
    taskset -c 1 wrk -t1 -c50 -d5s http://127.0.0.1:18777/p/cache-hit

and read utime+stime of the server from /proc/PID/stat before and after the wrk run.
"""

from __future__ import annotations

import time
from typing import Any

from asgi_floor import lifespan

from kairos.cache.entry import CachedResponse
from kairos.cache.memory import MemoryStore
from kairos.config import load_data
from kairos.observability.requests import RequestMetrics
from kairos.request import new_request_id
from kairos.routing.backend import BackendState
from kairos.routing.matcher import RouteMatch, RouteTable
from kairos.routing.route import compile_route

BODY = b"x" * 100
_config = load_data(
    {
        "version": 1,
        "routers": [
            {
                "external_path": "/p/cache-hit",
                "internal_path": "/small",
                "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": 9}],
                "cache": {"enabled": True, "ttl_secs": 3600},
            }
        ],
    },
    "(minimal hit)",
).config
_states: dict[str, BackendState] = {}
TABLE = RouteTable(compile_route(index, route, _states) for index, route in enumerate(_config.routers))
METRICS = RequestMetrics()
STORE = MemoryStore(max_entries=1000, max_bytes=10_000_000)


def _key(scope: dict[str, Any]) -> str:
    host = next((value for name, value in scope["headers"] if name == b"host"), b"")
    return f"{host.decode('latin-1')}\n{scope['path']}\n{scope['query_string'].decode('latin-1')}"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    started = time.perf_counter()
    request_id = new_request_id().encode()
    match = TABLE.match(scope["method"], scope["path"])
    if not isinstance(match, RouteMatch):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    key = _key(scope)
    now = time.time()
    entry = STORE.get_now(key, now)
    if not isinstance(entry, CachedResponse):  # the first request fills the entry, as a miss would
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"100"), (b"etag", b'"bench"')]
        entry = CachedResponse(200, headers, BODY, b'"bench"', now, now + 3600)
        await STORE.set(key, entry)
        label = b"MISS"
    else:
        label = b"HIT"
    headers = list(entry.headers)
    headers.append((b"age", str(entry.age(now)).encode()))
    headers.append((b"x-cache", label))
    headers.append((b"x-request-id", request_id))
    await send({"type": "http.response.start", "status": entry.status, "headers": headers})
    await send({"type": "http.response.body", "body": entry.body})
    route = match.route.name
    METRICS.record(route, scope["method"], entry.status, "gateway", time.perf_counter() - started, None)
