"""The upstream and the systems under test (SUTs): one dataclass each, all started the same way.

Every SUT is one process (plus nginx's worker) pinned to the SUT CPU, so "requests per second" is
"requests per second per core" and the CPU time read from /proc is the whole cost of a request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import children, cpu_seconds, free_port, http_get, pinned, start, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kairos", "admin")  # what snapshot_kairos copies: the gateway imports both
BODIES = {"small": 100, "16k": 16 * 1024}
"""Upstream paths and their body sizes; each SUT is checked to return exactly these bytes."""


@dataclass
class Running:
    """A started SUT: where to send load and which PIDs to charge CPU time to."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes] | None = None
    workers: list[tuple[int, int]] = field(default_factory=list)  # (pid, start time) of nginx workers
    tmpdir: Path | None = None

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        return [self.process.pid, *(pid for pid, _ in self.workers)]

    def cpu(self) -> float | None:
        """CPU seconds used so far by the SUT's processes; None for ``direct`` (nothing in between)."""
        return cpu_seconds(self.pids()) if self.process is not None else None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, self.workers)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


# -- nginx -----------------------------------------------------------------------------------------


def nginx_conf(prefix: Path, port: int, server_body: str, http_extra: str = "", workers: int = 1) -> str:
    """A self-contained nginx.conf: everything (pid, logs, temp files) under ``prefix``; ``workers``
    worker processes (bench/workers.py runs 2), then with ``reuseport``: each worker gets its own
    listening socket and the kernel spreads connections over them; without it, wrk's 50 connections
    opened at once all went to the worker that woke first (measured: 100%/0% of the CPU time)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read files in a 0700 tmpdir
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
{temp}
{http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=1024{" reuseport" if workers > 1 else ""};
{server_body}
    }}
}}
"""


def start_nginx(name: str, prefix: Path, cpu: int, server_body: str, http_extra: str = "") -> Running:
    """Run nginx in the foreground (``daemon off``) so its master is our child with a known PID."""
    port = free_port()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, port, server_body, http_extra))
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "nginx"
    command = [
        nginx,
        "-e",
        str(prefix / "error.log"),
        "-p",
        str(prefix),
        "-c",
        "nginx.conf",
        "-g",
        "daemon off;",
    ]
    process = start(pinned(cpu, command), prefix / "stdout.log")
    running = Running(name, f"http://127.0.0.1:{port}", process, tmpdir=prefix)
    try:
        wait_ready(running.base_url + "/small", process)
        running.workers = children(process.pid)
    except BaseException:
        log = (prefix / "error.log").read_text(errors="replace") if (prefix / "error.log").exists() else ""
        running.stop()
        raise RuntimeError(f"nginx {name} did not start: {log.strip()[-300:]}") from None
    return running


def start_upstream(cpu: int) -> Running:
    """The origin server: nginx serving a 100-byte and a 16 KiB static file with keep-alive."""
    prefix = Path(tempfile.mkdtemp(prefix="kairos-bench-upstream-"))
    (prefix / "www").mkdir()
    for path, size in BODIES.items():
        (prefix / "www" / path).write_bytes(b"x" * size)
    body = f"        location / {{ root {prefix}/www; }}"
    return start_nginx("upstream", prefix, cpu, body)


# -- systems under test ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every SUT needs to start: the upstream URL, its CPU, where logs go, and ``code``: the
    directory holding the kairos snapshot that Python SUTs import (see ``snapshot_kairos``)."""

    upstream: str
    cpu: int
    logs: Path
    code: Path


@dataclass(frozen=True)
class Sut:
    """A system under test. ``start`` returns it running and verified, or raises."""

    name: str
    description: str

    def start(self, ctx: Context) -> Running:
        raise NotImplementedError


@dataclass(frozen=True)
class Direct(Sut):
    """No proxy: wrk against the upstream itself. The floor every proxy's latency is compared to."""

    def start(self, ctx: Context) -> Running:
        return Running(self.name, ctx.upstream)


@dataclass(frozen=True)
class UvicornApp(Sut):
    """An ASGI app under uvicorn (uvloop + httptools, one worker, no access log), run from the kairos
    snapshot directory so that is what it imports. Kairos itself (``kairos_run``) is started with
    ``python -m kairos run``: the production server settings, connection guard included."""

    app: str
    app_dir: str | None = None
    ready_path: str = "/small"
    kairos_config: bool = False
    extra_env: tuple[tuple[str, str], ...] = ()
    kairos_run: bool = False

    def start(self, ctx: Context) -> Running:
        tmpdir = Path(tempfile.mkdtemp(prefix=f"kairos-bench-{self.name}-"))
        env = {
            **os.environ,
            "BENCH_UPSTREAM": ctx.upstream,
            "KAIROS_LOG_LEVEL": "warning",
            **dict(self.extra_env),
        }
        env["PYTHONPATH"] = str(ctx.code)
        if self.kairos_config:
            config = tmpdir / "config.json"
            config.write_text(json.dumps(kairos_config(int(ctx.upstream.rsplit(":", 1)[1])), indent=2))
            env["KAIROS_CONFIG_PATH"] = str(config)
        port = free_port()
        if self.kairos_run:
            command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
        else:
            command = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(port)]
            command += [
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        if self.app_dir:
            command += ["--app-dir", str(ROOT / self.app_dir)]
        log = ctx.logs / f"{self.name}.log"
        process = start(pinned(ctx.cpu, command), log, env, cwd=ctx.code)
        running = Running(self.name, f"http://127.0.0.1:{port}", process, tmpdir=tmpdir)
        try:
            wait_ready(running.base_url + self.ready_path, process)
        except BaseException as exc:
            running.stop()
            raise RuntimeError(f"{exc}; see {log}") from None
        return running


@dataclass(frozen=True)
class NginxProxy(Sut):
    """nginx as a reverse proxy with upstream keep-alive: what a compiled proxy costs per request."""

    def start(self, ctx: Context) -> Running:
        prefix = Path(tempfile.mkdtemp(prefix="kairos-bench-nginx-proxy-"))
        origin = ctx.upstream.removeprefix("http://")
        pool = f"    upstream origin {{ server {origin}; keepalive 64; keepalive_requests 1000000; }}"
        body = """        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
        return start_nginx(self.name, prefix, ctx.cpu, body, pool)


def snapshot_kairos(dest: Path, attempts: int = 6, pause: float = 5.0) -> str:
    """Copy the kairos and admin (the dashboard the gateway mounts) packages to ``dest`` once, so
    every round measures the same code even while other people edit the working tree; ``python -m
    uvicorn`` run with ``cwd=dest`` imports this copy (the editable install's finder comes after
    sys.path). A copy taken mid-edit may not import, so retry a bounded number of times. Returns a
    description for the report."""
    for attempt in range(1, attempts + 1):
        stamp = time.strftime("%H:%M:%S")
        for package in PACKAGES:
            shutil.rmtree(dest / package, ignore_errors=True)
            shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run(
            [sys.executable, "-c", "import kairos.app, admin.app"],
            cwd=dest,
            env={**os.environ, "PYTHONPATH": str(dest), "KAIROS_CONFIG_PATH": str(dest / "none.json")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check.returncode == 0:
            return f"working tree copied at {stamp}"
        error = (check.stderr.strip().splitlines() or ["?"])[-1]
        if attempt < attempts:
            time.sleep(pause)
    return f"working tree copied at {stamp}; it does NOT import ({error})"


def kairos_config(upstream_port: int) -> dict[str, object]:
    """A kairos-rs format config.json with one GET route per upstream body."""
    backend = {"host": "http://127.0.0.1", "port": upstream_port, "weight": 1}
    routes = [
        {"external_path": f"/{path}", "internal_path": f"/{path}", "methods": ["GET"], "backends": [backend]}
        for path in BODIES
    ]
    return {"version": 1, "routers": routes}


def verify(running: Running) -> None:
    """Each body must come back whole with 200: a 404 answered fast would look like a fast proxy."""
    for path, size in BODIES.items():
        status, body = http_get(running.base_url + "/" + path)
        if status != 200 or len(body) != size:
            raise RuntimeError(f"GET /{path} gave {status} with {len(body)} bytes (expected 200, {size})")


SUTS: tuple[Sut, ...] = (
    Direct("direct", "wrk straight at the upstream nginx (no proxy)"),
    UvicornApp(
        "kairos",
        "Kairos gateway (kairos.app:app), default engine",
        "kairos.app:app",
        ready_path="/ready",
        kairos_config=True,
        kairos_run=True,
    ),
    UvicornApp(
        "kairos-aiohttp",
        "Kairos gateway with KAIROS_UPSTREAM_ENGINE=aiohttp",
        "kairos.app:app",
        ready_path="/ready",
        kairos_config=True,
        extra_env=(("KAIROS_UPSTREAM_ENGINE", "aiohttp"),),
        kairos_run=True,
    ),
    UvicornApp(
        "bare-aiohttp", "bench/bare_proxy.py: minimal ASGI + aiohttp proxy", "bare_proxy:app", "bench"
    ),
    UvicornApp(
        "asgiproxy", "bench/asgiproxy_app.py: asgiproxy 0.2 simple proxy", "asgiproxy_app:app", "bench"
    ),
    NginxProxy("nginx-proxy", "nginx proxy_pass with upstream keepalive"),
    UvicornApp(
        "asgi-floor",
        "bench/asgi_floor.py: no proxy, the ASGI app answers the bodies itself (uvicorn's own cost)",
        "asgi_floor:app",
        "bench",
    ),
)
