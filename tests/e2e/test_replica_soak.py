"""A replica soak: ``kairos run --workers 2`` (two worker processes, which are replicas of each other)
with a real redis-server behind them, under steady mixed traffic, every gateway process's memory
sampled all along.

What the workers share through Redis: a rate limit (one Lua script per decision), a response cache
(GET per lookup, SET per fill) and the config itself (``KAIROS_CONFIG_STORE``: a subscription and a
read once a second per worker). The traffic, at ``RATE`` requests/s (a fraction of what two workers
serve, so the rest of ``make test`` can run beside it), cycles through:

- plain proxying (GET with a query, POST with a body), every fourth one on a fresh connection so the
  kernel hands connections to both workers;
- the Redis-cached route (40 URLs, 5 s TTL: hits, and a miss per URL every 5 s);
- the Redis-limited route (10 per 1 s window, shared, offered ~2.4 times that: 200s and 429s);
- a 256 KiB streamed download, a WebSocket session (three echoed messages, then a close);
- admin API reads (routes, config, config status, backends, metrics summary), ``/metrics``, ``/health``.

Every answer is checked (status, body, headers); anything else, an exception included, is an
unexpected error, and there must be none. Memory: the RSS of the supervisor and of each worker is
sampled every ``SAMPLE_SECONDS``. **Warm-up** is the first quarter of the run (at least 10 s, at most
5 min): connection pools fill, every code path runs once, allocator arenas and the bounded metrics
history take their size. The RSS "after warm-up" is the median of the samples of the
``WINDOW_SECONDS`` that follow it, the RSS "at the end" the median of the last ``WINDOW_SECONDS``'
samples (medians, so one sample taken mid-request does not decide); each process's end RSS must be
within ``RSS_LIMIT`` (10%) of its after-warm-up RSS.

Duration: ``KAIROS_SOAK_SECONDS`` (default 120) in ``make test``; ``KAIROS_SOAK=1`` (``make soak``,
tests marked ``slow``) runs 30 minutes. Every loop is bounded in count (``RATE`` x duration requests,
one sample per ``SAMPLE_SECONDS``) and in time (an overall deadline); every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.processes import Server, backend, kairos_run, redis_server, route, rss_bytes, upstream_server

RATE = 120.0  # requests scheduled per second, whatever the answers' latency (bounded concurrency)
CONCURRENCY = 48  # requests in flight at most; the scheduler waits (and the rate drops) beyond it
SAMPLE_SECONDS = 2.0
WINDOW_SECONDS = 10.0  # samples (medians) after warm-up and at the end
RSS_LIMIT = 0.10
LIMIT_PER_SECOND = 10  # the shared rate limit: 10 requests per 1 s fixed window
CACHED_URLS = 40
STREAM_BYTES = 256 * 1024
SECONDS = float(os.environ.get("KAIROS_SOAK_SECONDS", "120"))
LONG_SECONDS = 1800.0
LONG = os.environ.get("KAIROS_SOAK") == "1"
ADMIN_READS = (
    "/api/routes",
    "/api/config",
    "/api/config/status",
    "/api/backends",
    "/api/metrics/summary?top=5",
    "/metrics",
    "/health",
)


def warm_up_seconds(duration: float) -> float:
    """The first quarter of the run, at least 10 s and at most 5 minutes."""
    return min(max(duration / 4, 10.0), 300.0)


def gateway_config(upstream: Server, redis_url: str) -> dict[str, Any]:
    up = [backend(upstream)]
    limit = {
        "strategy": "PerIP",
        "requests_per_window": LIMIT_PER_SECOND,
        "window_duration": 1,
        "burst_allowance": 0,
        "window_type": "FixedWindow",
        "storage_uri": redis_url,
        "redis_key_prefix": "soak",
    }
    return {
        "version": 1,
        "routers": [
            route("/soak/plain/{*rest}", "/echo/{*rest}", up, ("GET", "POST")),
            route(
                "/soak/cached/{name}",
                "/echo/cached/{name}",
                up,
                cache={"storage_uri": redis_url, "ttl_secs": 5},
            ),
            route("/soak/limited", "/echo/limited", up, rate_limit=limit),
            route("/soak/stream", "/stream", up, timeout_ms=30000),
            route("/soak/ws", "/ws", [backend(upstream, scheme="ws")], protocol="websocket"),
        ],
    }


@dataclass
class Tally:
    """What the traffic saw: answers per kind, the cache's and the limiter's outcomes, errors."""

    kinds: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    limited: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


@dataclass
class Samples:
    """RSS per PID over time: (seconds since the traffic started, {pid: bytes})."""

    points: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def median(self, pid: int, start: float, end: float) -> float:
        values = [rss[pid] for at, rss in self.points if start <= at <= end and pid in rss]
        assert values, f"no RSS sample of {pid} between {start:.0f} s and {end:.0f} s"
        return statistics.median(values)


def uvicorn_workers(pid: int) -> list[int]:
    """The worker processes under uvicorn's supervisor ``pid``: the children that multiprocessing's
    spawn started (``spawn_main`` in their command line; not its resource tracker), still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


async def one(http: httpx.AsyncClient, ws_base: str, n: int, tally: Tally) -> None:
    """Request ``n`` of the mix; a wrong answer raises AssertionError (counted by the caller)."""
    kind = n % 20
    if kind < 6:
        headers = {"connection": "close"} if n % 4 == 0 else {}
        response = await http.get(f"/soak/plain/item/{n}", params={"n": str(n)}, headers=headers)
        assert response.status_code == 200, response.text[:200]
        assert response.json()["raw_path"] == f"/echo/item/{n}?n={n}"
        tally.kinds["plain"] += 1
    elif kind < 8:
        body = b"p" * (n % 2048)
        response = await http.post(f"/soak/plain/post/{n}", content=body)
        assert response.status_code == 200 and response.json()["body_bytes"] == len(body), response.text[:200]
        tally.kinds["post"] += 1
    elif kind < 12:
        name = f"u{n % CACHED_URLS}"
        response = await http.get(f"/soak/cached/{name}")
        assert response.status_code == 200, response.text[:200]
        assert response.json()["raw_path"] == f"/echo/cached/{name}"
        state = response.headers.get("x-cache")
        assert state in ("HIT", "MISS"), f"x-cache {state!r}: the Redis cache was bypassed"
        tally.cache[state] += 1
        tally.kinds["cached"] += 1
    elif kind < 16:
        response = await http.get("/soak/limited")
        if response.status_code == 429:
            assert response.json()["type"] == "rate_limit_error" and "retry-after" in response.headers
        else:
            assert response.status_code == 200, response.text[:200]
            assert response.headers["x-ratelimit-limit"] == str(LIMIT_PER_SECOND)
        tally.limited[response.status_code] += 1
        tally.kinds["limited"] += 1
    elif kind == 16:
        received = 0
        async with http.stream("GET", "/soak/stream", params={"size": str(STREAM_BYTES)}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        assert received == STREAM_BYTES, f"streamed {received} of {STREAM_BYTES} bytes"
        tally.kinds["stream"] += 1
    elif kind == 17:
        async with connect(f"{ws_base}/soak/ws", open_timeout=10, close_timeout=5) as socket:
            for index in range(3):
                await socket.send(f"soak {n} {index}")
                assert await asyncio.wait_for(socket.recv(), 10) == f"soak {n} {index}"
        tally.kinds["websocket"] += 1
    else:
        path = ADMIN_READS[(n // 20) % len(ADMIN_READS)]
        response = await http.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
        tally.kinds["admin"] += 1


async def traffic(gateway: Server, duration: float, pids: list[int], samples: Samples) -> Tally:
    """``RATE`` x ``duration`` requests, each started at its scheduled time (or as soon as fewer than
    ``CONCURRENCY`` are in flight), while the RSS of ``pids`` is sampled every ``SAMPLE_SECONDS``."""
    tally = Tally()
    total = int(RATE * duration)
    slots = asyncio.Semaphore(CONCURRENCY)
    started = time.monotonic()
    ws_base = f"ws://127.0.0.1:{gateway.port}"

    async def guarded(http: httpx.AsyncClient, n: int) -> None:
        try:
            await one(http, ws_base, n, tally)
        except Exception as exc:  # every failure is counted and reported, none stops the soak
            if len(tally.errors) < 1000:
                tally.errors.append(
                    f"request {n} (kind {n % 20}) at {time.monotonic() - started:.1f}s: {exc!r}"
                )
        finally:
            slots.release()

    async def sampler() -> None:
        for _ in range(int(duration / SAMPLE_SECONDS) + 2):
            rss: dict[int, int] = {}
            for pid in pids:
                try:
                    rss[pid] = rss_bytes(pid)[0]
                except (OSError, KeyError, ValueError) as exc:
                    samples.problems.append(f"pid {pid}: {exc!r}")
            samples.points.append((time.monotonic() - started, rss))
            if time.monotonic() - started > duration:
                return
            await asyncio.sleep(SAMPLE_SECONDS)

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15, limits=limits) as http:
        sampling = asyncio.create_task(sampler())
        tasks: set[asyncio.Task[None]] = set()
        async with asyncio.timeout(duration + 60):
            for n in range(total):
                delay = started + n / RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                task = asyncio.create_task(guarded(http, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            await sampling
    return tally


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics exposition (0 when it has none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    "duration",
    [
        pytest.param(SECONDS, id="bounded", marks=pytest.mark.timeout(SECONDS + 240)),
        pytest.param(
            LONG_SECONDS,
            id="30min",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not LONG, reason="KAIROS_SOAK=1 runs the 30-minute soak"),
                pytest.mark.timeout(LONG_SECONDS + 300),
            ],
        ),
    ],
)
def test_two_workers_sharing_redis_stay_flat_under_mixed_traffic(tmp_path: Path, duration: float) -> None:
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path))
        upstream = stack.enter_context(upstream_server(tmp_path, "soak"))
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        env = {"KAIROS_WORKERS": "2", "KAIROS_CONFIG_STORE": redis_url, "KAIROS_CONFIG_WATCH": "false"}
        gateway = stack.enter_context(kairos_run(tmp_path, gateway_config(upstream, redis_url), env=env))

        deadline = time.monotonic() + 30
        while len(workers := uvicorn_workers(gateway.pid)) < 2:
            assert time.monotonic() < deadline, f"workers of {gateway.pid}: {workers}"
            time.sleep(0.1)
        pids = [gateway.pid, *workers]
        ticks_at_start = {pid: cpu_ticks(pid) for pid in workers}

        samples = Samples()
        began = time.monotonic()
        tally = asyncio.run(traffic(gateway, duration, pids, samples))
        elapsed = time.monotonic() - began

        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/health").json()["status"] == "healthy"
            exposition = client.get("/metrics").text
        ticks = {pid: cpu_ticks(pid) - ticks_at_start[pid] for pid in workers}
        assert uvicorn_workers(gateway.pid) == workers, "a worker died and was replaced during the soak"

    # Zero unexpected errors: every answer as expected, no Redis operation failed in a worker.
    assert not tally.errors, f"{len(tally.errors)} unexpected errors, first: {tally.errors[:10]}"
    assert not samples.problems, samples.problems[:10]
    assert metric(exposition, "kairos_rate_limit_store_errors_total") == 0
    assert metric(exposition, "kairos_cache_store_errors_total") == 0
    expected = int(RATE * duration)
    assert sum(tally.kinds.values()) == expected, tally.kinds
    assert set(tally.kinds) == {"plain", "post", "cached", "limited", "stream", "websocket", "admin"}
    assert tally.cache["HIT"] > tally.cache["MISS"] > 0, tally.cache
    # The limit is shared: both workers together admit at most 10 per second-long window (the
    # windows the run touched, one more for its start and end); two separate counters would admit
    # up to twice as many. Offered ~24/s, so it admits close to the limit.
    admitted, refused = tally.limited[200], tally.limited[429]
    assert set(tally.limited) <= {200, 429} and refused > 0, tally.limited
    assert admitted <= LIMIT_PER_SECOND * (elapsed + 2), f"{admitted} admitted in {elapsed:.0f} s"
    assert admitted >= LIMIT_PER_SECOND * elapsed * 0.5, f"only {admitted} admitted in {elapsed:.0f} s"
    # Both workers served: each did at least a tenth of the workers' CPU work.
    assert min(ticks.values()) >= 0.1 * sum(ticks.values()), f"CPU ticks per worker: {ticks}"

    warm = warm_up_seconds(duration)
    last = max(at for at, _ in samples.points)
    report = []
    grown = []
    for pid in pids:
        after_warm_up = samples.median(pid, warm, warm + WINDOW_SECONDS)
        at_end = samples.median(pid, last - WINDOW_SECONDS, last)
        change = at_end / after_warm_up - 1
        name = "supervisor" if pid == gateway.pid else f"worker {pid}"
        report.append(f"{name}: {after_warm_up / 2**20:.1f} -> {at_end / 2**20:.1f} MiB ({change:+.1%})")
        if change > RSS_LIMIT:
            grown.append(name)
    print(
        f"\n{sum(tally.kinds.values())} requests in {elapsed:.0f} s: {dict(tally.kinds)}; cache "
        f"{dict(tally.cache)}; limited {dict(tally.limited)}; worker CPU ticks {ticks}"
    )
    print(f"RSS after {warm:.0f} s warm-up -> end of {duration:.0f} s: " + "; ".join(report))
    assert not grown, f"RSS grew more than {RSS_LIMIT:.0%}: " + "; ".join(report)
