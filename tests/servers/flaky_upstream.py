"""Upstreams whose behaviour a test switches at run time, for the circuit-breaker tests.

python -m tests.servers.flaky_upstream --admin-port 9000 --ports 9001,9002 --names a,b

One process serves several independent upstreams (one per port in ``--ports``). Each answers every
path according to its current mode:

- ``ok``: 200 ``{"server": name, "n": count}``
- a status code (``500``, ``503``, ``404`` ...): that status with the same body
- ``delay-<ms>``: 200 after that many milliseconds
- ``hang``: reads the request and never answers
- ``refuse``: the listening socket is closed and open connections are dropped, so connecting
  fails with ECONNREFUSED; switching to another mode listens again on the same port.

The admin port (never affected by the modes; it opens last, so once it accepts every upstream
listens): ``POST /{port}/mode/{mode}``, ``GET /{port}/stats`` (``{"requests": n, "probes": p,
"mode": m}``: requests that upstream received, of which ``p`` were health probes on ``/health``)
and ``POST /{port}/reset``.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


class Flaky:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.mode = "ok"
        self.requests = 0
        self.probes = 0  # the requests on /health: a gateway's active health checks
        self.runner = web.AppRunner(self.main_app(), handle_signals=False, access_log=None)
        self.site: web.TCPSite | None = None

    def main_app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            self.probes += request.path == "/health"
            await request.read()
            mode = self.mode
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode.startswith("delay-"):
                await asyncio.sleep(int(mode.removeprefix("delay-")) / 1000)
            status = int(mode) if mode.isdigit() else 200
            return web.json_response({"server": self.name, "n": self.requests}, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def listen(self) -> None:
        if self.site is None:
            self.site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
            await self.site.start()

    async def refuse(self) -> None:
        if self.site is not None:
            await self.site.stop()
            self.site = None
        server = self.runner.server
        if server is not None:
            for handler in server.connections:
                handler.force_close()

    async def set_mode(self, mode: str) -> None:
        if mode == "refuse":
            await self.refuse()
        else:
            await self.listen()
        self.mode = mode


def admin_app(upstreams: dict[int, Flaky]) -> web.Application:
    def flaky(request: web.Request) -> Flaky:
        return upstreams[int(request.match_info["port"])]

    async def mode(request: web.Request) -> web.Response:
        upstream = flaky(request)
        await upstream.set_mode(request.match_info["mode"])
        return web.json_response({"mode": upstream.mode})

    async def stats(request: web.Request) -> web.Response:
        upstream = flaky(request)
        return web.json_response(
            {"requests": upstream.requests, "probes": upstream.probes, "mode": upstream.mode}
        )

    async def reset(request: web.Request) -> web.Response:
        flaky(request).requests = flaky(request).probes = 0
        return web.json_response({"requests": 0})

    app = web.Application()
    app.router.add_post("/{port}/mode/{mode}", mode)
    app.router.add_get("/{port}/stats", stats)
    app.router.add_post("/{port}/reset", reset)
    return app


async def serve(host: str, admin_port: int, ports: list[int], names: list[str]) -> None:
    upstreams = {port: Flaky(name, host, port) for port, name in zip(ports, names, strict=True)}
    for upstream in upstreams.values():
        await upstream.runner.setup()
        await upstream.listen()
    admin = web.AppRunner(admin_app(upstreams), handle_signals=False, access_log=None)
    await admin.setup()
    await web.TCPSite(admin, host, admin_port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--ports", required=True, help="comma-separated")
    parser.add_argument("--names", default="", help="comma-separated, one per port (default: the ports)")
    args = parser.parse_args()
    ports = [int(port) for port in args.ports.split(",")]
    names = args.names.split(",") if args.names else [str(port) for port in ports]
    asyncio.run(serve(args.host, args.admin_port, ports, names))


if __name__ == "__main__":
    main()
