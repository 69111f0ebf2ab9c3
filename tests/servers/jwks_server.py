"""A JWKS endpoint for the integration tests (aiohttp, own process) that the test can steer.

python -m tests.servers.jwks_server --port 9000 [--document jwks.json]

GET  /jwks.json     the current document (counted; honours the configured delay, status, Cache-Control)
PUT  /admin/jwks    replace the document with the request's JSON body
PUT  /admin/config  {"delay": seconds, "status": code, "cache_control": value}: how /jwks.json answers
GET  /admin/stats   {"requests": how many times /jwks.json was asked for}
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web


def make_app(document: Any) -> web.Application:
    state: dict[str, Any] = {"document": document, "requests": 0, "delay": 0.0, "status": 200}
    state["cache_control"] = None

    async def jwks(request: web.Request) -> web.Response:
        state["requests"] += 1
        if state["delay"]:
            await asyncio.sleep(state["delay"])
        headers = {"Cache-Control": state["cache_control"]} if state["cache_control"] else {}
        if state["status"] != 200:
            return web.json_response({"error": "unavailable"}, status=state["status"])
        return web.json_response(state["document"], headers=headers)

    async def put_document(request: web.Request) -> web.Response:
        state["document"] = await request.json()
        return web.json_response({"ok": True})

    async def put_config(request: web.Request) -> web.Response:
        changes = await request.json()
        for key in ("delay", "status", "cache_control"):
            if key in changes:
                state[key] = changes[key]
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": state["requests"]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_put("/admin/jwks", put_document)
    app.router.add_put("/admin/config", put_config)
    app.router.add_get("/admin/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--document", type=Path)
    args = parser.parse_args()
    document = json.loads(args.document.read_text()) if args.document else {"keys": []}
    web.run_app(make_app(document), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
