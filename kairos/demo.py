"""A small demo upstream (HTTP + WebSocket echo) for ``make run`` and the embedded default config.

python -m kairos.demo --port 9101
"""

from __future__ import annotations

import argparse
import json

from aiohttp import WSMsgType, web


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"message": "Hello from the Kairos demo upstream", "path": request.path_qs})


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "method": request.method})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": {name: value for name, value in request.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
    )


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/items/{id}", item)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/ws", ws_echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    args = parser.parse_args()
    print(json.dumps({"demo_upstream": f"http://{args.host}:{args.port}"}), flush=True)
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
