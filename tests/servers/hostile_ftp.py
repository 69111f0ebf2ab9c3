"""A hand-written, hostile FTP server on raw asyncio streams: a test double for the FTP file API.

python -m tests.servers.hostile_ftp --port 2121 --mode pasv-elsewhere --record record.json

It speaks just enough FTP for aioftp's client (USER PASS SYST FEAT OPTS TYPE PWD CWD CDUP SIZE MDTM
MLST EPSV PASV REST MLSD LIST NLST RETR ABOR NOOP QUIT; STOR and the other writes are refused with
550), serves the read-only files of ``FILES`` from one directory ``/``, accepts any user and
password, and misbehaves according to ``--mode``:

- ``pasv-elsewhere``: EPSV is answered ``500`` (not understood) so a client falls back to PASV, and
  PASV advertises ``127.0.0.2`` while the data connection is served on ``127.0.0.1`` (the control
  connection's address) at the advertised port. A trap also listens on 127.0.0.2 at that port (when
  it can be bound: Linux routes all of 127/8 to loopback): a data connection that arrives there is
  recorded, closed at once, and the transfer command is answered ``425``. A client that trusts the
  advertised address fails (with ``425``, or ``ConnectionRefusedError`` where there is no trap); one
  that connects to the control connection's peer is served normally.
- ``cut-transfer``: LIST/MLSD/SIZE are honest, but RETR sends half of the file, closes the data
  connection and answers ``426 Connection closed; transfer aborted``.
- ``login-421``: USER is answered ``421 Service not available, closing control connection`` and the
  control connection is closed.
- ``normal``: no misbehaviour (a baseline for the tests).

``--record FILE`` is rewritten (atomically) after every event: ``{"mode", "control_connections":
[{"address", "peer"}], "commands": ["USER kairos", ...], "data_connections": [{"address", "port",
"peer"}]}``, where ``address`` is the local address the connection came in on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import posixpath
from pathlib import Path
from typing import Any

MODES = ("normal", "pasv-elsewhere", "cut-transfer", "login-421")
ADVERTISED_ELSEWHERE = "127.0.0.2"
# The files served from "/" (tests import them to check what they received).
FILES: dict[str, bytes] = {
    "hello.txt": b"hello from the hostile FTP server\n",
    "big.bin": bytes(range(256)) * 1024,  # 256 KiB
}
MTIME = "20260101120000"  # MDTM/MLSD modification time of every file
LIST_DATE = "Jan 01  2026"  # the same, as ls prints it
DATA_WAIT = 10.0  # seconds a transfer command waits for the client's data connection
IDLE = 120.0  # seconds a control connection may stay silent


class Recorder:
    """What the server saw, as JSON in ``path`` (rewritten after every event)."""

    def __init__(self, path: Path | None, mode: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "mode": mode,
            "control_connections": [],
            "commands": [],
            "data_connections": [],
        }
        self.save()

    def add(self, key: str, item: object) -> None:
        self.data[key].append(item)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=1))
        os.replace(temporary, self.path)  # readers never see a half-written file


class DataChannel:
    """The listener a PASV/EPSV opens: its first connection is the data connection."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.servers: list[asyncio.Server] = []
        self.connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self.port = 0

    async def open(self, trap: bool) -> None:
        """Listen on 127.0.0.1 (port chosen by the kernel) and, with ``trap``, on 127.0.0.2 at the
        same port (a few tries: that port may be taken there)."""
        for _ in range(20):
            server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
            self.servers = [server]
            self.port = server.sockets[0].getsockname()[1]
            if not trap:
                return
            try:
                self.servers.append(
                    await asyncio.start_server(self._accepted, ADVERTISED_ELSEWHERE, self.port)
                )
                return
            except OSError:
                server.close()
        self.servers = self.servers[:1]  # 127.0.0.2 unusable here: no trap, the client is refused

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address, port = writer.get_extra_info("sockname")[:2]
        self.recorder.add(
            "data_connections",
            {"address": address, "port": port, "peer": writer.get_extra_info("peername")[0]},
        )
        if self.connected.done():  # one data connection per PASV/EPSV
            writer.close()
            return
        self.connected.set_result((reader, writer, address))
        self.close_listeners()

    def close_listeners(self) -> None:
        for server in self.servers:
            server.close()

    async def wait(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str] | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self.connected), DATA_WAIT)
        except TimeoutError:
            return None
        finally:
            self.close_listeners()


class Session:
    """One control connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, recorder: Recorder
    ):
        self.reader, self.writer = reader, writer
        self.mode, self.recorder = mode, recorder
        self.cwd = "/"
        self.rest = 0
        self.data: DataChannel | None = None
        self.greeted = False

    async def reply(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.reply("220 Kairos hostile FTP test server ready.")
        while True:
            line = await asyncio.wait_for(self.reader.readline(), IDLE)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not self.greeted:  # counted at the first command: a port probe connects and leaves
                self.greeted = True
                self.recorder.add(
                    "control_connections",
                    {
                        "address": self.writer.get_extra_info("sockname")[0],
                        "peer": self.writer.get_extra_info("peername")[0],
                    },
                )
            self.recorder.add("commands", text)
            verb, _, argument = text.partition(" ")
            if not await self.dispatch(verb.upper(), argument.strip()):
                return

    def resolve(self, argument: str) -> str:
        """``argument`` as an absolute, normalised path (arguments starting with - are ls flags)."""
        words = [word for word in argument.split(" ") if word and not word.startswith("-")]
        path = " ".join(words)
        return posixpath.normpath(posixpath.join(self.cwd, path)) if path else self.cwd

    def file(self, argument: str) -> bytes | None:
        path = self.resolve(argument)
        return FILES.get(path[1:]) if posixpath.dirname(path) == "/" else None

    async def dispatch(self, verb: str, argument: str) -> bool:
        """Answer one command; False closes the control connection."""
        if verb == "USER":
            if self.mode == "login-421":
                await self.reply("421 Service not available, closing control connection")
                return False
            await self.reply("331 Password required.")
        elif verb == "PASS":
            await self.reply("230 Logged in.")
        elif verb == "SYST":
            await self.reply("215 UNIX Type: L8")
        elif verb == "FEAT":
            features = ["PASV", "SIZE", "MDTM", "REST STREAM", "MLST type*;size*;modify*;", "UTF8"]
            if self.mode != "pasv-elsewhere":
                features.insert(0, "EPSV")
            await self.reply("211-Features:\r\n" + "".join(f" {name}\r\n" for name in features) + "211 End")
        elif verb in ("OPTS", "TYPE", "NOOP", "PBSZ", "PROT"):
            await self.reply("200 OK.")
        elif verb == "PWD":
            await self.reply(f'257 "{self.cwd}" is the current directory.')
        elif verb in ("CWD", "CDUP"):
            if self.resolve(argument if verb == "CWD" else "..") == "/":
                await self.reply("250 Directory changed to /.")
            else:
                await self.reply("550 No such directory.")
        elif verb in ("SIZE", "MDTM"):
            content = self.file(argument)
            if content is None:
                await self.reply("550 No such file.")
            else:
                await self.reply(f"213 {len(content) if verb == 'SIZE' else MTIME}")
        elif verb == "MLST":
            path = self.resolve(argument)
            content = self.file(argument)
            if path == "/":
                await self.reply(f"250-Listing /\r\n type=dir;modify={MTIME}; /\r\n250 End.")
            elif content is not None:
                facts = f"type=file;size={len(content)};modify={MTIME};"
                await self.reply(f"250-Listing {path}\r\n {facts} {path}\r\n250 End.")
            else:
                await self.reply("550 No such file or directory.")
        elif verb in ("EPSV", "PASV"):
            await self.passive(verb)
        elif verb == "REST":
            self.rest = int(argument) if argument.isdigit() else 0
            await self.reply(f"350 Restarting at {self.rest}.")
        elif verb in ("MLSD", "LIST", "NLST"):
            if self.resolve(argument) != "/":
                await self.reply("550 No such directory.")
            else:
                await self.transfer(b"".join(listing(verb, name, content) for name, content in FILES.items()))
        elif verb == "RETR":
            content = self.file(argument)
            if content is None:
                await self.reply("550 No such file.")
            else:
                await self.transfer(content[self.rest :], cut=self.mode == "cut-transfer")
            self.rest = 0
        elif verb in ("STOR", "APPE", "STOU", "DELE", "RNFR", "RNTO", "MKD", "RMD", "SITE"):
            await self.reply("550 Permission denied (read-only test server).")
        elif verb == "ABOR":
            await self.reply("226 Nothing to abort.")
        elif verb == "QUIT":
            await self.reply("221 Goodbye.")
            return False
        else:
            await self.reply(f"502 {verb} not implemented.")
        return True

    async def passive(self, verb: str) -> None:
        if verb == "EPSV" and self.mode == "pasv-elsewhere":
            await self.reply("500 EPSV not understood.")
            return
        if self.data is not None:
            self.data.close_listeners()
        self.data = DataChannel(self.recorder)
        elsewhere = verb == "PASV" and self.mode == "pasv-elsewhere"
        await self.data.open(trap=elsewhere)
        port = self.data.port
        if verb == "EPSV":
            await self.reply(f"229 Entering Extended Passive Mode (|||{port}|)")
        else:
            host = (ADVERTISED_ELSEWHERE if elsewhere else "127.0.0.1").replace(".", ",")
            await self.reply(f"227 Entering Passive Mode ({host},{port >> 8},{port & 0xFF})")

    async def transfer(self, payload: bytes, cut: bool = False) -> None:
        """Send ``payload`` on the data connection (half of it when ``cut``) and answer."""
        channel, self.data = self.data, None
        if channel is None:
            await self.reply("425 Use PASV or EPSV first.")
            return
        connection = await channel.wait()
        if connection is None:
            await self.reply("425 Can't open data connection.")
            return
        _, writer, address = connection
        if address == ADVERTISED_ELSEWHERE:  # the client trusted the PASV address: the trap
            writer.close()
            await self.reply("425 Can't open data connection: connected to the advertised address.")
            return
        await self.reply("150 Opening BINARY mode data connection.")
        try:
            writer.write(payload[: len(payload) // 2] if cut else payload)
            await writer.drain()
        except ConnectionError:
            cut = True
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if cut:
            await self.reply("426 Connection closed; transfer aborted.")
        else:
            await self.reply("226 Transfer complete.")


def listing(verb: str, name: str, content: bytes) -> bytes:
    if verb == "MLSD":
        return f"type=file;size={len(content)};modify={MTIME}; {name}\r\n".encode()
    if verb == "NLST":
        return f"{name}\r\n".encode()
    return f"-rw-r--r--   1 owner    group {len(content):>10} {LIST_DATE} {name}\r\n".encode()


async def serve(port: int, mode: str, recorder: Recorder) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(reader, writer, mode, recorder)
        try:
            await session.run()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            if session.data is not None:
                session.data.close_listeners()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--record", type=Path, help="JSON file describing what the server saw")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.mode, Recorder(args.record, args.mode)))


if __name__ == "__main__":
    main()
