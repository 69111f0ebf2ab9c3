"""Start and stop real server processes on 127.0.0.1 for the integration tests.

Every process is started with its own PID recorded and stopped by that PID (terminate, then kill
after a grace period), whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL = _ephemeral_range()
_PICKER = random.Random()
_HANDED_OUT: set[int] = set()


def _worker_port_range() -> tuple[int, int]:
    """The slice of ports below the ephemeral range this pytest process may hand out.

    Under pytest-xdist (`make test` runs `-n 2`) every worker is its own process with its own
    `_HANDED_OUT`; giving each worker a disjoint slice means two workers can never pick the same
    port between the check and the server's bind."""
    low, high = 10000, min(_EPHEMERAL[0], 65536) - 1
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... or unset
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return low, high
    index = int(worker[2:]) % count
    size = (high - low + 1) // count
    return low + index * size, low + (index + 1) * size - 1


def free_port() -> int:
    """A port nothing listens on now, for a server a test is about to start.

    Chosen below the kernel's ephemeral range: a port the kernel handed out (bind to 0) can be taken
    again as the local port of any outgoing connection before the server binds it, which once failed
    a CI run with "address already in use". Ports below the range are only ever taken by a bind, and
    this process never hands out the same one twice."""
    low, high = _worker_port_range()
    for _ in range(200):
        port = _PICKER.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # no luck below the range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait for a server to accept on ``port``: 30 s by default, as a gateway that imports litellm
    takes up to ~20 s to start on two cores busy with the rest of the suite (xdist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def server_process(
    args: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    wait: bool = True,
    program: str = sys.executable,
) -> Iterator[Server]:
    """Run ``<program> <args>`` (Python by default) as a server on ``port``; its output goes to
    ``log`` (shown when the test fails). Stopped by PID whatever happens."""
    with log.open("wb") as out:
        process = subprocess.Popen([program, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    try:
        if wait:
            wait_for_port(port, process)
        yield server
    except Exception:
        sys.stderr.write(server.output())
        raise
    finally:
        stop(process)


@contextmanager
def upstream_server(tmp_path: Path, name: str = "upstream", port: int | None = None) -> Iterator[Server]:
    port = port or free_port()
    args = ["-m", "tests.servers.upstream", "--port", str(port), "--name", name]
    with server_process(args, port, tmp_path / f"upstream-{name}-{port}.log") as server:
        yield server


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[Server]:
    """A real redis-server on 127.0.0.1 (no persistence); installed by `make test` / `.ci/run`."""
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it with apt-get)")
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with server_process(args, port, tmp_path / f"redis-{port}.log", program=program) as server:
        yield server


@dataclass
class RedisProcess:
    """A redis-server a test kills and starts again on the same port (no persistence: it comes back
    empty), stopped by PID like every other server."""

    port: int
    home: Path
    starts: int = 0
    server: Server | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it with apt-get)")
        self.starts += 1
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = self.home / f"redis-{self.port}-{self.starts}.log"
        self._stack = ExitStack()
        self.server = self._stack.enter_context(server_process(args, self.port, log, program=program))

    def kill(self) -> None:
        """SIGKILL by PID, as a crash ends it (then reaped by the helper's stop)."""
        assert self.server is not None
        self.server.process.kill()
        self._stack.close()
        self.server = None

    def close(self) -> None:
        self._stack.close()


def backend(server: Server | int, weight: int = 1, scheme: str = "http", **extra: Any) -> dict[str, Any]:
    port = server.port if isinstance(server, Server) else server
    return {"host": f"{scheme}://127.0.0.1", "port": port, "weight": weight, **extra}


def route(
    external: str,
    internal: str,
    backends: list[dict[str, Any]],
    methods: tuple[str, ...] = ("GET",),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "external_path": external,
        "internal_path": internal,
        "methods": list(methods),
        "backends": backends,
        **extra,
    }


@contextmanager
def gateway_server(
    tmp_path: Path,
    config: dict[str, Any] | None,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    wait: bool = True,
) -> Iterator[Server]:
    """The real gateway under uvicorn (uvloop + httptools), reading ``config`` from a file."""
    port = free_port()
    config_path = tmp_path / f"config-{port}.json"
    if config is not None:
        config_path.write_text(json.dumps(config))
    environment = {**os.environ, "KAIROS_CONFIG_PATH": str(config_path), **(env or {})}
    command = [
        "-m",
        "uvicorn",
        "kairos.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-proxy-headers",
        *args,
    ]
    with server_process(command, port, tmp_path / f"gateway-{port}.log", environment, wait) as server:
        if wait:
            httpx.get(f"{server.url}/ready", timeout=5).raise_for_status()
        yield server


@contextmanager
def kairos_run(
    tmp_path: Path, config: dict[str, Any] | None, *, env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[Server]:
    """The real gateway started exactly as an operator starts it: ``python -m kairos run`` (the
    production server settings of kairos/cli/serve.py, the connection guard included), on 127.0.0.1."""
    port = free_port()
    config_path = tmp_path / f"config-{port}.json"
    if config is not None:
        config_path.write_text(json.dumps(config))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    environment.update(
        {
            "KAIROS_CONFIG_PATH": str(config_path),
            "PYTHONPATH": str(ROOT),
            # No drain delay when a test stops the gateway (the production default keeps serving for
            # 5 s after SIGTERM so a load balancer notices); tests of the drain set their own.
            "KAIROS_DRAIN_DELAY": "0",
            **(env or {}),
        }
    )
    command = ["-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, port, tmp_path / f"kairos-run-{port}.log", environment, wait) as server:
        if wait:
            httpx.get(f"{server.url}/ready", timeout=5).raise_for_status()
        yield server


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


@contextmanager
def ftp_server(
    tmp_path: Path,
    root: Path,
    *,
    user: str = "kairos",
    password: str = "kairos-ftp-secret",
    readonly: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Server]:
    """A real FTP server (pyftpdlib, tests/servers/ftp.py) serving ``root``: ``user`` may do
    everything, ``readonly`` = (user, password) only list and download. ``tls`` = (certificate chain,
    key) makes it explicit FTPS, TLS required on the control and data channels."""
    port = free_port()
    args = ["-m", "tests.servers.ftp", "--port", str(port), "--root", str(root)]
    args += ["--user", user, "--password", password]
    if readonly is not None:
        args += ["--readonly-user", readonly[0], "--readonly-password", readonly[1]]
    if tls is not None:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    name = "ftps" if tls is not None else "ftp"
    with server_process(args, port, tmp_path / f"{name}-{port}.log") as server:
        yield server


@contextmanager
def hostile_ftp_server(tmp_path: Path, mode: str, record: Path | None = None) -> Iterator[Server]:
    """tests/servers/hostile_ftp.py: an FTP server that misbehaves as ``mode`` says
    (``pasv-elsewhere``, ``cut-transfer``, ``login-421``, ``normal``); what it saw goes to ``record``
    (JSON, rewritten after every event)."""
    port = free_port()
    args = ["-m", "tests.servers.hostile_ftp", "--port", str(port), "--mode", mode]
    if record is not None:
        args += ["--record", str(record)]
    with server_process(args, port, tmp_path / f"hostile-ftp-{mode}-{port}.log") as server:
        yield server
