"""An upstream that answers each request to ``/s/{key}`` with the next step of a script, and counts.

``PUT /_script/{key}`` with a JSON list of steps sets the script; when it runs out, the last step
repeats. Steps: ``200`` / ``503`` (any status; the body names the step), ``"503:ra=1"`` (with
``Retry-After: 1``), ``"hang"`` (never answers), ``"reset"`` (headers and part of the body, then the
connection is cut). ``GET /_log/{key}`` returns what arrived: one ``{method, body, at}`` per request.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiohttp import web

SCRIPTS: dict[str, list[Any]] = {}
LOGS: dict[str, list[dict[str, Any]]] = {}


async def set_script(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    SCRIPTS[key] = list(await request.json())
    LOGS[key] = []
    return web.json_response({"ok": True})


async def log(request: web.Request) -> web.Response:
    return web.json_response(LOGS.get(request.match_info["key"], []))


async def scripted(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    body = await request.read()
    LOGS.setdefault(key, []).append(
        {"method": request.method, "body": body.decode("latin-1"), "at": time.time(),
         "idempotency_key": request.headers.get("Idempotency-Key")}
    )  # fmt: skip
    script = SCRIPTS.get(key) or [200]
    step = script.pop(0) if len(script) > 1 else script[0]
    port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
    if step == "hang":
        await asyncio.sleep(3600)
    if step == "reset":
        response = web.StreamResponse(status=200, headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response
    status, _, option = str(step).partition(":")
    headers = {"Retry-After": option.removeprefix("ra=")} if option.startswith("ra=") else {}
    return web.json_response({"step": step, "port": port}, status=int(status), headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_put("/_script/{key}", set_script)
    app.router.add_get("/_log/{key}", log)
    app.router.add_route("*", "/s/{key}", scripted)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
