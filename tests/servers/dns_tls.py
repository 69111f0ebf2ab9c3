"""Encrypted DNS upstreams for the tests: DNS-over-TLS and DNS-over-HTTPS in front of a plain one.

``python -m tests.servers.dns_tls --port P --upstream-port U --cert C --key K --mode dot|doh``

- ``dot``: TLS on 127.0.0.1:P, RFC 7858 framing (two-byte length), each query relayed to the plain
  server's TCP port and its answer sent back;
- ``doh``: HTTPS (uvicorn) on 127.0.0.1:P, ``POST /dns-query`` with ``application/dns-message``
  (RFC 8484), relayed the same way.

The certificate is the tests' own CA's (trustme), so a gateway reaches these only with the route's
``tls_ca_file``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def relay(query: bytes, upstream_port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)
    finally:
        writer.close()


async def serve_dot(port: int, upstream_port: int, context: ssl.SSLContext) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                answer = await relay(await reader.readexactly(size), upstream_port)
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port, ssl=context)
    async with server:
        await server.serve_forever()


def doh_app(upstream_port: int) -> Starlette:
    async def query(request: Request) -> Response:
        if request.headers.get("content-type") != "application/dns-message":
            return Response(status_code=415)
        answer = await relay(await request.body(), upstream_port)
        return Response(answer, media_type="application/dns-message")

    return Starlette(routes=[Route("/dns-query", query, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--mode", choices=("dot", "doh"), required=True)
    args = parser.parse_args()
    if args.mode == "doh":
        uvicorn.run(
            doh_app(args.upstream_port),
            host="127.0.0.1",
            port=args.port,
            ssl_certfile=args.cert,
            ssl_keyfile=args.key,
            log_level="warning",
        )
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    asyncio.run(serve_dot(args.port, args.upstream_port, context))


if __name__ == "__main__":
    main()
