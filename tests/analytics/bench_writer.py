"""What the analytics writer sustains here: ``python -m tests.analytics.bench_writer [N]``.

Not a test (pytest does not collect it): the figures in kairos/analytics/store.py's docstring
come from it. For each backend (a SQLite file in WAL mode; a PostgreSQL 15 started for the run with
fsync ON, unlike the test clusters) it queues N records at once (``queue_size`` = N, batch 500),
then times the writer until all are written, and reports:

- ``record()``: the cost of one call (the request path);
- records/s written: N / the time from the first flush to the last commit;
- loop CPU per record: the event loop thread's CPU time during the drain / N (building rows,
  SQLAlchemy's parameters, asyncpg's encoding: what other requests on that worker wait behind);
- the longest event loop stall seen by a 1 ms ticker during the drain (one batch's share);
- ``aggregate("consumer")`` and ``aggregate("day")`` over the N rows.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kairos.analytics.records import LlmCallRecord
from kairos.analytics.store import AnalyticsStore
from tests.analytics.postgres import postgres_server

BATCH = 500


def sample(index: int, start: datetime) -> LlmCallRecord:
    return LlmCallRecord(
        time=start + timedelta(seconds=index),
        request_id=f"req-{index:010d}",
        consumer=f"consumer-{index % 50}",
        route="/v1/chat/completions",
        model=f"gpt-4o-mini-{index % 5}",
        provider="openai",
        target_model="gpt-4o-mini-2024-07-18",
        prompt_tokens=1200,
        completion_tokens=350,
        cost_usd=0.00123,
        latency_ms=800.0 + index % 400,
        ttft_ms=120.0 if index % 2 else None,
        outcome="ok" if index % 20 else "error",
        status=200 if index % 20 else 502,
        cache="miss",
        fallbacks=index % 3,
        stream=bool(index % 2),
    )


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        stalls.append(loop.time() - before - 0.001)


def _ms(values: list[float], quantile: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000:.1f}"


async def measure(url: str | None, path: Path, count: int) -> str:
    store = AnalyticsStore(url, path, queue_size=count, batch_size=BATCH, flush_interval=0.05)
    await store.start()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [sample(index, start) for index in range(count)]
    gc.freeze()  # the bench's own N records out of the collector's way (the gateway freezes its heap too)
    began = time.perf_counter()
    for record in records:
        store.record(record)
    record_us = (time.perf_counter() - began) / count * 1e6

    stalls: list[float] = []
    ticking = asyncio.Event()
    ticker = asyncio.create_task(_ticker(stalls, ticking))
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(600_000):  # bounded: 10 minutes at most
        if store.stats.written >= count:
            break
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    ticking.set()
    await ticker
    stats = store.stats

    timings = []
    for group_by in ("consumer", "day"):
        began = time.perf_counter()
        await store.aggregate(group_by)
        timings.append(f"aggregate({group_by}) {(time.perf_counter() - began) * 1000:.0f} ms")
    await store.stop()
    assert stats.written == count, stats
    return (
        f"{store.backend:10} record() {record_us:.2f} us; {count / wall:,.0f} records/s written "
        f"({stats.written_batches} batches); loop CPU {cpu / count * 1e6:.1f} us/record; "
        f"loop stalls p50/p99/max {_ms(stalls, 0.5)}/{_ms(stalls, 0.99)}/{_ms(stalls, 1.0)} ms; "
        + ", ".join(timings)
    )


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="kairos-bench-") as directory:
        tmp = Path(directory)
        print(asyncio.run(measure(None, tmp / "analytics.db", count)), flush=True)
        with postgres_server(tmp, {"fsync": "on", "full_page_writes": "on"}) as server:
            print(asyncio.run(measure(server.url, tmp, count)), flush=True)


if __name__ == "__main__":
    main()
