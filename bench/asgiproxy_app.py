"""asgiproxy (the off-the-shelf ASGI reverse proxy) as a comparison point, set up as its README does.

``make_simple_proxy_app`` ignores the lifespan, so this wrapper answers it and closes the shared
aiohttp session on shutdown. The context's concurrency semaphore is raised from its default of 20
so that c=50 measures the proxy, not a queue in front of it.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:8080 uvicorn asgiproxy_app:app --app-dir bench``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from asgiproxy.config import BaseURLProxyConfigMixin, ProxyConfig
from asgiproxy.context import ProxyContext
from asgiproxy.simple_proxy import make_simple_proxy_app

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8080")


class UpstreamConfig(BaseURLProxyConfigMixin, ProxyConfig):
    upstream_base_url = UPSTREAM
    rewrite_host_header = urlparse(UPSTREAM).netloc


context = ProxyContext(UpstreamConfig(), max_concurrency=1024)
proxy = make_simple_proxy_app(context)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "lifespan":
        await proxy(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await context.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
