"""Logged-in FTP control connections, kept and reused per server and user (aioftp underneath).

Logging in costs three round trips (banner, USER, PASS) plus AUTH TLS, PBSZ and PROT for FTPS;
a gateway that logged in for every request would spend most of a small download on it. So
each (server, TLS, user) keeps up to ``max_idle`` idle connections for ``idle_seconds``; one
idle longer than ``probe_after`` is probed with ``NOOP`` before reuse, and a connection that
failed, was aborted mid-transfer or is in any doubt is closed, never returned. At most
``max_per_key`` connections per (server, user) are open at once (FTP servers cap them per user,
and 421 is what a client that opens too many gets); further requests wait for one.

Security (a hostile server is in the threat model): the data connection always goes to the
control connection's peer. EPSV is tried first (no address in its reply); a PASV reply's address
is ignored (``trust_server_pasv_ipv4_address=False``; the CVE-2021-4189 class, where a server sends
the client to scan another host). Command lines carry no CR/LF/NUL: kairos/ftp/paths.py refuses
such names first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from asyncio import sslproto
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aioftp
from aioftp.common import SSLSessionBoundContext

logger = logging.getLogger("kairos.ftp")

PROBE_ANSWERS = ("2xx", "500", "502")
"""Answers to the ``NOOP`` probe that prove an idle connection alive and in step. A server without
``NOOP`` (aioftp's: ``502 'noop' not implemented``) answers the probe too: taking that for a dead
connection would log in again for every request after ``probe_after`` idle seconds. A 4xx (421:
the server is closing it) or a 530 (the login expired) still closes the connection."""


@dataclass(frozen=True, slots=True)
class FtpTarget:
    """Where to log in and as whom. ``password`` is compared, never logged (``repr`` hides it)."""

    host: str
    port: int
    tls: bool
    user: str
    password: str = field(repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    tls_settings: tuple[str | None, bool] = (None, True)  # (tls_ca_file, tls_verify)

    @property
    def key(self) -> tuple[str, int, bool, str, str, tuple[str | None, bool]]:
        """Connections are shared only by requests that would have made the same one: a
        connection verified against one route's CA is never lent to a route with another."""
        digest = hashlib.sha256(self.password.encode()).hexdigest()[:16]
        return (self.host, self.port, self.tls, self.user, digest, self.tls_settings)


class _Client(aioftp.Client):
    """aioftp's client with TLS data connections run by CPython's own ``SSLProtocol``.

    uvloop 0.2x (the loop ``kairos run`` uses) drops the tail of a TLS stream that the peer closes
    while the reader is paused by flow control: an FTPS download through the gateway lost its last
    quarter and a large listing lost entries, silently (uvloop PR #661 is about it, unmerged).
    asyncio's SSLProtocol is loop-agnostic: layered on uvloop's plain TCP transport it keeps the
    data, at the cost of TLS done in Python for FTPS data channels only."""

    async def _open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        stream = self._stream
        if stream is None:
            return await super()._open_connection(host, port)
        ssl_object = stream.writer.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return await super()._open_connection(host, port)
        context = SSLSessionBoundContext(
            ssl.PROTOCOL_TLS_CLIENT, context=ssl_object.context, session=ssl_object.session
        )
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        app = asyncio.StreamReaderProtocol(reader, loop=loop)
        waiter: asyncio.Future[None] = loop.create_future()
        tls = sslproto.SSLProtocol(
            loop,
            app,
            context,  # an SSLContext subclass bound to the control session, as aioftp does
            waiter,
            server_side=False,
            server_hostname=self.server_host,
        )
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: tls, host, port), self.connection_timeout
        )
        try:
            await asyncio.wait_for(waiter, self.connection_timeout)
        except BaseException:
            transport.close()
            raise
        writer = asyncio.StreamWriter(tls._app_transport, app, reader, loop)
        return reader, writer


@dataclass(slots=True)
class _Idle:
    client: aioftp.Client
    since: float


class FtpPool:
    """Connections by target. ``session()`` lends one logged-in client for one operation."""

    def __init__(
        self,
        connect_timeout: float = 5.0,
        operation_timeout: float = 30.0,
        max_idle: int = 4,
        idle_seconds: float = 30.0,
        probe_after: float = 5.0,
        max_per_key: int = 16,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.probe_after = probe_after
        self.max_per_key = max_per_key
        self._idle: dict[tuple[str, int, bool, str, str, tuple[str | None, bool]], list[_Idle]] = {}
        self._slots: dict[tuple[str, int, bool, str, str, tuple[str | None, bool]], asyncio.Semaphore] = {}
        self.logins = 0  # connections opened and logged in (tests, metrics)

    @contextlib.asynccontextmanager
    async def session(self, target: FtpTarget) -> AsyncIterator[Lease]:
        """A logged-in client for one operation. Mark the lease ``broken`` when the connection
        must not be reused (an aborted transfer); an exception marks it too."""
        slots = self._slots.setdefault(target.key, asyncio.Semaphore(self.max_per_key))
        async with slots:
            client = await self._take(target)
            lease = Lease(client)
            try:
                yield lease
            except BaseException:
                lease.broken = True
                raise
            finally:
                if lease.broken:
                    _close(client)
                else:
                    self._give_back(target, client)

    async def _take(self, target: FtpTarget) -> aioftp.Client:
        idle = self._idle.get(target.key, [])
        now = time.monotonic()
        while idle:
            kept = idle.pop()
            if now - kept.since > self.idle_seconds:
                _close(kept.client)
                continue
            if now - kept.since > self.probe_after:
                try:
                    await asyncio.wait_for(kept.client.command("NOOP", PROBE_ANSWERS), self.connect_timeout)
                except (aioftp.AIOFTPException, OSError, TimeoutError):
                    _close(kept.client)
                    continue
            return kept.client
        return await self._login(target)

    async def _login(self, target: FtpTarget) -> aioftp.Client:
        client = _Client(
            socket_timeout=self.operation_timeout,
            connection_timeout=self.connect_timeout,
            path_timeout=self.operation_timeout,
            passive_commands=("epsv", "pasv"),
            trust_server_pasv_ipv4_address=False,
        )
        try:
            await asyncio.wait_for(client.connect(target.host, target.port), self.connect_timeout)
            if target.tls:
                await client.upgrade_to_tls(target.ssl_context or ssl.create_default_context())
            await client.login(target.user, target.password)
        except BaseException:
            _close(client)
            raise
        self.logins += 1
        return client

    def _give_back(self, target: FtpTarget, client: aioftp.Client) -> None:
        idle = self._idle.setdefault(target.key, [])
        if len(idle) >= self.max_idle:
            _close(client)
            return
        idle.append(_Idle(client, time.monotonic()))

    def close(self) -> None:
        for idle in self._idle.values():
            for kept in idle:
                _close(kept.client)
        self._idle.clear()


@dataclass(slots=True)
class Lease:
    client: aioftp.Client
    broken: bool = False


def _close(client: aioftp.Client) -> None:
    with contextlib.suppress(Exception):
        client.close()
