"""What Kairos's shared state costs Redis: operations per second and Redis CPU per operation, measured
against a real redis-server on this machine, for docs/scaling.md.

One redis-server (no persistence, as the tests run it) pinned to the SUT CPU, alone there; every
client on the load CPU. Two kinds of client:

- **Kairos's own code** (the gateway's client path, redis-py asyncio, one event loop):
  ``RedisStore.acquire`` of the request rate limiter (kairos/ratelimit/redis_store.py: one EVALSHA
  of its Lua script, a one-limit sliding window here, 1,000 client addresses), the response cache's
  ``get`` (a hit: a stored 1 KiB response, decoded) and ``set`` (a fill) (kairos/cache/redis_store.py),
  and the LLM limits' ``reserve`` + ``reconcile`` (kairos/llm/limits.py), each (a) sequentially on
  one connection: the round trip a request waits for, p50/p99; (b) from ``CONCURRENCY`` tasks at
  once (a busy worker): operations/s one Python process gets; both with the client's own CPU per
  operation (``time.process_time``: what a gateway worker pays per Redis call); and the limiter's
  script (c) pipelined, 100 per batch on one connection: the most one Python client gets out of it.
- **redis-benchmark** (C, ``-c 50``, no pipelining and ``-P 16``): what the server itself can do per
  operation the features send: the limiter's EVALSHA (1 key, and a Composite of 2), a cache hit
  (GET of a 1 KiB entry), a cache fill (SET ... PX of 1 KiB), the LLM reserve and reconcile scripts,
  and the config store's once-a-second HGET.

Before redis-benchmark, **commands per request** are counted by Redis itself: a real ``kairos run``
(one worker, the config store on, an upstream and the tests' fake LLM provider) serves ``COUNTED``
requests of each case (plain, Redis rate limit, cache miss, cache hit, both, an LLM request with
token limits) one after the other, and ``MONITOR`` (what the gateway sent: its round trips) and
``INFO commandstats`` (what Redis ran, the Lua scripts' commands included) are divided by them,
less the background counted in a 5 s window without traffic (the config store's read per second).

Redis's CPU time (utime + stime from /proc) is read around every run, so each operation's server
cost is measured in µs of Redis CPU, whatever the client's speed. Every run is bounded in count and
time (``--decisions``, ``--requests``, ``PHASE_SECONDS``, subprocess timeouts); redis-server is
stopped by its PID. Traffic goes to 127.0.0.1 only.

Run: ``.venv/bin/python bench/redis_ops.py [--decisions N] [--requests N] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from procs import cpu_seconds, cpus, free_port, pinned, start, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the kairos package of this checkout (its stores are what is measured)

from kairos.cache.entry import CachedResponse  # noqa: E402
from kairos.cache.redis_store import RedisCacheStore  # noqa: E402
from kairos.config.ratelimit import RateLimitConfig  # noqa: E402
from kairos.llm.limits import RECONCILE_SCRIPT, RESERVE_SCRIPT, RedisLimitStore, TokenLimits  # noqa: E402
from kairos.ratelimit.policy import compile_policy  # noqa: E402
from kairos.ratelimit.redis_store import ACQUIRE_SCRIPT, RedisStore  # noqa: E402

DECISIONS = 20_000  # per Python phase
REQUESTS = 200_000  # per redis-benchmark run
PHASE_SECONDS = 60.0  # a Python phase stops there even if its count is not reached
CONCURRENCY = 32  # tasks of the concurrent Python phase
PIPELINE = 100  # commands per pipelined batch
CLIENTS = 1_000  # distinct client addresses (rate-limit keys)
KEYSPACE = 100_000  # redis-benchmark's -r: distinct keys
VALUE = "v" * 1024  # a cached response's size, roughly (headers + a small JSON body)
COUNTED = 300  # requests per case of the per-request count
IDLE_SECONDS = 5.0  # the no-traffic window of the count (the config store's reads)


@dataclass(frozen=True, slots=True)
class Run:
    """One measurement. ``redis_us`` is Redis's CPU per operation; ``p50_ms``/``p99_ms`` the
    client-side round trip (Python phases, or redis-benchmark's own percentiles)."""

    name: str
    client: str  # "kairos" (the gateway's code) or "redis-benchmark"
    mode: str  # sequential / concurrent / pipelined / c=50 / c=50 P=16
    operations: int
    seconds: float
    ops_per_second: float
    redis_us: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    client_us: float | None = None  # the Python client's own CPU per operation (what a gateway pays)


@dataclass(slots=True)
class Results:
    redis_version: str = ""
    runs: list[Run] = field(default_factory=list)
    # Redis's connected_clients after each concurrent Python phase: redis-py's pool grows to one
    # connection per call in flight (the stores set no maximum), which is what a replica holds too.
    clients: dict[str, int] = field(default_factory=dict)
    # Redis commands per request, per case, counted by Redis (INFO commandstats) while a real
    # `kairos run` served ``COUNTED`` requests of that case; "idle" is per second with no traffic.
    per_request: dict[str, dict[str, float]] = field(default_factory=dict)
    # The commands the gateway itself sent per request (its round trips; MONITOR, without the ones
    # Lua scripts ran), same cases.
    round_trips: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the Python phases (Kairos's own stores) ---------------------------------------------------------


def rate_limiter(url: str) -> tuple[RedisStore, Callable[[int], Awaitable[Any]]]:
    """The gateway's Redis limiter and one decision for client ``i`` (a PerIP sliding window far above
    the load, so every decision takes the script's counting path, as an admitted request does)."""
    config = RateLimitConfig.model_validate(
        {
            "strategy": "PerIP",
            "requests_per_window": 10**9,
            "window_duration": 60,
            "window_type": "SlidingWindow",
            "storage_uri": url,
            "redis_key_prefix": "bench",
        }
    )
    policy = compile_policy(config)
    store = RedisStore(url)

    def decide(i: int) -> Awaitable[Any]:
        keys = policy.keys("global", f"10.0.{i % CLIENTS // 256}.{i % 256}", None, "http GET /bench")
        return store.acquire(keys, policy.limits)

    return store, decide


def response_cache(
    url: str,
) -> tuple[RedisCacheStore, Callable[[int], Awaitable[Any]], Callable[[int], Awaitable[Any]]]:
    """The response cache's Redis store: a hit (``get`` of a stored 1 KiB response, decoded) and a
    fill (``set``), on ``CLIENTS`` URLs."""
    store = RedisCacheStore(url, prefix="bench:cache:")
    headers = [(b"content-type", b"application/json"), (b"etag", b'"abc"'), (b"date", b"Tue, 01 Dec 2026")]

    def entry() -> CachedResponse:
        now = time.time()
        return CachedResponse(200, list(headers), b"x" * 1024, b'"abc"', now, now + 3600)

    def hit(i: int) -> Awaitable[Any]:
        return store.get(f"route\nGET host/bench/{i % CLIENTS}\n-")

    def fill(i: int) -> Awaitable[Any]:
        return store.set(f"route\nGET host/bench/{i % CLIENTS}\n-", entry())

    return store, hit, fill


def llm_limits(url: str) -> tuple[RedisLimitStore, Callable[[int], Awaitable[Any]]]:
    """The LLM limits' store: one request = ``reserve`` (an estimate) then ``reconcile`` (the usage)."""
    store = RedisLimitStore(url, prefix="bench-llm")
    limits = TokenLimits(tokens_per_minute=10**12, requests_per_minute=10**9, budget_usd_per_day=10.0**9)

    async def request(i: int) -> None:
        verdict = await store.reserve(f"consumer{i % CLIENTS}|model", limits, 600, 0.0006)
        assert verdict.allowed and verdict.reservation is not None
        await store.reconcile(verdict.reservation, 450, 0.00045)

    return store, request


async def timed(
    name: str, mode: str, call: Callable[[int], Awaitable[Any]], count: int, tasks: int, redis_pid: int
) -> Run:
    """``count`` calls from ``tasks`` concurrent tasks (each call timed), bounded by PHASE_SECONDS."""
    latencies: list[float] = []
    numbers = iter(range(count))
    deadline = time.monotonic() + PHASE_SECONDS

    async def worker() -> None:
        for i in numbers:  # shared iterator: each number is taken by one task
            if time.monotonic() > deadline:
                return
            began = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - began)

    for i in range(min(200, count)):  # connections opened, script cached by redis-py: not measured
        await call(count + i)
    cpu_before, began, own = cpu_seconds([redis_pid]), time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    seconds, cpu = time.perf_counter() - began, cpu_seconds([redis_pid]) - cpu_before
    own = time.process_time() - own
    done = len(latencies)
    return Run(
        name,
        "kairos",
        mode,
        done,
        seconds,
        done / seconds,
        cpu * 1e6 / done,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
        own * 1e6 / done,
    )


async def pipelined(url: str, count: int, redis_pid: int) -> Run:
    """The limiter's script, ``PIPELINE`` EVALSHAs per round trip on one connection (redis-py)."""
    store, _ = rate_limiter(url)
    client: Any = store._client  # the store's own client and registered script
    script: Any = store._script
    await script(keys=["bench:warm"], args=["S", 10**9, 60000, 0])  # loads the script (EVALSHA works)
    cpu_before, began = cpu_seconds([redis_pid]), time.perf_counter()
    deadline, done = time.monotonic() + PHASE_SECONDS, 0
    while done < count and time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for i in range(done, done + PIPELINE):
            pipe.evalsha(script.sha, 1, f"bench:pipe:ip=10.0.0.{i % CLIENTS}", "S", 10**9, 60000, 0)
        await pipe.execute()
        done += PIPELINE
    seconds, cpu = time.perf_counter() - began, cpu_seconds([redis_pid]) - cpu_before
    await store.close()
    return Run(
        "rate limit EVALSHA",
        "kairos",
        f"pipelined x{PIPELINE}",
        done,
        seconds,
        done / seconds,
        cpu * 1e6 / done,
    )


async def python_phases(url: str, port: int, decisions: int, redis_pid: int, results: Results) -> None:
    store, decide = rate_limiter(url)
    cache, hit, fill = response_cache(url)
    llm, request = llm_limits(url)
    for i in range(CLIENTS):  # every URL of the hit phase stored
        await fill(i)
    phases = (
        ("rate limit EVALSHA", decide, 1),
        ("cache hit: GET 1 KiB", hit, 1),
        ("cache fill: SET 1 KiB PX", fill, 1),
        ("LLM reserve + reconcile", request, 2),
    )
    try:
        for label, call, per in phases:
            for mode, tasks in (
                ("sequential, 1 connection", 1),
                (f"{CONCURRENCY} tasks, 1 process", CONCURRENCY),
            ):
                run = await timed(label, mode, call, decisions, tasks, redis_pid)
                if per > 1:  # two scripts per request: report per script call, latency per request
                    run = Run(
                        run.name + " (per script)",
                        run.client,
                        run.mode,
                        run.operations * per,
                        run.seconds,
                        run.ops_per_second * per,
                        run.redis_us / per,
                        run.p50_ms,
                        run.p99_ms,
                        run.client_us / per if run.client_us is not None else None,
                    )
                log(f"  {describe(run)}")
                results.runs.append(run)
                if tasks > 1:
                    info = redis_cli(port, "INFO", "clients")
                    results.clients[label] = int(info.split("connected_clients:")[1].split()[0])
        run = await pipelined(url, decisions * 5, redis_pid)
        log(f"  {describe(run)}")
        results.runs.append(run)
    finally:
        await store.close()
        await cache.close()
        await llm.close()


# -- redis-benchmark ---------------------------------------------------------------------------------


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def prefill(port: int, load_cpu: int) -> None:
    """KEYSPACE 1 KiB entries under the names redis-benchmark's ``__rand_int__`` makes (12 digits),
    so every GET of the cache-hit run finds its entry."""
    lines = "".join(f"SET kc:{i:012d} {VALUE}\r\n" for i in range(KEYSPACE))
    subprocess.run(
        pinned(load_cpu, ["redis-cli", "-p", str(port), "--pipe"]),
        input=lines.encode(),
        capture_output=True,
        timeout=120,
        check=True,
    )


def benchmark_commands(port: int) -> list[tuple[str, list[str]]]:
    """(what it is, redis-benchmark's command line) for every operation a feature sends."""
    acquire = redis_cli(port, "SCRIPT", "LOAD", ACQUIRE_SCRIPT)
    reserve = redis_cli(port, "SCRIPT", "LOAD", RESERVE_SCRIPT)
    reconcile = redis_cli(port, "SCRIPT", "LOAD", RECONCILE_SCRIPT)
    window = ["S", "1000000000", "60000", "0"]  # a sliding window far above the load: always counts
    caps = ["-1", "-1", "-1", "-1", "120", "172800", "2764800"]  # no caps; the TTLs the store sets
    return [
        ("rate limit EVALSHA, 1 limit", ["EVALSHA", acquire, "1", "rl:ip=__rand_int__", *window]),
        (
            "rate limit EVALSHA, Composite of 2",
            ["EVALSHA", acquire, "2", "rl:a:__rand_int__", "rl:b:__rand_int__", *window, *window],
        ),
        ("cache hit: GET 1 KiB", ["GET", "kc:__rand_int__"]),
        ("cache fill: SET 1 KiB PX", ["SET", "kf:__rand_int__", VALUE, "PX", "30000"]),
        (
            "LLM reserve EVALSHA",
            ["EVALSHA", reserve, "3", "l:{__rand_int__}:m", "l:{x}:d", "l:{x}:M", "600", "600", *caps],
        ),
        (
            "LLM reconcile EVALSHA",
            ["EVALSHA", reconcile, "3", "l:{__rand_int__}:m", "l:{x}:d", "l:{x}:M", "-150", "-150"],
        ),
        ("config store poll: HGET", ["HGET", "kairos:config", "generation"]),
    ]


def redis_benchmark(
    port: int, load_cpu: int, redis_pid: int, name: str, command: list[str], requests: int, pipeline: int
) -> Run:
    """One bounded redis-benchmark run (``-n``; a subprocess timeout as a backstop)."""
    argv = ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests), "-r", str(KEYSPACE)]
    argv += ["-P", str(pipeline), "--csv", *command]
    cpu_before, began = cpu_seconds([redis_pid]), time.perf_counter()
    done = subprocess.run(pinned(load_cpu, argv), capture_output=True, text=True, timeout=300, check=False)
    seconds, cpu = time.perf_counter() - began, cpu_seconds([redis_pid]) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    rows = [row for row in csv.reader(io.StringIO(done.stdout)) if row and row[0] != "test"]
    if not rows:
        raise RuntimeError(f"no result from redis-benchmark: {done.stdout[-300:]} {done.stderr[-300:]}")
    row = rows[-1]  # test, rps, avg, min, p50, p95, p99, max (ms)
    mode = "c=50" if pipeline == 1 else f"c=50 P={pipeline}"
    return Run(
        name,
        "redis-benchmark",
        mode,
        requests,
        seconds,
        float(row[1]),
        cpu * 1e6 / requests,
        float(row[4]),
        float(row[6]),
    )


# -- Redis commands per request, counted by Redis ---------------------------------------------------


_OWN = ("config", "info", "monitor")  # this script's own commands, not the gateway's


def commandstats(port: int) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (``INFO commandstats``)."""
    calls = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls[name.removeprefix("cmdstat_")] = int(rest.split("calls=")[1].split(",")[0])
    return calls


def monitored(port: int, path: Path) -> subprocess.Popen[bytes]:
    """``redis-cli MONITOR`` into ``path``: every command Redis runs, those of Lua scripts marked
    ``[N lua]``; stopped by its PID after the case."""
    with path.open("wb") as out:
        command = ["redis-cli", "-p", str(port), "MONITOR"]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(0.3)  # attached before the first request
    return process


def client_commands(path: Path) -> dict[str, int]:
    """Commands in a MONITOR log sent by clients (not by a Lua script), by name."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        head, bracket, rest = line.partition("] ")
        if not bracket or head.endswith(" lua") or not rest.startswith('"'):
            continue
        name = rest[1:].split('"', 1)[0].lower()
        counts[name] = counts.get(name, 0) + 1
    return counts


def per_request(
    calls: dict[str, int], table: dict[str, dict[str, float]], elapsed: float
) -> dict[str, float]:
    """Calls per request, less what the idle window says the background (the config store's
    once-a-second read) did in ``elapsed`` seconds; Redis's own bookkeeping commands left out."""
    per: dict[str, float] = {}
    for name, count in calls.items():
        background = table["idle (per second)"].get(name, 0.0) * elapsed
        value = max(0.0, count - background) / COUNTED
        if value >= 0.005 and not name.startswith(_OWN):
            per[name] = round(value, 2)
    return per


def gateway_config(upstream: int, llm: int, redis_url: str) -> dict[str, Any]:
    """One route per feature: plain, the Redis limiter (far above the load), the Redis cache, both,
    and an LLM route with token limits (kept in Redis through KAIROS_REDIS_URL)."""
    up = [{"host": "http://127.0.0.1", "port": upstream}]
    limit = {"strategy": "PerIP", "requests_per_window": 10**9, "window_duration": 60}
    limit |= {"window_type": "SlidingWindow", "storage_uri": redis_url}
    cache = {"storage_uri": redis_url, "ttl_secs": 300}

    def route(path: str, internal: str, **extra: Any) -> dict[str, Any]:
        return {"external_path": path, "internal_path": internal, "methods": ["GET"], "backends": up, **extra}

    target = {"provider": "openai", "model": "echo-counted", "api_base": f"http://127.0.0.1:{llm}/v1"}
    target["api_key"] = "bench-key"
    llm_route = {
        "protocol": "llm",
        "external_path": "/v1",
        "internal_path": "/",
        "methods": ["GET", "POST"],
        "llm": {"models": {"echo": [target]}, "max_tokens": 16, "limits": {"tokens_per_minute": 10**9}},
    }
    return {
        "version": 1,
        "routers": [
            route("/plain/{name}", "/echo/{name}"),
            route("/limited/{name}", "/echo/{name}", rate_limit=limit),
            route("/cached/{name}", "/echo/{name}", cache=cache),
            route("/both/{name}", "/echo/{name}", rate_limit=limit, cache=cache),
            llm_route,
        ],
    }


def count_per_request(port: int, load_cpu: int, logs: Path, results: Results) -> None:
    """Start an upstream, the fake LLM provider and ``kairos run`` (one worker, the config store
    on); for each case reset Redis's counters, send ``COUNTED`` requests one after the other, and
    divide Redis's command counts by them (minus the config store's reads, counted with no traffic)."""
    import httpx

    redis_url = f"redis://127.0.0.1:{port}/0"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream, llm, gateway = free_port(), free_port(), free_port()
        for module, server_port in (("tests.servers.upstream", upstream), ("tests.servers.fake_llm", llm)):
            command = [sys.executable, "-m", module, "--port", str(server_port)]
            processes.append(
                start(pinned(load_cpu, command), logs / f"{module.rsplit('.', 1)[1]}.log", cwd=ROOT)
            )
        config = logs / "config.json"
        config.write_text(json.dumps(gateway_config(upstream, llm, redis_url)))
        env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
        env |= {
            "KAIROS_CONFIG_PATH": str(config),
            "KAIROS_CONFIG_STORE": redis_url,
            "KAIROS_REDIS_URL": redis_url,
        }
        env |= {"KAIROS_LOG_LEVEL": "warning", "KAIROS_DRAIN_DELAY": "0", "KAIROS_CONFIG_WATCH": "false"}
        env |= {"PYTHONPATH": str(ROOT), "KAIROS_ANALYTICS": "off"}
        command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(gateway)]
        processes.append(start(pinned(load_cpu, command), logs / "kairos.log", env, cwd=ROOT))
        wait_ready(f"http://127.0.0.1:{upstream}/echo/ready", processes[0])
        wait_ready(f"http://127.0.0.1:{gateway}/ready", processes[-1], timeout=60)
        chat = {"model": "echo", "messages": [{"role": "user", "content": "count my redis calls"}]}

        def send(http: httpx.Client, case: str, i: int) -> None:
            if case == "llm request":
                answer = http.post("/v1/chat/completions", json={**chat, "max_tokens": 8})
            else:
                path = {
                    "plain": "plain",
                    "rate limit": "limited",
                    "cache miss": "cached",
                    "cache hit": "cached",
                }
                path |= {"rate limit + cache hit": "both"}
                answer = http.get(f"/{path[case]}/item{i}")
            if answer.status_code != 200:
                raise RuntimeError(f"{case}: {answer.status_code} {answer.text[:200]}")

        with httpx.Client(base_url=f"http://127.0.0.1:{gateway}", timeout=30) as http:
            for i in range(COUNTED):  # warm: connections, scripts loaded, the "both" route's entries
                send(http, "rate limit + cache hit", i)
                send(http, "llm request", i)
            redis_cli(port, "CONFIG", "RESETSTAT")
            monitor = monitored(port, logs / "monitor-idle.log")
            time.sleep(IDLE_SECONDS)
            stop(monitor)
            idle = commandstats(port)
            results.per_request["idle (per second)"] = {
                name: calls / IDLE_SECONDS for name, calls in idle.items() if not name.startswith(_OWN)
            }
            sent = client_commands(logs / "monitor-idle.log")
            results.round_trips["idle (per second)"] = {
                name: calls / IDLE_SECONDS for name, calls in sent.items() if not name.startswith(_OWN)
            }
            cases = (
                "plain",
                "rate limit",
                "cache miss",
                "cache hit",
                "rate limit + cache hit",
                "llm request",
            )
            for case in cases:
                redis_cli(port, "CONFIG", "RESETSTAT")
                log_path = logs / f"monitor-{case.replace(' ', '-')}.log"
                monitor = monitored(port, log_path)
                began = time.monotonic()
                for i in range(COUNTED):
                    send(http, case, i)
                time.sleep(0.3)  # the last LLM request's reconcile is sent after its answer
                elapsed = time.monotonic() - began
                stop(monitor)
                sent_now = client_commands(log_path)
                results.round_trips[case] = per_request(sent_now, results.round_trips, elapsed)
                results.per_request[case] = per_request(commandstats(port), results.per_request, elapsed)
                log(f"  {case}: sent {results.round_trips[case]}, ran {results.per_request[case]}")
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        results.errors["per request"] = f"{type(exc).__name__}: {exc}"
    finally:
        for process in reversed(processes):
            stop(process)


# -- running -----------------------------------------------------------------------------------------


def describe(run: Run) -> str:
    latency = f", p50 {run.p50_ms:.3f} ms, p99 {run.p99_ms:.3f} ms" if run.p50_ms is not None else ""
    client = f", client CPU {run.client_us:.0f} µs/op" if run.client_us is not None else ""
    return (
        f"{run.name} [{run.client}, {run.mode}]: {run.ops_per_second:,.0f} ops/s, "
        f"Redis CPU {run.redis_us:.1f} µs/op{latency}{client}"
    )


def run(decisions: int, requests: int, sut_cpu: int | None, load_cpu: int | None) -> Results:
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    results = Results()
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-redis-"))
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = start(pinned(sut_cpu, command), work / "redis.log")
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                results.redis_version = (
                    redis_cli(port, "INFO", "server").split("redis_version:")[1].split()[0]
                )
                break
            except (subprocess.CalledProcessError, IndexError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        url = f"redis://127.0.0.1:{port}/0"
        log(f"redis-server {results.redis_version} on CPU {sut_cpu}, clients on CPU {load_cpu}")
        log("Kairos's stores (redis-py asyncio):")
        asyncio.run(python_phases(url, port, decisions, server.pid, results))
        log("Redis commands per request (INFO commandstats, `kairos run`, one worker):")
        count_per_request(port, load_cpu, work, results)
        redis_cli(port, "FLUSHALL")
        prefill(port, load_cpu)
        log("redis-benchmark:")
        for name, argv in benchmark_commands(port):
            for pipeline in (1, 16):
                try:
                    measured = redis_benchmark(port, load_cpu, server.pid, name, argv, requests, pipeline)
                except (RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
                    results.errors[f"{name} P={pipeline}"] = str(exc)
                    log(f"  {name} P={pipeline}: FAILED {exc}")
                    continue
                log(f"  {describe(measured)}")
                results.runs.append(measured)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        results.errors["setup"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return results


def report_lines(results: Results) -> list[str]:
    lines = [
        f"redis-server {results.redis_version}, alone on one CPU; clients on the other.",
        "",
        "| operation | client | mode | ops/s | Redis CPU µs/op (= ms per 1,000 ops) | p50 ms | p99 ms "
        "| client CPU µs/op |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in results.runs:
        p50 = f"{r.p50_ms:.3f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.3f}" if r.p99_ms is not None else "-"
        own = f"{r.client_us:.0f}" if r.client_us is not None else "-"
        cells = [r.name, r.client, r.mode, f"{r.ops_per_second:,.0f}", f"{r.redis_us:.1f}", p50, p99, own]
        lines.append("| " + " | ".join(cells) + " |")
    if results.per_request:
        lines += [
            "",
            f"Redis commands per request ({COUNTED} requests per case through `kairos run`): sent by "
            "the gateway (its round trips, from MONITOR) / run by Redis, the Lua scripts' commands "
            "included (INFO commandstats):",
            "",
        ]
        for case, commands in results.per_request.items():
            sent = results.round_trips.get(case, {})
            said = ", ".join(f"{name.upper()} {value:g}" for name, value in sent.items()) or "none"
            counted = ", ".join(f"{name.upper()} {value:g}" for name, value in commands.items()) or "none"
            lines.append(f"- {case}: {said} / {counted}")
    if results.clients:
        counted = ", ".join(f"{name}: {count}" for name, count in results.clients.items())
        lines += [
            "",
            f"Redis connected_clients after the {CONCURRENCY}-task phases (all stores open): {counted}",
        ]
    if results.errors:
        lines += ["", *(f"- {name} FAILED: {error}" for name, error in results.errors.items())]
    return lines


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP become SystemExit so ``finally`` stops redis-server."""
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--decisions", type=int, default=DECISIONS, help="calls per Python phase (1,000..200,000)"
    )
    parser.add_argument(
        "--requests", type=int, default=REQUESTS, help="per redis-benchmark run (10,000..2,000,000)"
    )
    parser.add_argument("--sut-cpu", type=int, help="redis-server's CPU")
    parser.add_argument("--load-cpu", type=int, help="the clients' CPU")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not (1_000 <= args.decisions <= 200_000 and 10_000 <= args.requests <= 2_000_000):
        parser.error("--decisions must be 1,000..200,000 and --requests 10,000..2,000,000 (bounded runs)")
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/redis_ops.py needs {tool} (apt-get install redis-server)")
    results = run(args.decisions, args.requests, args.sut_cpu, args.load_cpu)
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
