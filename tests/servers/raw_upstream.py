"""A misbehaving HTTP/1.1 upstream on raw asyncio streams, for the fault tests.

python -m tests.servers.raw_upstream --port 9000

Each request's path picks a behaviour (the query string tunes it):

- ``/cut?length=N&send=M``: ``Content-Length: N``, then M body bytes, then the connection is closed.
- ``/cut-chunked``: a chunked body whose terminating chunk never comes; the connection is closed.
- ``/garbage``: a non-HTTP reply (an SSH banner), then close.
- ``/hang``: reads the request and never answers (until the peer goes away).
- ``/lie``: ``200`` claiming keep-alive, then the connection is closed right after the response.
- ``/idle-close?ms=N``: a normal keep-alive response, but the connection is closed after N ms idle.
- ``/early-413``: answers ``413`` with ``Connection: close`` before reading the request body, then
  drains (and discards) the body for a bounded time before closing, as a polite server does.
- ``/huge-header?mode=one|many&kib=N``: N KiB of response headers, in one header or in 1 KiB ones.
- ``/status/204``, ``/status/304?length=N``: no body (the 304 carries ``Content-Length: N``, as
  RFC 9110 §8.6 allows).
- ``/head?size=N``: ``Content-Length: N`` and, unless the request is a HEAD, that many bytes.
- ``/informational``: ``100 Continue`` and ``103 Early Hints`` before the final ``200``.
- anything else: ``200`` with a small body naming the method, path and request body size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
DRAIN_SECONDS = 2.0


class Request:
    __slots__ = ("headers", "method", "path", "query", "target")

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ", 2)
        parts = urlsplit(self.target)
        self.path = parts.path
        self.query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0") or 0)


async def read_body(reader: asyncio.StreamReader, request: Request) -> int:
    """Read (and discard) the request body; returns its size."""
    if request.chunked:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return total
            await reader.readexactly(size + 2)
            total += size
    await reader.readexactly(request.content_length)
    return request.content_length


def response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


async def drain(reader: asyncio.StreamReader, seconds: float) -> None:
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    idle: float | None = None
    try:
        while True:
            if idle is None:
                head = await reader.readuntil(b"\r\n\r\n")
            else:
                async with asyncio.timeout(idle):
                    head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            request = Request(head[:-4])
            keep_open = await respond(request, reader, writer)
            await writer.drain()
            if not keep_open:
                return
            if request.path == "/idle-close":
                idle = int(request.query.get("ms", "20")) / 1000
    except (
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ConnectionError,
        ValueError,
    ):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Write the reply for one request; False when the connection must be closed afterwards."""
    path, query = request.path, request.query
    if path == "/cut":
        await read_body(reader, request)
        length, sent = int(query.get("length", "100000")), int(query.get("send", "1000"))
        writer.write(response("200 OK", [("Content-Length", str(length))], b"x" * sent))
        return False
    if path == "/cut-chunked":
        await read_body(reader, request)
        writer.write(response("200 OK", [("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n"))
        return False
    if path == "/garbage":
        await read_body(reader, request)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP at all\r\n\r\n")
        return False
    if path == "/hang":
        await drain(reader, 3600)  # until the peer closes
        return False
    if path == "/early-413":
        body = b'{"error": "too large"}'
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        writer.write(response("413 Content Too Large", [*headers, ("Connection", "close")], body))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await drain(reader, DRAIN_SECONDS)  # lingering close: avoids an RST that would eat the reply
        return False
    if path == "/huge-header":
        await read_body(reader, request)
        kib = int(query.get("kib", "60"))
        if query.get("mode", "one") == "one":
            headers = [("X-Huge", "h" * (kib * 1024))]
        else:
            headers = [(f"X-Big-{n}", "b" * 1000) for n in range(kib)]
        writer.write(response("200 OK", [*headers, ("Content-Length", "2")], b"ok"))
        return True
    if path == "/status/204":
        await read_body(reader, request)
        writer.write(response("204 No Content", [("X-Empty", "yes")]))
        return True
    if path == "/status/304":
        await read_body(reader, request)
        declared = query.get("length", "1234")  # the size of the 200 this 304 stands for
        writer.write(response("304 Not Modified", [("ETag", '"v1"'), ("Content-Length", declared)]))
        return True
    if path == "/head":
        await read_body(reader, request)
        size = int(query.get("size", "5000"))
        body = b"" if request.method == "HEAD" else b"h" * size
        writer.write(response("200 OK", [("Content-Length", str(size))], body))
        return True
    if path == "/informational":
        await read_body(reader, request)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        writer.write(response("200 OK", [("Content-Length", "5")], b"final"))
        return True
    size = await read_body(reader, request)
    body = f"{request.method} {request.target} {size}".encode()
    headers = [("Content-Length", str(len(body))), ("Connection", "keep-alive")]
    writer.write(response("200 OK", headers, body))
    return path != "/lie"


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD * 2)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
