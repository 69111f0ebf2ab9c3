"""The DNS listener: UDP and TCP on ``KAIROS_DNS_HOST``:``KAIROS_DNS_PORT``, in front of the
DnsService's answer path. Started by the Gateway in its lifespan (or on the reload that brings the
first DNS route) and stopped with it; reloads change the routes under it, never the sockets.

- UDP: one datagram endpoint; a cached answer is sent from ``datagram_received`` itself.
- TCP (RFC 7766): length-framed queries, several in flight per connection (answered as they are
  ready, each with its own ID), an idle timeout, at most ``MAX_TCP_CLIENTS`` connections and
  ``MAX_TCP_PIPELINE`` queries in flight per connection, so a client cannot hold the gateway's
  memory hostage.
- ``SO_REUSEPORT`` with ``--workers N``: every worker binds the same port and the kernel spreads
  queries over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any, cast

from kairos.dns.service import DnsService, reuse_port_socket

logger = logging.getLogger("kairos.dns")

MAX_TCP_CLIENTS = 1_000
MAX_TCP_PIPELINE = 32
TCP_READ_TIMEOUT = 5.0  # seconds for the rest of a query once its length arrived


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, service: DnsService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass: cast, not isinstance.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if transport is not None:
            try:
                self.service.on_datagram(data, addr, transport)
            except Exception:  # one bad datagram must never stop the listener
                logger.exception("DNS: a UDP query from %s failed", addr[0])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for answers to departed clients: nothing to do


class DnsListener:
    def __init__(
        self, service: DnsService, host: str, port: int, reuse_port: bool, idle_timeout: float
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.idle_timeout = idle_timeout
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    @property
    def running(self) -> dict[str, bool]:
        return {"udp": self._udp is not None, "tcp": self._tcp is not None}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        udp_socket = reuse_port_socket(self.host, self.port, socket.SOCK_DGRAM, self.reuse_port)
        tcp_socket = reuse_port_socket(self.host, self.port, socket.SOCK_STREAM, self.reuse_port)
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self.service), sock=udp_socket
            )
            self._tcp = await asyncio.start_server(self._client, sock=tcp_socket, backlog=512)
        except BaseException:
            udp_socket.close()
            tcp_socket.close()
            await self.stop()
            raise
        logger.info("DNS listener on %s:%d (UDP and TCP)", self.host, self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= MAX_TCP_CLIENTS or task is None:
            writer.close()
            return
        self._clients.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        slots = asyncio.Semaphore(MAX_TCP_PIPELINE)
        queries: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        head = await reader.readexactly(2)
                    (size,) = struct.unpack("!H", head)
                    async with asyncio.timeout(TCP_READ_TIMEOUT):
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                await slots.acquire()
                query = asyncio.get_running_loop().create_task(self._query(data, client_ip, writer, slots))
                queries.add(query)
                query.add_done_callback(queries.discard)
        finally:
            if queries:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_timeout):
                        await asyncio.gather(*queries, return_exceptions=True)
            for query in queries:
                query.cancel()
            writer.close()
            self._clients.discard(task)

    async def _query(
        self, data: bytes, client_ip: str, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
    ) -> None:
        try:
            answer, _ = await self.service.answer(data, client_ip, "tcp")
            if answer is not None and not writer.is_closing():
                writer.write(struct.pack("!H", len(answer)) + answer)
                async with asyncio.timeout(TCP_READ_TIMEOUT):  # a client that does not read is let go
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.close()
        except Exception:
            logger.exception("DNS: a TCP query from %s failed", client_ip)
        finally:
            slots.release()
