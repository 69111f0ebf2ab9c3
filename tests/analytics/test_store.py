"""The analytics store against a real SQLite file and a real PostgreSQL 15 (tests/analytics/postgres.py).

What the endpoint relies on: records come back through ``aggregate`` and ``recent``; writes are
batched; ``record()`` never waits for, nor fails with, the database (full queue, database down at
start, PostgreSQL killed mid-run and started again: the queued records are written, none lost up
to the queue bound); the Alembic migrations are idempotent and match the schema the queries use;
``stop()`` flushes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from kairos.analytics.migrate import current_revision, head_revision, upgrade
from kairos.analytics.records import LlmCallRecord
from kairos.analytics.schema import VERSION_TABLE, metadata
from kairos.analytics.store import AnalyticsStore, AnalyticsUnavailable, engine_url
from tests.analytics.postgres import Postgres, postgres_server
from tests.processes import free_port

pytestmark = pytest.mark.anyio

T = TypeVar("T")
UNUSED = Path("/nonexistent/unused.db")  # default_path when a URL is given
DAY1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def call(index: int = 0, **fields: Any) -> LlmCallRecord:
    values: dict[str, Any] = {
        "time": DAY1 + timedelta(seconds=index),
        "request_id": f"r{index}",
        "consumer": "alice",
        "route": "/v1/chat/completions",
        "model": "gpt-4o",
        "provider": "openai",
        "target_model": "gpt-4o-2024-08-06",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.25,
        "latency_ms": 100.0,
        "ttft_ms": None,
        "outcome": "ok",
        "status": 200,
        "cache": "miss",
        "fallbacks": 0,
        "stream": False,
    }
    values.update(fields)
    return LlmCallRecord(**values)


@asynccontextmanager
async def running(store: AnalyticsStore) -> AsyncIterator[AnalyticsStore]:
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


async def on_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a connection of the test's own (committed), outside any store."""
    engine = create_async_engine(engine_url(url, UNUSED))
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def rows(sql: str) -> Callable[[Connection], Sequence[Any]]:
    return lambda connection: connection.execute(text(sql)).all()


def by_key(entries: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {entry["key"]: entry for entry in entries}


# -- reading back -------------------------------------------------------------------------------


async def test_records_are_read_back_by_each_key_with_filters(database_url: str) -> None:
    day2, day3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
    records = [
        call(1, latency_ms=100.0, cost_usd=0.5),
        call(2, latency_ms=200.0, cost_usd=0.25, cache="hit"),
        call(3, latency_ms=600.0, outcome="error", status=502, prompt_tokens=3, completion_tokens=0),
        call(4, time=day2, consumer="bob", model="claude", provider="anthropic", route="/v1/messages",
             target_model="claude-3-5", ttft_ms=50.0, stream=True, fallbacks=1, latency_ms=300.0),
        call(5, time=day2 + timedelta(hours=1), consumer="bob", model="claude", provider="anthropic",
             route="/v1/messages", target_model="claude-3-5", ttft_ms=150.0, stream=True, latency_ms=500.0,
             outcome="stream_error"),
        call(6, time=day3, model="claude", provider="", target_model="", outcome="rate_limited", status=429,
             prompt_tokens=0, completion_tokens=0, cost_usd=0.0, latency_ms=1.0),
        # 23:30 on day 2 in New York is 04:30 UTC on day 3: days are UTC days.
        call(7, time=datetime(2026, 3, 2, 23, 30, tzinfo=timezone(timedelta(hours=-5))), consumer="carol",
             outcome="client_cancelled", status=499, latency_ms=40.0),
    ]  # fmt: skip
    async with running(AnalyticsStore(database_url, UNUSED, flush_interval=0.05)) as store:
        assert all(store.record(record) for record in records)
        await until(lambda: store.stats.written == len(records))

        consumers = await store.aggregate("consumer")
        assert [entry["key"] for entry in consumers] == ["alice", "bob", "carol"]  # requests desc
        assert consumers[0] == {
            "key": "alice",
            "requests": 4,
            "errors": 1,
            "rate_limited": 1,
            "client_cancelled": 0,
            "prompt_tokens": 23,
            "completion_tokens": 10,
            "cost_usd": 1.0,
            "avg_latency_ms": pytest.approx(901 / 4),
            "p50_latency_ms": 100.0,  # of 1, 100, 200, 600: the lower middle value
            "avg_ttft_ms": None,
            "cache_hits": 1,
            "fallbacks": 0,
        }
        bob = consumers[1]
        assert (bob["requests"], bob["errors"], bob["avg_ttft_ms"], bob["fallbacks"]) == (2, 1, 100.0, 1)
        assert consumers[2]["client_cancelled"] == 1

        models = by_key(await store.aggregate("model"))
        assert {key: entry["requests"] for key, entry in models.items()} == {"gpt-4o": 4, "claude": 3}
        assert models["gpt-4o"]["p50_latency_ms"] == 100.0  # 40, 100, 200, 600

        days = await store.aggregate("day")
        assert [(entry["key"], entry["requests"]) for entry in days] == [
            ("2026-03-01", 3),
            ("2026-03-02", 2),
            ("2026-03-03", 2),
        ]
        routes = by_key(await store.aggregate("route"))
        assert {key: entry["requests"] for key, entry in routes.items()} == {
            "/v1/chat/completions": 5,
            "/v1/messages": 2,
        }
        providers = by_key(await store.aggregate("provider"))
        assert {key: entry["requests"] for key, entry in providers.items()} == {
            "openai": 4,
            "anthropic": 2,
            "": 1,
        }

        # Filters: [since, until), one consumer, one model; naive datetimes are UTC.
        only_day2 = await store.aggregate("consumer", since=day2.replace(hour=0), until=day3.replace(hour=0))
        assert [(entry["key"], entry["requests"]) for entry in only_day2] == [("bob", 2)]
        naive = await store.aggregate("day", since=datetime(2026, 3, 3), until=None)
        assert [(entry["key"], entry["requests"]) for entry in naive] == [("2026-03-03", 2)]
        alice_days = await store.aggregate("day", consumer="alice")
        assert [(entry["key"], entry["requests"]) for entry in alice_days] == [
            ("2026-03-01", 3),
            ("2026-03-03", 1),
        ]
        claude = await store.aggregate("consumer", model="claude", consumer="alice")
        assert [(entry["key"], entry["requests"]) for entry in claude] == [("alice", 1)]
        assert await store.aggregate("model", consumer="nobody") == []
        assert [entry["key"] for entry in await store.aggregate("consumer", limit=1)] == ["alice"]

        recent = await store.recent(2)
        assert [entry["request_id"] for entry in recent] == ["r6", "r7"]  # day 3 10:00, then 04:30
        assert recent[0] == {
            **{name: getattr(records[5], name) for name in recent[0]},
            "time": "2026-03-03T10:00:00+00:00",
        }
        assert recent[1]["time"] == "2026-03-03T04:30:00+00:00"
        assert len(await store.recent()) == len(records)

        with pytest.raises(ValueError):
            await store.aggregate("status")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.recent(0)
        with pytest.raises(ValueError):
            await store.aggregate("model", limit=0)


async def test_stop_flushes_what_is_queued(database_url: str) -> None:
    store = AnalyticsStore(database_url, UNUSED, batch_size=1000, flush_interval=60)
    await store.start()
    for index in range(7):
        assert store.record(call(index))
    assert store.stats.written == 0  # neither a full batch nor an interval yet
    await store.stop()
    assert (store.stats.written, store.stats.queue_depth, store.stats.dropped) == (7, 0, 0)
    assert store.record(call(8)) is False  # stopped: refused and counted
    assert store.stats.dropped == 1
    await store.stop()  # twice: nothing to do

    async with running(AnalyticsStore(database_url, UNUSED)) as reopened:
        assert [entry["requests"] for entry in await reopened.aggregate("consumer")] == [7]


# -- batching -----------------------------------------------------------------------------------


async def test_many_records_few_inserts(database_url: str) -> None:
    store = AnalyticsStore(database_url, UNUSED, batch_size=100, flush_interval=60)
    async with running(store):
        inserts: list[int] = []

        def count(_c: Any, _cursor: Any, statement: str, parameters: Any, _x: Any, executemany: bool) -> None:
            if statement.lstrip().upper().startswith("INSERT"):
                inserts.append(len(parameters) if executemany else 1)

        assert store._engine is not None
        event.listen(store._engine.sync_engine, "before_cursor_execute", count)
        for index in range(1000):
            store.record(call(index))
        # A full batch wakes the writer at once: no waiting for the 60 s interval.
        await until(lambda: store.stats.written == 1000)
        assert inserts == [100] * 10  # one INSERT statement per batch, 100 rows each
        assert store.stats.written_batches == 10


async def test_interval_flushes_a_partial_batch(tmp_path: Path) -> None:
    store = AnalyticsStore(None, tmp_path / "analytics.db", batch_size=500, flush_interval=0.05)
    async with running(store):
        for index in range(3):
            store.record(call(index))
        await until(lambda: store.stats.written == 3)
        assert store.stats.written_batches == 1


# -- the queue bound ----------------------------------------------------------------------------


async def test_full_queue_refuses_at_once_and_counts(tmp_path: Path) -> None:
    store = AnalyticsStore(None, tmp_path / "analytics.db", queue_size=100, flush_interval=0.05)
    # Not started yet: records queue up (the endpoint may come up before the store).
    began = time.perf_counter()
    accepted = [store.record(call(index)) for index in range(10_000)]
    elapsed = time.perf_counter() - began
    assert accepted == [True] * 100 + [False] * 9_900
    assert elapsed < 1.0  # ~2 ms here: a length check and an append, no waiting
    stats = store.stats
    assert (stats.recorded, stats.dropped, stats.queue_depth, stats.written) == (10_000, 9_900, 100, 0)
    async with running(store):
        await until(lambda: store.stats.written == 100)
    assert store.stats.recorded == store.stats.written + store.stats.dropped


async def test_failed_batch_is_kept_and_the_oldest_beyond_the_bound_dropped(tmp_path: Path) -> None:
    store = AnalyticsStore(
        None,
        tmp_path / "analytics.db",
        queue_size=10,
        batch_size=4,
        flush_interval=0.05,
        retry_max_delay=0.05,
    )
    real_insert = store._insert
    attempts: list[int] = []

    async def fails_once(rows: Sequence[dict[str, Any]]) -> None:
        attempts.append(len(rows))
        if len(attempts) == 1:
            # While the first batch (r0..r3) is being written, four more arrive: room for them,
            # since the batch is out of the queue...
            assert [store.record(call(index)) for index in range(11, 15)] == [True] * 4
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))
        await real_insert(rows)

    store._insert = fails_once  # type: ignore[method-assign]
    for index in range(10):
        assert store.record(call(index))
    assert store.record(call(10)) is False  # full: refused
    async with running(store):
        await until(lambda: store.stats.queue_depth == 0)
        # ...then the failed batch went back in front, and the 4 oldest were dropped: 10 kept.
        stats = store.stats
        assert (stats.written, stats.dropped, stats.failed_batches) == (10, 5, 1)
        assert stats.last_error == "Exception: database or disk is full"
        assert not stats.failing
        written = sorted(int(entry["request_id"][1:]) for entry in await store.recent())
        assert written == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14]


async def test_bad_records_are_dropped_alone(database_url: str) -> None:
    def refuse_negative_tokens(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE llm_calls ADD CONSTRAINT tokens CHECK (prompt_tokens >= 0)"))
        else:
            connection.execute(text(
                "CREATE TRIGGER tokens BEFORE INSERT ON llm_calls WHEN NEW.prompt_tokens < 0 "
                "BEGIN SELECT RAISE(ABORT, 'negative tokens'); END"
            ))  # fmt: skip

    store = AnalyticsStore(database_url, UNUSED, flush_interval=60)
    async with running(store):
        await on_connection(database_url, refuse_negative_tokens)
        hostile = "gpt\x00-\ud800-" + "x" * 5000  # NUL, a lone surrogate, 5 KB: from a client
        records = [
            call(0),
            call(1, prompt_tokens="lots"),  # cannot be an int: dropped by the writer
            call(2, model=hostile, cost_usd=float("nan"), status=10**12, latency_ms=float("inf")),
            call(3, time=datetime(2026, 3, 1, 12, 0), ttft_ms=7),  # naive: UTC; an int ttft
            call(4, prompt_tokens=-1),  # refused by the database: the others still written
            call(5),
        ]
        for record in records:
            assert store.record(record)
    stats = store.stats
    assert (stats.written, stats.dropped, stats.failed_batches) == (4, 2, 0)
    assert stats.last_error is not None and "invalid record 'r4' dropped" in stats.last_error

    async with running(AnalyticsStore(database_url, UNUSED)) as reader:
        stored = {entry["request_id"]: entry for entry in await reader.recent()}
    assert sorted(stored) == ["r0", "r2", "r3", "r5"]
    assert stored["r2"]["model"].startswith("gpt-?-xxx") and len(stored["r2"]["model"]) == 1024
    assert (stored["r2"]["cost_usd"], stored["r2"]["latency_ms"], stored["r2"]["status"]) == (
        0.0,
        0.0,
        2**31 - 1,
    )
    assert (stored["r3"]["time"], stored["r3"]["ttft_ms"]) == ("2026-03-01T12:00:00+00:00", 7.0)


# -- the schema ---------------------------------------------------------------------------------


async def test_migrations_run_twice_and_match_the_schema(database_url: str) -> None:
    for _ in range(2):  # a new database, then one already at head
        store = AnalyticsStore(database_url, UNUSED)
        async with running(store):
            assert store.stats.last_error is None

    def check(connection: Connection) -> dict[str, Any]:
        again = upgrade(connection)  # a third time, directly
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        inspector = inspect(connection)
        return {
            "again": again,
            "revision": current_revision(connection),
            "differences": compare_metadata(context, metadata),
            "tables": sorted(inspector.get_table_names()),
            "indexes": {index["name"]: index["column_names"] for index in inspector.get_indexes("llm_calls")},
        }

    found = await on_connection(database_url, check)
    assert found["again"] == ("0001", "0001")
    assert found["revision"] == head_revision() == "0001"
    assert found["differences"] == []  # schema.py describes what the migrations built
    assert found["tables"] == ["kairos_analytics_version", "llm_calls"]
    assert found["indexes"] == {
        "ix_llm_calls_time": ["time"],
        "ix_llm_calls_consumer_time": ["consumer", "time"],
        "ix_llm_calls_model_time": ["model", "time"],
    }


async def test_sqlite_file_is_created_next_to_the_given_path(tmp_path: Path) -> None:
    default = tmp_path / "state" / "deeper" / "analytics.db"
    async with running(AnalyticsStore(None, default)) as store:
        assert store.backend == "sqlite"
        store.record(call())
    assert default.exists()
    with sqlite3.connect(default) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT count(*) FROM llm_calls").fetchone() == (1,)
    # A sqlite:/// URL instead of the default path.
    other = tmp_path / "elsewhere" / "calls.db"
    async with running(AnalyticsStore(f"sqlite:///{other}", default)):
        pass
    assert other.exists()


def test_urls() -> None:
    assert (
        str(engine_url(None, Path("/var/kairos/analytics.db")))
        == "sqlite+aiosqlite:////var/kairos/analytics.db"
    )
    assert str(engine_url("sqlite:///rel.db", UNUSED)) == "sqlite+aiosqlite:///rel.db"
    assert engine_url("postgresql://u:p@h:5/db", UNUSED).drivername == "postgresql+asyncpg"
    assert engine_url("postgres://u@h/db", UNUSED).drivername == "postgresql+asyncpg"
    assert engine_url("postgresql+asyncpg://u@h/db", UNUSED).drivername == "postgresql+asyncpg"
    for wrong in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db"):
        with pytest.raises(ValueError, match="expected sqlite"):
            AnalyticsStore(wrong, UNUSED)
    assert AnalyticsStore("postgresql://u@h/db", UNUSED).backend == "postgresql"


async def test_stop_is_bounded_when_the_database_hangs(tmp_path: Path) -> None:
    store = AnalyticsStore(None, tmp_path / "analytics.db", flush_interval=0.05, stop_timeout=0.3)

    async def hangs(rows: Sequence[dict[str, Any]]) -> None:
        await asyncio.sleep(60)  # a database that takes the INSERT and never answers

    store._insert = hangs  # type: ignore[method-assign]
    await store.start()
    for index in range(20):
        store.record(call(index))
    await until(lambda: store.stats.queue_depth == 20 and store._in_flight == 20)  # being written
    began = time.monotonic()
    await store.stop()
    assert time.monotonic() - began < 2.0
    assert (store.stats.written, store.stats.dropped, store.stats.queue_depth) == (0, 20, 0)


def test_arguments_are_checked() -> None:
    for wrong in ({"queue_size": 0}, {"batch_size": 0}, {"flush_interval": 0}, {"stop_timeout": -1}):
        with pytest.raises(ValueError):
            AnalyticsStore(None, UNUSED, **wrong)


async def test_in_memory_sqlite() -> None:
    async with running(AnalyticsStore("sqlite://", UNUSED, flush_interval=0.05)) as store:
        store.record(call())
        await until(lambda: store.stats.written == 1)
        assert [entry["key"] for entry in await store.aggregate("model")] == ["gpt-4o"]


# -- the database down --------------------------------------------------------------------------


async def test_database_down_at_start_does_not_fail_start(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/kairos"  # nothing listens there
    store = AnalyticsStore(url, UNUSED, flush_interval=0.05, retry_max_delay=0.1, stop_timeout=2)
    with caplog.at_level(logging.WARNING, logger="kairos.analytics"):
        await store.start()
    assert "unavailable at start" in caplog.text
    assert store.stats.failing and store.stats.last_error is not None
    assert all(store.record(call(index)) for index in range(50))
    with pytest.raises(AnalyticsUnavailable):
        await store.aggregate("consumer")
    began = time.monotonic()
    await store.stop()
    assert time.monotonic() - began < 2.5  # one last attempt, no waiting for a database that is down
    assert (store.stats.written, store.stats.dropped, store.stats.queue_depth) == (0, 50, 0)
    with pytest.raises(AnalyticsUnavailable, match="not started"):
        await store.recent()


async def test_postgres_killed_mid_run_loses_nothing_within_the_bound(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as server:
        await _outage_scenario(server)


async def _outage_scenario(server: Postgres) -> None:
    store = AnalyticsStore(
        server.url, UNUSED, queue_size=1000, batch_size=50, flush_interval=0.05, retry_max_delay=0.2
    )
    slowest = 0.0
    sent = 0

    async def record_for(seconds: float, count: int) -> None:
        """``count`` records spread over ``seconds``, each call timed."""
        nonlocal slowest, sent
        for _ in range(count):
            began = time.perf_counter()
            assert store.record(call(sent))
            slowest = max(slowest, time.perf_counter() - began)
            sent += 1
            await asyncio.sleep(seconds / count)

    # Down at start: start() succeeds, the schema is created once the server is back.
    server.stop()
    async with running(store):
        down_at_start = store.stats
        assert down_at_start.failing
        await record_for(0.2, 50)
        server.start()
        await until(lambda: store.stats.written == 50)
        assert not store.stats.failing

        # Killed while records keep coming: every record() returns at once, nothing raises.
        await record_for(0.2, 100)
        server.kill()
        await record_for(1.0, 300)
        await until(lambda: store.stats.failing)
        assert store.stats.last_error is not None and store.stats.failed_batches >= 1
        assert slowest < 0.25  # microseconds in fact: never a connect or a query
        with pytest.raises(AnalyticsUnavailable):
            await store.aggregate("model")
        assert store.stats.queue_depth > 0

        server.start()  # same data directory, same port
        await until(lambda: store.stats.written == sent)
        assert store.stats.dropped == 0
        assert not store.stats.failing
        totals = await store.aggregate("consumer")
        assert [entry["requests"] for entry in totals] == [sent]

    def distinct(connection: Connection) -> Sequence[Any]:
        return connection.execute(text("SELECT count(*), count(DISTINCT request_id) FROM llm_calls")).all()

    assert list((await on_connection(server.url, distinct))[0]) == [sent, sent]  # none lost, none twice
