"""What one rate-limit decision costs on each storage backend, for docs/rate-limits.md ("Storage
backends"): Kairos's own memory store and Redis Lua script, and the ``limits`` library's storages
through kairos/ratelimit/limits_store.py (its memory, Redis and memcached storages).

Each decision is the gateway's own call, ``RateLimiter.check`` (store, headers and all), for a PerIP
limit far above the load (every decision takes the counting path, as an admitted request does) over
1,000 client addresses, on uvloop as ``kairos run`` uses. Per backend and window type it reports:

- **wall µs**: decisions made one after another, so the time a request waits (a round trip or more
  for a server);
- **gateway CPU µs**: this process's CPU time per decision: what the decision costs the gateway;
- **server CPU µs**: redis-server's or memcached's CPU time per decision (from /proc).

A real redis-server and memcached are started on 127.0.0.1 (no persistence), pinned to one CPU, the
client on the other; both are stopped by their PIDs. Every phase is bounded by a count
(``--decisions``) and by ``PHASE_SECONDS``.

Run: ``.venv/bin/python bench/limits_backends.py [--decisions N] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import cpu_seconds, cpus, free_port, pinned, start, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the kairos package of this checkout (its stores are what is measured)

from kairos.config.ratelimit import RateLimitConfig  # noqa: E402
from kairos.ratelimit.limiter import RateLimiter  # noqa: E402

DECISIONS = 5_000  # per phase
WARMUP = 200  # decisions before each phase: connections opened, scripts loaded, imports done
PHASE_SECONDS = 20.0  # a phase stops there even if its count is not reached
CLIENTS = 1_000  # distinct client addresses (rate-limit keys)
WINDOW_TYPES = ("FixedWindow", "SlidingWindow")


@dataclass(frozen=True, slots=True)
class Run:
    backend: str
    storage_uri: str
    window_type: str
    decisions: int
    wall_us: float
    gateway_cpu_us: float
    server_cpu_us: float | None  # None: no server (memory)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {seconds:.0f}s")


async def phase(
    limiter: RateLimiter, uri: str, window_type: str, decisions: int, server_pid: int | None
) -> tuple[int, float, float, float | None]:
    """(decisions made, wall µs, gateway CPU µs, server CPU µs) per decision."""
    config = RateLimitConfig.model_validate(
        {
            "strategy": "PerIP",
            "requests_per_window": 10**9,
            "window_duration": 60,
            "window_type": window_type,
            "storage_uri": uri,
            "redis_key_prefix": f"bench-{window_type}",
        }
    )
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(CLIENTS)]
    for i in range(WARMUP):
        await limiter.check(config, "global", addresses[i % CLIENTS], None, "http GET /bench")
    deadline = time.monotonic() + PHASE_SECONDS
    server_before = cpu_seconds([server_pid]) if server_pid is not None else 0.0
    cpu_before, began = time.process_time(), time.perf_counter()
    done = 0
    while done < decisions and time.monotonic() < deadline:
        decision = await limiter.check(config, "global", addresses[done % CLIENTS], None, "http GET /bench")
        if not decision.allowed or not decision.headers:
            raise RuntimeError(f"{uri} {window_type}: refused or unavailable ({decision.message!r})")
        done += 1
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_before
    server = (cpu_seconds([server_pid]) - server_before) * 1e6 / done if server_pid is not None else None
    return done, wall * 1e6 / done, cpu * 1e6 / done, server


async def measure(
    backends: list[tuple[str, str, int | None]], decisions: int
) -> tuple[list[Run], dict[str, str]]:
    runs: list[Run] = []
    errors: dict[str, str] = {}
    limiter = RateLimiter()
    try:
        for name, uri, pid in backends:
            for window_type in WINDOW_TYPES:
                try:
                    done, wall, cpu, server = await phase(limiter, uri, window_type, decisions, pid)
                except Exception as exc:  # one backend failing must not lose the others' figures
                    errors[f"{name} {window_type}"] = repr(exc)
                    log(f"  {name} {window_type}: FAILED {exc!r}")
                    continue
                run = Run(name, uri, window_type, done, wall, cpu, server)
                runs.append(run)
                served = f", server CPU {server:.1f} µs" if server is not None else ""
                log(f"  {name} {window_type}: {wall:.1f} µs wall, gateway CPU {cpu:.1f} µs{served} ({done})")
    finally:
        await limiter.close()
    return runs, errors


def run_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """On uvloop when it is installed (``kairos run`` uses it), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def table(runs: list[Run]) -> str:
    lines = [
        "| backend | `storage_uri` | window | wall µs/decision | gateway CPU µs | server CPU µs |",
        "|---|---|---|---:|---:|---:|",
    ]
    for run in runs:
        server = f"{run.server_cpu_us:.1f}" if run.server_cpu_us is not None else "-"
        lines.append(
            f"| {run.backend} | `{run.storage_uri.split('://')[0]}://` | {run.window_type} | "
            f"{run.wall_us:.1f} | {run.gateway_cpu_us:.1f} | {server} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=DECISIONS, help="decisions per phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    decisions = max(1, min(options.decisions, 1_000_000))
    for program in ("redis-server", "memcached"):
        if shutil.which(program) is None:
            log(f"{program} is not installed: run `make system-deps`")
            return 1
    sut_cpu, load_cpu = cpus()
    os.sched_setaffinity(0, {load_cpu})
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-limits-"))
    redis_port, memcached_port = free_port(), free_port()
    redis_command = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_command += ["--save", "", "--appendonly", "no"]
    memcached_command = ["memcached", "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        memcached_command += ["-u", "root"]
    redis = start(pinned(sut_cpu, redis_command), work / "redis.log")
    memcached = start(pinned(sut_cpu, memcached_command), work / "memcached.log")
    try:
        wait_port(redis_port)
        wait_port(memcached_port)
        backends: list[tuple[str, str, int | None]] = [
            ("Kairos memory", "memory://", None),
            ("Kairos Redis (Lua)", f"redis://127.0.0.1:{redis_port}/0", redis.pid),
            ("limits memory", "async+memory://", None),
            ("limits Redis (redis-py)", f"async+redis://127.0.0.1:{redis_port}/1", redis.pid),
            ("limits memcached (memcachio)", f"memcached://127.0.0.1:{memcached_port}", memcached.pid),
        ]
        log(f"{decisions} decisions a phase, one at a time, {CLIENTS} clients; CPUs {sut_cpu}, {load_cpu}")
        runs, errors = run_loop(measure(backends, decisions))
    finally:
        stop(redis)
        stop(memcached)
    if options.json:
        print(json.dumps({"runs": [asdict(run) for run in runs], "errors": errors}, indent=2))
    else:
        print(table(runs))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
