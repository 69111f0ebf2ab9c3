"""An upstream for the response-cache tests that counts its hits (aiohttp, own process).

GET/HEAD /c/{name}: counts one hit for {name}, answers after ``delay`` seconds with ``status``,
``cc`` (Cache-Control), ``vary``, ``etag``, ``cookie=1`` (a Set-Cookie), ``size`` (a body of that
many bytes, ``chunked=1`` without Content-Length); the default body is JSON naming the hit and some
request headers. GET /hits/{name}: {"hits": n}.

python -m tests.servers.cache_upstream --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

from aiohttp import web

HITS = web.AppKey("hits", Counter)


def make_app() -> web.Application:
    async def cached(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        request.app[HITS][name] += 1
        hit = request.app[HITS][name]
        query = request.query
        if "delay" in query:
            await asyncio.sleep(float(query["delay"]))
        headers: dict[str, str] = {}
        if "cc" in query:
            headers["Cache-Control"] = query["cc"]
        if "vary" in query:
            headers["Vary"] = query["vary"]
        if "etag" in query:
            headers["ETag"] = query["etag"]
        status = int(query.get("status", "200"))
        if "size" in query:
            body = b"x" * int(query["size"])
            if query.get("chunked") == "1":
                response = web.StreamResponse(status=status, headers=headers)
                response.enable_chunked_encoding()
                await response.prepare(request)
                for start in range(0, len(body), 1000):
                    await response.write(body[start : start + 1000])
                await response.write_eof()
                return response
        else:
            body = json.dumps(
                {
                    "name": name,
                    "hit": hit,
                    "lang": request.headers.get("Accept-Language"),
                    "tenant": request.headers.get("X-Tenant"),
                    "auth": request.headers.get("Authorization"),
                }
            ).encode()
        out = web.Response(body=body, status=status, headers=headers, content_type="application/json")
        if query.get("cookie") == "1":
            out.set_cookie("session", f"s{hit}")
        return out

    async def hits(request: web.Request) -> web.Response:
        return web.json_response({"hits": request.app[HITS][request.match_info["name"]]})

    app = web.Application()
    app.router.add_get("/c/{name}", cached)  # aiohttp adds HEAD for GET routes
    app.router.add_get("/hits/{name}", hits)
    app[HITS] = Counter()
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
