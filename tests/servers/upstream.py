"""A real upstream HTTP + WebSocket server for the integration tests (aiohttp, own process).

python -m tests.servers.upstream --port 9000 --name a
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

# Close code + reason seen by /logged-ws/{key}, by key.
LOGGED_CLOSE = web.AppKey("logged_close", dict)
# What /recorded-upload/{key} received (bytes, and whether the body arrived complete), by key.
RECORDED_UPLOADS = web.AppKey("recorded_uploads", dict)


def make_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "server": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "path": request.path,
                "query_string": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_bytes": len(body),
                "body": body.decode("utf-8", "replace") if len(body) < 4096 else "",
            }
        )

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"server": name})

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers.add("X-Multi", "one")
        response.headers.add("X-Multi", "two")
        return response

    async def hop(request: web.Request) -> web.Response:
        response = web.Response(text="hop")
        response.headers["Connection"] = "X-Private-Hop"
        response.headers["X-Private-Hop"] = "secret"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = "Basic"
        response.headers["X-Kept"] = "yes"
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.json_response({"server": name, "slow": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        chunk = b"x" * 65536
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def trickle(request: web.Request) -> web.StreamResponse:
        """Sends a first chunk, then stalls: for mid-response deadline tests."""
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.sleep(float(request.query.get("delay", "5")))
        await response.write(b"late")
        return response

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"server": name, "bytes": total, "sha256": digest.hexdigest()})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"server": name}, status=int(request.match_info["code"]))

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        raise ConnectionResetError

    async def ws(request: web.Request) -> web.WebSocketResponse:
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        socket = web.WebSocketResponse(protocols=protocols[:1], autoping=True)
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                text = message.data
                if text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await socket.close(code=int(code), message=reason.encode())
                    break
                if text == "whoami":
                    await socket.send_json(
                        {
                            "server": name,
                            "path": request.raw_path,
                            "subprotocol": socket.ws_protocol,
                            "headers": [[k, v] for k, v in request.headers.items()],
                        }
                    )
                    continue
                if text == "ping-me":
                    await socket.ping(b"from-backend")
                    await socket.send_str("pinged")
                    continue
                await socket.send_str(text)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        close_code = socket.close_code
        request.app["last_close"] = {"code": close_code}
        return socket

    async def last_close(request: web.Request) -> web.Response:
        return web.json_response(request.app.get("last_close"))

    async def ws_reject(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    async def ws_auth(request: web.Request) -> web.StreamResponse:
        """A WebSocket echo that answers the upgrade with 401 unless the token is right."""
        if request.headers.get("Authorization") != "Bearer good":
            return web.Response(
                status=401,
                text='{"detail": "bad token"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="chat"'},
            )
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
        return socket

    async def logged_ws(request: web.Request) -> web.WebSocketResponse:
        """WebSocket echo that records the close code *and reason* it received under ``{key}``
        (read back from ``/logged-close/{key}``); text "flood" starts a stream of messages to
        the client that lasts until the connection closes; text "drop" aborts the TCP connection."""
        key = request.match_info["key"]
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        record: dict[str, object] = {"code": None, "reason": None}
        flood: asyncio.Task[None] | None = None

        async def flood_client() -> None:
            count = 0
            with contextlib.suppress(Exception):
                while not socket.closed:
                    await socket.send_str(f"flood-{count}")
                    count += 1
                    await asyncio.sleep(0.001)

        while True:
            message = await socket.receive()
            if message.type == WSMsgType.TEXT:
                if message.data == "flood" and flood is None:
                    flood = asyncio.create_task(flood_client())
                elif message.data == "drop":  # vanish without a close frame
                    assert request.transport is not None
                    request.transport.abort()
                    return socket
                else:
                    await socket.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
            else:
                if message.type == WSMsgType.CLOSE:
                    record = {"code": message.data, "reason": message.extra or ""}
                else:
                    record = {"code": socket.close_code, "reason": None, "type": str(message.type)}
                break
        if flood is not None:
            flood.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flood
        await socket.close()
        request.app[LOGGED_CLOSE][key] = record
        return socket

    async def logged_close(request: web.Request) -> web.Response:
        return web.json_response(request.app[LOGGED_CLOSE].get(request.match_info["key"]))

    async def recorded_upload(request: web.Request) -> web.Response:
        """Reads the body and records what arrived, even when the request is aborted mid-body."""
        total, complete = 0, False
        try:
            async for chunk in request.content.iter_chunked(65536):
                total += len(chunk)
            complete = True
        except (ConnectionError, aiohttp.ClientPayloadError):
            pass  # the sender aborted: recorded as incomplete
        request.app[RECORDED_UPLOADS][request.match_info["key"]] = {"bytes": total, "complete": complete}
        return web.json_response({"server": name, "bytes": total, "complete": complete})

    async def recorded(request: web.Request) -> web.Response:
        return web.json_response(request.app[RECORDED_UPLOADS].get(request.match_info["key"]))

    seen: list[list[str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        """Every request that reached this upstream (method, raw path), for the abuse tests: a
        smuggled request would show up here."""
        if request.path != "/seen":
            seen.append([request.method, request.raw_path])
            del seen[:-1000]
        response: web.StreamResponse = await handler(request)
        return response

    async def seen_requests(request: web.Request) -> web.Response:
        answer = web.json_response(list(seen))
        if "clear" in request.query:
            seen.clear()
        return answer

    app = web.Application(client_max_size=1024**3, middlewares=[record])
    app.router.add_get("/seen", seen_requests)

    async def drip(request: web.Request) -> web.StreamResponse:
        """A sized body sent a byte at a time after the head: for first-byte and overhead tests."""
        size = int(request.query.get("size", "10"))
        interval = float(request.query.get("interval", "0.3"))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = size
        await response.prepare(request)
        for _ in range(size):
            await asyncio.sleep(interval)
            await response.write(b"x")
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        """httpbin's /redirect/n and /absolute-redirect/n: n hops, relative or absolute, then /get."""
        hops = int(request.match_info["n"])
        absolute = request.path.startswith("/absolute-redirect/")
        kind = "absolute" if absolute else "relative"
        target = "/get" if hops <= 1 else f"/{kind}-redirect/{hops - 1}"
        if absolute:
            target = f"http://{request.host}{target}"
        raise web.HTTPFound(target)

    async def get(request: web.Request) -> web.Response:
        return web.json_response({"server": name, "path": request.raw_path, "url": str(request.url)})

    async def located(request: web.Request) -> web.Response:
        """Every header that can name the backend, for the rewrite tests."""
        response = web.Response(status=201, text="created")
        own = f"http://{request.host}"
        response.headers["Location"] = request.query.get("location", f"{own}/items/7?x=1#top")
        response.headers["Content-Location"] = "/items/7"
        response.headers["Refresh"] = f"3; url={own}/items/8"
        response.headers.add("Set-Cookie", f"sid=1; Path=/items; Domain={request.url.host}; HttpOnly")
        response.headers.add("Set-Cookie", "pref=2; Path=/")
        return response

    app.router.add_get("/drip", drip)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/relative-redirect/{n}", redirect)
    app.router.add_get("/absolute-redirect/{n}", redirect)
    app.router.add_get("/get", get)
    app.router.add_get("/located", located)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/trickle", trickle)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/drop", drop)
    app.router.add_get("/ws{tail:.*}", ws)
    app.router.add_get("/last-close", last_close)
    app.router.add_get("/ws-reject", ws_reject)
    app.router.add_get("/ws-auth", ws_auth)
    app.router.add_get("/logged-ws/{key}", logged_ws)
    app.router.add_get("/logged-close/{key}", logged_close)
    app.router.add_post("/recorded-upload/{key}", recorded_upload)
    app.router.add_get("/recorded/{key}", recorded)
    app[LOGGED_CLOSE] = {}
    app[RECORDED_UPLOADS] = {}
    _ = WSCloseCode
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    web.run_app(make_app(args.name), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
