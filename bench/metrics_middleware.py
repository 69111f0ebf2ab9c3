"""Per-request cost of MetricsMiddleware, in process: a trivial ASGI app called with and without it.

.venv/bin/python bench/metrics_middleware.py
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import Message, Receive, Scope, Send

from kairos.exchange import SCOPE_KEY, Exchange
from kairos.middleware.metrics import MetricsMiddleware

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
BODY: Message = {"type": "http.response.body", "body": b"ok"}


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    scope[SCOPE_KEY] = Exchange(request_id="x", client_ip="127.0.0.1", started=0.0, upstream_seconds=0.001)
    await send(START)
    await send(BODY)


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def send(message: Message) -> None:
    pass


async def run(app: object, count: int) -> float:
    call = app  # type: ignore[assignment]
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    started = time.perf_counter()
    for _ in range(count):
        await call(dict(scope), receive, send)  # type: ignore[operator]
    return (time.perf_counter() - started) / count * 1e6


async def main() -> None:
    count = 200_000
    wrapped = MetricsMiddleware(endpoint)
    for _ in range(2):  # warm up
        await run(endpoint, 20_000)
        await run(wrapped, 20_000)
    bare = min([await run(endpoint, count) for _ in range(5)])
    with_metrics = min([await run(wrapped, count) for _ in range(5)])
    print(f"bare endpoint:    {bare:.2f} µs/request")
    print(f"with metrics:     {with_metrics:.2f} µs/request")
    print(f"metrics overhead: {with_metrics - bare:.2f} µs/request")


if __name__ == "__main__":
    asyncio.run(main())
