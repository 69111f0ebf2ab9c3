"""A second real FTP server implementation (aioftp's own ``aioftp.Server``) on 127.0.0.1, for the FTP
file API tests (tests/ftp/test_second_server.py); pyftpdlib (tests/servers/ftp.py) is the first.

python -m tests.servers.aioftp_server --port 2121 --root DIR --user kairos --password secret \
    [--readonly-user reader --readonly-password secret2]

- Plain FTP only. ``--user`` may read and write everywhere under ``--root`` (aioftp has two
  permissions per path: readable and writable), ``--readonly-user`` only read (a write is refused
  with ``550 permission denied``). Anonymous login is off: aioftp answers 530 for unknown users.
- Passive data ports are ephemeral: aioftp opens one listening socket per control connection on its
  first EPSV/PASV and keeps it for that connection's later transfers.
- Where it differs from pyftpdlib (what the second-server tests are for): ``RNTO`` onto an existing
  name is refused (``550 path already exists``) instead of replacing it; ``MKD`` creates missing
  parents by itself; ``MLSD`` ends with ``200``, not ``226``; ``MLST``/``MLSD`` facts are only
  ``Size``, ``Create``, ``Modify``, ``Type`` (no ``perm``/``unix.mode``); no ``NOOP``, ``SIZE``,
  ``MDTM`` or ``FEAT`` (``502 not implemented``); a failed login is answered at once.
- SIGTERM and SIGINT close the server (its control and data connections) and end the process.
- Logs to stderr at warning level.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import aioftp


def users(args: argparse.Namespace) -> list[aioftp.User]:
    root = Path(args.root).resolve()
    found = [
        aioftp.User(
            args.user,
            args.password,
            base_path=root,
            permissions=[aioftp.Permission("/", readable=True, writable=True)],
        )
    ]
    if args.readonly_user is not None:
        found.append(
            aioftp.User(
                args.readonly_user,
                args.readonly_password,
                base_path=root,
                permissions=[aioftp.Permission("/", readable=True, writable=False)],
            )
        )
    return found


async def serve(args: argparse.Namespace) -> None:
    server = aioftp.Server(
        users(args),
        socket_timeout=30,
        idle_timeout=120,  # the gateway keeps idle control connections for 30 s at most
        wait_future_timeout=5,  # for the client's data connection after RETR/STOR/LIST
        path_timeout=30,
        block_size=64 * 1024,
        welcome_message="Kairos test aioftp server ready.",
    )
    await server.start("127.0.0.1", args.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stopping.set)
    try:
        await stopping.wait()
    finally:
        await asyncio.wait_for(server.close(), 5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="the directory every user sees as /")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--readonly-user")
    parser.add_argument("--readonly-password")
    args = parser.parse_args()
    if (args.readonly_user is None) != (args.readonly_password is None):
        parser.error("--readonly-user and --readonly-password go together")
    logging.basicConfig(level=logging.WARNING)  # stderr
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
