"""An upstream whose health endpoint can be switched to fail, for the active health check tests.

python -m tests.servers.switchable_upstream --port 9000 --name a

- ``GET /healthz``: answers per the current mode — ``ok`` (200), ``fail`` (503), ``hang`` (no
  answer for 30 s), or a status code such as ``302`` or ``418`` — and records the arrival time
  (``time.time()``) of every probe.
- ``POST /control/mode/{mode}``: switch the mode; ``GET /control/probes``: the recorded arrivals
  (and the User-Agent of the last probe); ``POST /control/reset``: forget them.
- ``GET /whoami``: ``{"server": name}``, for load-balancing checks; other paths answer 404.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

MODES = ("ok", "fail", "hang")
STATE = web.AppKey("state", dict)


def make_app(name: str) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        state = request.app[STATE]
        state["arrivals"].append(time.time())
        state["user_agent"] = request.headers.get("User-Agent")
        mode = state["mode"]
        if mode == "hang":
            await asyncio.sleep(30)
        if mode == "fail":
            return web.json_response({"server": name, "status": "down"}, status=503)
        if mode.isdigit():
            return web.Response(status=int(mode), headers={"Location": "/elsewhere"})
        return web.json_response({"server": name, "status": "up"})

    async def set_mode(request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        if mode not in MODES and not (mode.isdigit() and 200 <= int(mode) <= 599):
            return web.json_response({"error": f"mode must be one of {MODES}"}, status=400)
        request.app[STATE]["mode"] = mode
        return web.json_response({"server": name, "mode": mode})

    async def probes(request: web.Request) -> web.Response:
        state = request.app[STATE]
        return web.json_response(
            {"server": name, "arrivals": state["arrivals"], "user_agent": state["user_agent"]}
        )

    async def reset(request: web.Request) -> web.Response:
        request.app[STATE]["arrivals"] = []
        return web.json_response({"server": name})

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"server": name})

    app = web.Application()
    app[STATE] = {"mode": "ok", "arrivals": [], "user_agent": None}
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/control/mode/{mode}", set_mode)
    app.router.add_get("/control/probes", probes)
    app.router.add_post("/control/reset", reset)
    app.router.add_get("/whoami", whoami)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="switchable")
    args = parser.parse_args()
    web.run_app(
        make_app(args.name),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=0.5,  # hanging probes must not hold up the test teardown
    )


if __name__ == "__main__":
    main()
