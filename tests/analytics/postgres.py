"""A real PostgreSQL server for the tests, on 127.0.0.1, stopped by its PID.

Debian's postgresql 15 binaries (``make system-deps`` installs the package). The tests run as root
and PostgreSQL refuses to: ``initdb`` and ``postgres`` run as the ``postgres`` system user through
``setpriv`` (which execs, so the PID we hold is the postmaster's own, not a wrapper's). The
cluster lives in a directory of its own under /tmp, not under pytest's tmp_path: pytest makes
its base directory 0700 for root, which the postgres user cannot enter. Trust authentication,
listening on 127.0.0.1 only, no fsync (a test cluster: the data must outlive a killed server,
which the OS page cache ensures, not a power cut).

``Postgres.kill()`` (immediate shutdown: like a crash, recovered at the next start) and
``start()`` again on the same data directory and port are what the outage tests need.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
DATABASE = "kairos"
_AS_POSTGRES = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"]


def available() -> bool:
    return (BIN / "postgres").exists() and shutil.which("setpriv") is not None


@dataclass
class Postgres:
    """One cluster: ``start()``/``stop()``/``kill()`` any number of times on one port."""

    root: Path  # owned by the postgres user: data/ and the Unix socket directory
    port: int
    log: Path
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def initdb(self) -> None:
        command = [*_AS_POSTGRES, str(BIN / "initdb"), "-D", str(self.data), "-U", USER]
        command += ["--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"]
        subprocess.run(command, cwd=self.root, check=True, capture_output=True, timeout=60)

    def start(self, timeout: float = 15.0) -> None:
        """Start the postmaster (as its user, in the foreground of its own PID) and wait until it
        accepts connections."""
        assert not self.running
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        command = [*_AS_POSTGRES, str(BIN / "postgres"), "-D", str(self.data)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.output()}")
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-q"],
                capture_output=True,
                timeout=10,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"postgres did not accept connections within {timeout}s:\n{self.output()}")

    def createdb(self, name: str = DATABASE) -> str:
        """A new database (a client command, run as root: trust authentication); its URL."""
        command = [str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        return self.database_url(name)

    def stop(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGINT to the postmaster: sessions are ended, data is checkpointed)."""
        self._signal(signal.SIGINT, grace)

    def kill(self, grace: float = 10.0) -> None:
        """Immediate shutdown (SIGQUIT): the postmaster and its backends exit at once, like a crash;
        the next start replays the WAL."""
        self._signal(signal.SIGQUIT, grace)

    def _signal(self, signum: signal.Signals, grace: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            self.process = None
            return
        os.kill(process.pid, signum)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()  # the postmaster alone: its backends exit when it is gone
            process.wait(5)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def postgres_server(tmp_path: Path, settings: dict[str, str] | None = None) -> Iterator[Postgres]:
    """A fresh cluster on a free port of 127.0.0.1 with the database ``kairos`` (``.url``); its log
    in ``tmp_path``. Stopped by PID and its directory removed whatever happens."""
    if not available():
        raise RuntimeError(f"PostgreSQL 15 is not installed in {BIN}: run `make system-deps`")
    root = Path(tempfile.mkdtemp(prefix="kairos-pg-"))
    shutil.chown(root, USER, USER)
    port = free_port()
    server = Postgres(root, port, tmp_path / f"postgres-{port}.log", dict(settings or {}))
    try:
        server.initdb()
        server.start()
        server.createdb()
        yield server
    except Exception:
        sys.stderr.write(server.output())
        raise
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
