"""An upstream for the compression tests (aiohttp, own process).

GET/HEAD /text: ``size`` bytes of text (TEXT repeated), ``type`` (Content-Type, default
text/plain; charset=utf-8), ``etag``, ``vary``, ``cc`` (Cache-Control), ``status``; ``chunked=1``
streams it in ``chunk``-byte pieces without Content-Length; ``gzip=1`` sends it gzip-encoded
(Content-Encoding: gzip) as an upstream that compresses itself would.
GET /sse: ``events`` Server-Sent Events, ``delay`` seconds apart.
GET /slow: ``first`` bytes of text, then a pause of ``delay`` seconds, then ``rest`` bytes.
GET /big: ``size`` bytes of text streamed in 64 KiB chunks without Content-Length.
GET /not-modified: 304 with an ETag.

python -m tests.servers.compress_upstream --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import gzip

from aiohttp import web

TEXT = b"The quick brown fox jumps over the lazy dog. 0123456789 kairos gateway compression.\n"


def text(size: int) -> bytes:
    return (TEXT * (size // len(TEXT) + 1))[:size]


def make_app() -> web.Application:
    async def text_endpoint(request: web.Request) -> web.StreamResponse:
        query = request.query
        size = int(query.get("size", "4096"))
        body = text(size)
        headers = {"Content-Type": query.get("type", "text/plain; charset=utf-8")}
        for key, name in (("etag", "ETag"), ("vary", "Vary"), ("cc", "Cache-Control")):
            if key in query:
                headers[name] = query[key]
        if query.get("gzip") == "1":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(status=int(query.get("status", "200")), headers=headers)
        if query.get("chunked") != "1":
            response.content_length = len(body)
            await response.prepare(request)
            if request.method != "HEAD":
                await response.write(body)
            await response.write_eof()
            return response
        response.enable_chunked_encoding()
        await response.prepare(request)
        step = int(query.get("chunk", "512"))
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
        await response.write_eof()
        return response

    async def sse(request: web.Request) -> web.StreamResponse:
        events = int(request.query.get("events", "3"))
        delay = float(request.query.get("delay", "0.5"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for number in range(events):
            await response.write(f"id: {number}\ndata: {'event ' * 300}{number}\n\n".encode())
            if number < events - 1:
                await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        query = request.query
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(text(int(query.get("first", "4096"))))
        await asyncio.sleep(float(query.get("delay", "1")))
        await response.write(text(int(query.get("rest", "4096"))))
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", str(32 * 1024 * 1024)))
        chunk = text(65536)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def not_modified(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"', "Content-Type": "text/plain"})

    app = web.Application()
    app.router.add_get("/text", text_endpoint)  # GET also answers HEAD
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_get("/not-modified", not_modified)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
