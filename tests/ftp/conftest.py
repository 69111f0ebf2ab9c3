"""Real FTP servers for the FTP file API tests: pyftpdlib plain and explicit FTPS (a trustme CA) on a
module's ``ftp_root``, and aioftp's own server (``aioftp``, a second implementation); the hostile
servers are started per test with ``hostile_ftp_server``."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.processes import Server, free_port, ftp_server, server_process

FTP_USER = "kairos"
FTP_PASSWORD = "kairos-ftp-secret"
READONLY_USER = "reader"
READONLY_PASSWORD = "reader-ftp-secret"
HELLO = b"hello over FTP\n"
README = b"# Readme\n\nA file in a subdirectory.\n"


@dataclass(frozen=True)
class FtpServer:
    """A running FTP server and how to log in to it. ``ca_file`` (FTPS only) is the PEM of the CA
    that signed its certificate, for a route's ``tls_ca_file``."""

    server: Server
    root: Path
    user: str = FTP_USER
    password: str = FTP_PASSWORD
    readonly_user: str = READONLY_USER
    readonly_password: str = READONLY_PASSWORD
    ca_file: Path | None = None
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the server's CA (FTPS only)."""
        if self.ca_file is None:
            raise ValueError("a plain FTP server has no CA")
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def ftp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hello.txt``, ``data.bin`` (1 MiB of random bytes), ``docs/readme.md`` and an empty ``empty/``.
    Shared by the module's servers: a test that writes uses names of its own and cleans up."""
    root = tmp_path_factory.mktemp("ftp-root")
    (root / "hello.txt").write_bytes(HELLO)
    (root / "data.bin").write_bytes(os.urandom(1 << 20))
    (root / "docs").mkdir()
    (root / "docs" / "readme.md").write_bytes(README)
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def ftp(module_tmp: Path, ftp_root: Path) -> Iterator[FtpServer]:
    """A plain FTP server (pyftpdlib) on ``ftp_root``, with a full and a read-only user."""
    readonly = (READONLY_USER, READONLY_PASSWORD)
    with ftp_server(module_tmp, ftp_root, user=FTP_USER, password=FTP_PASSWORD, readonly=readonly) as server:
        yield FtpServer(server, ftp_root)


@pytest.fixture(scope="module")
def ftps(module_tmp: Path, ftp_root: Path) -> Iterator[FtpServer]:
    """An explicit FTPS server (AUTH TLS; TLS required on control and data) on ``ftp_root``, its
    certificate (for 127.0.0.1 and localhost) from a trustme CA whose PEM is ``ca_file``."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert, key = module_tmp / "ca.pem", module_tmp / "ftps.pem", module_tmp / "ftps.key"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for pem in issued.cert_chain_pems[1:]:  # intermediates, if any, after the leaf
        pem.write_to_path(str(cert), append=True)
    readonly = (READONLY_USER, READONLY_PASSWORD)
    with ftp_server(
        module_tmp, ftp_root, user=FTP_USER, password=FTP_PASSWORD, readonly=readonly, tls=(cert, key)
    ) as server:
        yield FtpServer(server, ftp_root, ca_file=ca_file)


@contextmanager
def aioftp_server(
    tmp_path: Path, root: Path, *, user: str, password: str, readonly: tuple[str, str] | None = None
) -> Iterator[Server]:
    """The second FTP server implementation (aioftp's ``aioftp.Server``, tests/servers/aioftp_server.py)
    serving ``root`` as a real process: ``user`` may do everything, ``readonly`` = (user, password)
    only list and download. Stopped by PID."""
    port = free_port()
    args = ["-m", "tests.servers.aioftp_server", "--port", str(port), "--root", str(root)]
    args += ["--user", user, "--password", password]
    if readonly is not None:
        args += ["--readonly-user", readonly[0], "--readonly-password", readonly[1]]
    with server_process(args, port, tmp_path / f"aioftp-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def aioftp_ftp(module_tmp: Path, ftp_root: Path) -> Iterator[FtpServer]:
    """aioftp's server on ``ftp_root``, with a full and a read-only user."""
    readonly = (READONLY_USER, READONLY_PASSWORD)
    with aioftp_server(
        module_tmp, ftp_root, user=FTP_USER, password=FTP_PASSWORD, readonly=readonly
    ) as server:
        yield FtpServer(server, ftp_root)
