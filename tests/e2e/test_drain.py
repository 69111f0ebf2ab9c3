"""Graceful drain on SIGTERM under ``kairos run`` (kairos/server.py, DrainingServer), with real
processes on 127.0.0.1: in-flight requests finish, /ready turns 503 while everything is still served
for KAIROS_DRAIN_DELAY, then new connections are refused, WebSockets get 1001, a request still running
at KAIROS_DRAIN_TIMEOUT is cut, and the process exits 0, with one process and with ``--workers 2``
(whose supervisor exits 0 after its workers drained). The last test restarts three replicas one by one
behind a real nginx under load and loses no request.

Small delays keep the module short: KAIROS_DRAIN_DELAY=1, KAIROS_DRAIN_TIMEOUT=5 (1.5 where the
timeout itself is tested). Every asyncio scenario runs under a bounded ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.processes import ROOT, Server, backend, free_port, route, server_process, stop, wait_for_port

DELAY = 1.0
TIMEOUT = 5.0
MARGIN = 3.0  # process exit, lifespan shutdown and a loaded test machine


def config(upstream: Server) -> dict[str, Any]:
    return {
        "version": 1,
        "routers": [
            route("/who", "/whoami", [backend(upstream)]),
            route("/slow", "/slow", [backend(upstream)]),
            route("/chat/{room}", "/ws/room/{room}", [backend(upstream, scheme="ws")], protocol="websocket"),
        ],
    }


def run_env(config_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "KAIROS_CONFIG_PATH": str(config_path),
            "KAIROS_CONFIG_WATCH": "false",
            "KAIROS_DASHBOARD": "false",
            "KAIROS_ANALYTICS": "false",
            "KAIROS_DRAIN_DELAY": str(DELAY),
            "KAIROS_DRAIN_TIMEOUT": str(TIMEOUT),
        }
    )
    env.update(extra)
    return env


@contextmanager
def kairos(tmp_path: Path, upstream: Server, workers: int = 1, **env: str) -> Iterator[Server]:
    """``python -m kairos run`` on 127.0.0.1, ready (/ready 200); stopped by PID whatever happens."""
    port = free_port()
    config_path = tmp_path / "drain-config.json"
    config_path.write_text(json.dumps(config(upstream)))
    args = ["-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = tmp_path / f"kairos-{port}-{time.monotonic_ns()}.log"
    with server_process(args, port, log, run_env(config_path, **env)) as server:
        wait_ready(server.url, server.process)
        yield server


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kairos exited early with {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url}/ready did not answer 200 within {timeout}s")


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def fresh_get(url: str) -> httpx.Response:
    """A GET on a new connection (a new client each time): what a load balancer's probe does."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        return await client.get(url)


async def wait_exit(process: subprocess.Popen[bytes], within: float) -> int:
    return await asyncio.to_thread(process.wait, within)


async def signal_and_watch_the_drain(server: Server, relay: float = 0.0) -> float:
    """SIGTERM, then what a load balancer sees: /ready 503 at once (within ``relay``, the supervisor's
    reaction time) and /live 200, a new connection still served (keep-alive kept) during the delay,
    and connections refused once it is over. Returns when the signal was sent."""
    signalled = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    while (await fresh_get(f"{server.url}/ready")).status_code != 503:
        assert time.monotonic() - signalled < relay + 0.5, "/ready still 200 after the signal"
        await asyncio.sleep(0.02)
    draining = time.monotonic()  # the drain began before this: its delay ends before draining + DELAY
    ready = await fresh_get(f"{server.url}/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert (await fresh_get(f"{server.url}/live")).status_code == 200
    during = await fresh_get(f"{server.url}/who")  # a new connection, served normally
    assert during.status_code == 200 and during.json()["server"] == "a"
    assert "close" not in during.headers.get("connection", "")  # keep-alive kept
    assert time.monotonic() - draining < DELAY, "the checks above must fit in the delay"
    while True:
        try:
            await fresh_get(f"{server.url}/live")
        except httpx.ConnectError:
            break
        except (httpx.ReadError, httpx.WriteError):
            break  # reset: caught in the kernel's listen backlog as the listener closed (never accepted)
        assert time.monotonic() - draining < DELAY + 1.0, "still accepting connections after the delay"
        await asyncio.sleep(0.05)
    assert time.monotonic() - draining >= DELAY - 0.2, "refused before the delay was over"
    return signalled


async def first_request(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: str) -> bytes:
    """Send a request head on a raw connection; the whole answer, up to the server's close."""
    reader, writer = connection
    writer.write(head.encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


UPGRADE = (
    "GET /chat/late HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_sigterm_drains_in_flight_request_then_refuses_and_exits_0(tmp_path: Path, upstream: Server) -> None:
    """A request in flight at the signal outlives the listener and completes with 200; the drain
    itself as signal_and_watch_the_drain says; then the process exits 0. Two connections accepted
    before the listener closed whose first request only comes after it (the race at the close) are
    not dropped: a GET is served with ``Connection: close``, a WebSocket upgrade gets a 503."""
    request_seconds = 2.0  # still in flight when the listener closes

    async def scenario(server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as client:
            slow = asyncio.create_task(client.get("/slow", params={"delay": request_seconds}))
            late_get = await asyncio.open_connection("127.0.0.1", server.port)
            late_upgrade = await asyncio.open_connection("127.0.0.1", server.port)
            await asyncio.sleep(0.3)  # the request is at the upstream now
            signalled = await signal_and_watch_the_drain(server)
            assert not slow.done(), "the slow request should outlive the listener"
            late = await first_request(late_get, "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert late.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in late.lower(), late
            refused = await first_request(late_upgrade, UPGRADE)
            assert refused.startswith(b"HTTP/1.1 503 "), refused
            answer = await slow
            assert answer.status_code == 200 and answer.json() == {"server": "a", "slow": True}
            bound = max(DELAY, request_seconds) + MARGIN
            assert await wait_exit(server.process, bound) == 0
            assert time.monotonic() - signalled < bound

    with kairos(tmp_path, upstream) as server:
        run(scenario(server))
        output = server.output()
    assert "draining: /ready answers 503" in output, output
    assert "Traceback" not in output, output


def test_workers_drain_and_cut_what_outlives_drain_timeout(tmp_path: Path, upstream: Server) -> None:
    """``--workers 2``: uvicorn's supervisor relays SIGTERM (it looks every 0.5 s) and both workers
    drain. A request that ends within the delay + KAIROS_DRAIN_TIMEOUT completes; one still running
    then is cut (uvicorn's 500, its response had not started), logged in one line, not a traceback;
    the supervisor exits 0 once both workers are done."""
    relay, timeout = 0.5, 1.5

    async def scenario(server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=15, trust_env=False) as client:
            short = asyncio.create_task(client.get("/slow", params={"delay": 2}))
            long = asyncio.create_task(client.get("/slow", params={"delay": 6}))  # cut at ~3 s
            await asyncio.sleep(0.3)
            signalled = await signal_and_watch_the_drain(server, relay)
            answer = await short
            assert answer.status_code == 200 and answer.json() == {"server": "a", "slow": True}
            try:
                cut = await long
            except httpx.TransportError:
                pass  # cut without an answer would do too
            else:
                assert cut.status_code == 500, cut.text
            cut_after = time.monotonic() - signalled
            assert DELAY + timeout - 0.2 <= cut_after < relay + DELAY + timeout + MARGIN, cut_after
            assert await wait_exit(server.process, MARGIN) == 0

    with kairos(tmp_path, upstream, workers=2, KAIROS_DRAIN_TIMEOUT=str(timeout)) as server:
        run(scenario(server))
        output = server.output()
    assert output.count("draining: /ready answers 503") == 2, output
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in output, output
    assert "Traceback" not in output, output
    assert "Stopping parent process" in output, output


def test_proxied_websocket_gets_1001_on_both_sides(tmp_path: Path, upstream: Server) -> None:
    """During the delay the WebSocket keeps working; at the end of it the client gets a close frame
    1001 ("going away") and so does the backend (its last close code)."""

    async def scenario(server: Server) -> None:
        url = f"ws://127.0.0.1:{server.port}/chat/drain"
        async with connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            signalled = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            await asyncio.sleep(DELAY / 2)
            await ws.send("during")
            assert await ws.recv() == "during"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), DELAY + MARGIN)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert time.monotonic() - signalled >= DELAY - 0.1
        assert await wait_exit(server.process, MARGIN) == 0

    with kairos(tmp_path, upstream) as server:
        run(scenario(server))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the backend records the code when its handler ends
        seen = httpx.get(f"{upstream.url}/last-close", timeout=5, trust_env=False).json()
        if seen is not None and seen["code"] == 1001:
            break
        time.sleep(0.05)
    assert seen == {"code": 1001}


# -- rolling restart behind nginx -----------------------------------------------------------------

REPLICAS = 3
CONCURRENCY = 10
MAX_REQUESTS = 30_000  # a bound; the load stops when the restarts are done


def nginx_program() -> str:
    program = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if program is None:
        pytest.fail("nginx is not installed: run `make system-deps` (it installs Debian's nginx)")
    return program


@contextmanager
def nginx(tmp_path: Path, ports: list[int]) -> Iterator[Server]:
    """nginx in the foreground (its master is our child, stopped by PID) balancing over ``ports``.
    nginx open source has no active health checks: a replica that stopped listening is skipped
    through ``proxy_next_upstream error`` (connection refused, or a kept-alive connection closed
    under a request) and marked down for ``fail_timeout``."""
    program = nginx_program()
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;" for p in ports)
    temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};" for kind in ("client_body", "proxy"))
    (prefix / "nginx.conf").write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream kairos {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://kairos;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""
    )
    args = ["-e", str(prefix / "error.log"), "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]
    with server_process(args, port, prefix / "stdout.log", program=program) as server:
        yield server


def start_replica(tmp_path: Path, config_path: Path, port: int) -> subprocess.Popen[bytes]:
    args = ["-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / f"replica-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=run_env(config_path), stdout=out, stderr=subprocess.STDOUT
        )


def test_rolling_restart_behind_nginx_loses_no_request(tmp_path: Path, upstream: Server) -> None:
    """Three replicas behind nginx under continuous load (10 concurrent GETs); each replica in turn
    gets SIGTERM, exits 0 and is replaced on the same port: every request is answered 200."""
    config_path = tmp_path / "replicas.json"
    config_path.write_text(json.dumps(config(upstream)))
    ports = [free_port() for _ in range(REPLICAS)]
    with ExitStack() as cleanup:
        started: list[subprocess.Popen[bytes]] = []

        def stop_all() -> None:  # all at once: each drains for DELAY
            for process in started:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in started:
                stop(process, grace=DELAY + MARGIN)

        cleanup.callback(stop_all)
        replicas = [start_replica(tmp_path, config_path, port) for port in ports]
        started += replicas
        for port, process in zip(ports, replicas, strict=True):
            wait_for_port(port, process)
            wait_ready(f"http://127.0.0.1:{port}", process)
        balancer = cleanup.enter_context(nginx(tmp_path, ports))
        wait_ready(balancer.url, balancer.process)

        def rolling_restart() -> list[float]:
            drains = []
            for index, port in enumerate(ports):
                old = replicas[index]
                began = time.monotonic()
                old.send_signal(signal.SIGTERM)
                assert old.wait(DELAY + TIMEOUT + MARGIN) == 0
                drains.append(time.monotonic() - began)
                new = start_replica(tmp_path, config_path, port)
                started.append(new)
                replicas[index] = new
                wait_for_port(port, new)
                wait_ready(f"http://127.0.0.1:{port}", new)
                time.sleep(0.1)  # some load on the new replica before the next one goes
            return drains

        async def scenario() -> tuple[Counter[str], list[float], float]:
            outcomes: Counter[str] = Counter()
            done = asyncio.Event()
            limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
            async with httpx.AsyncClient(
                base_url=balancer.url, timeout=10, limits=limits, trust_env=False
            ) as client:

                async def load() -> None:
                    while not done.is_set() and sum(outcomes.values()) < MAX_REQUESTS:
                        try:
                            answer = await client.get("/who")
                            outcomes[str(answer.status_code)] += 1
                        except httpx.HTTPError as exc:
                            outcomes[type(exc).__name__] += 1

                began = time.monotonic()
                workers = [asyncio.create_task(load()) for _ in range(CONCURRENCY)]
                await asyncio.sleep(0.3)
                try:
                    drains = await asyncio.to_thread(rolling_restart)
                finally:
                    done.set()
                    await asyncio.gather(*workers)
                return outcomes, drains, time.monotonic() - began

        outcomes, drains, seconds = run(scenario(), timeout=45)
    error_log = (tmp_path / "nginx" / "error.log").read_text(errors="replace")
    assert set(outcomes) == {"200"}, f"{outcomes} in {seconds:.1f}s; nginx said:\n{error_log[-2000:]}"
    assert outcomes["200"] >= 200, outcomes  # the load was real
    print(f"rolling restart: {outcomes['200']} requests in {seconds:.1f}s, drains {drains}")
    assert all(drain < DELAY + MARGIN for drain in drains), drains
