"""A demo backend for the AI-routing example: answers every request with its name and what it got.

python examples/ai-routing/backend.py --port 9201 --name catalogue
"""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"backend": name, "method": request.method, "path": request.path_qs, "body_bytes": len(body)}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.name), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
