"""The LLM request analytics store: ``record()`` on the request path, a batched writer off it.

The OpenAI-compatible endpoint calls ``record(LlmCallRecord(...))`` once per call; it costs a
length check and a ``deque.append`` and can neither block nor raise, whatever the database does.
A task owned by the Gateway (``start()`` in startup, ``stop()`` in shutdown, like the access log's
writer) takes up to ``batch_size`` records every ``flush_interval`` seconds, or as soon as that
many are waiting, and writes them with one INSERT of many rows in one transaction.

Why a bounded queue: the database is a dependency the gateway must not inherit the failures of. A
slow, full or unreachable database makes the queue grow instead of making requests wait; the bound
(``queue_size``) caps the memory that costs (~500 bytes per record here: 10,000 records ~5 MB).

Why batches: a row per request would be a transaction (and on SQLite a WAL append and lock) per
request, and a round trip each to PostgreSQL; a batch shares one of each. Each flush is one INSERT
statement executed for all its rows (the driver's executemany: one prepared statement; a
multi-VALUES INSERT measured 10x slower, SQLAlchemy compiling 8,500 parameters per batch).

What it costs, measured here (tests/analytics/bench_writer.py; 2 shared, busy cores; batch 500;
PostgreSQL 15 with fsync on; SQLite in WAL mode with synchronous=NORMAL), best of three runs, the
spread between runs in brackets:

    records/s the writer sustains   SQLite ~43,000 (19,000-43,000)   PostgreSQL ~30,000 (17,000-30,000)
    record(), per call              0.13-0.23 µs
    event loop CPU, per record      13-18 µs (the row, SQLAlchemy's parameters, asyncpg's encoding)
    loop stall, per full batch      7-20 ms (500 rows built and handed to the driver in one go)

Far beyond the call rate of an LLM deployment: at tens of calls per second per worker a flush
carries tens of rows, i.e. well under a millisecond of loop time per second. A full batch of 500
only forms at 500 calls/s on one worker; lower ``batch_size`` if its stall matters more there.
``aggregate`` over 100,000 rows with no filter: ~0.3-0.6 s on SQLite, 0.15-0.3 s on PostgreSQL
(one scan and one sort for the median; a ``since`` or a consumer narrows it through the indexes).

What is lost, and when (each counted in ``stats.dropped``, with ``stats.last_error`` saying why):

- ``record()`` while ``queue_size`` records are waiting: the new record is refused (returns False);
- a failed batch goes back to the front of the queue and is retried with exponential backoff
  (0.25 s doubling up to ``retry_max_delay``); records that arrived while it was being tried (it
  is out of the queue meanwhile) may push the queue past ``queue_size``: then the oldest are
  dropped. So an outage costs at most ``queue_size`` records of memory, it loses nothing while it
  produces fewer records than that, and beyond it the store keeps mostly the outage's first
  records (new ones are refused while the queue is full);
- a record the database can never take (a field of the wrong type, a value out of range) is
  dropped alone; its batch is written without it;
- at ``stop()``, what cannot be written within ``stop_timeout`` seconds (the database is down);
- a crash of the gateway loses what is queued: at most ``flush_interval`` seconds of calls while
  the database answers.

Records are visible to ``aggregate()`` and ``recent()`` once written (within ``flush_interval``).

Why SQLite by default: analytics must work with no setup (one file next to the config, WAL mode so
readers never wait for the writer); PostgreSQL (``KAIROS_ANALYTICS_URL=postgresql://...``) is for
several workers or replicas sharing one store and for retention beyond what one file should hold.
The schema is created and migrated by the Alembic scripts shipped in ``migrations/`` at every
``start()`` (kairos/analytics/migrate.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Date, Select, String, Text, case, event, func, insert, literal_column, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from kairos.analytics.migrate import upgrade
from kairos.analytics.records import ERROR_OUTCOMES, AnalyticsStats, LlmCallRecord
from kairos.analytics.schema import llm_calls

logger = logging.getLogger("kairos.analytics")

GroupBy = Literal["consumer", "model", "day", "route", "provider"]
GROUP_BY: tuple[GroupBy, ...] = ("consumer", "model", "day", "route", "provider")

FIRST_RETRY_DELAY = 0.25  # seconds after the first failure; doubles up to retry_max_delay
MAX_TEXT = 1024  # characters kept of each text field (model names come from clients)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_FIELDS = tuple(field.name for field in fields(LlmCallRecord))


class AnalyticsUnavailable(RuntimeError):
    """``aggregate``/``recent`` could not read the database (not started, down, schema missing)."""


def engine_url(url: str | None, default_path: Path) -> URL:
    """The async SQLAlchemy URL for ``url`` (None: SQLite at ``default_path``).

    Accepted: ``sqlite:///path`` / ``sqlite+aiosqlite:///path`` (``sqlite://`` alone: in memory),
    ``postgresql://...`` / ``postgres://...`` / ``postgresql+asyncpg://...``. Anything else is a
    configuration mistake and raises ValueError at once (in ``__init__``, not at the first write).
    """
    if url is None or not url.strip():
        return URL.create("sqlite+aiosqlite", database=str(default_path))
    parsed = make_url(url.strip())
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(
        f"analytics database URL {parsed.render_as_string(hide_password=True)!r}: expected sqlite:///PATH "
        "or postgresql://USER@HOST:PORT/DB (SQLite through aiosqlite, PostgreSQL through asyncpg)"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection: WAL (readers do not wait for the writer, nor the writer for them)
    and synchronous=NORMAL (WAL's safe setting: a commit is durable across a gateway crash, the
    last ones may be lost on power loss; FULL would fsync every batch)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def describe(error: BaseException) -> str:
    """``Type: message`` of the driver's own error (SQLAlchemy's wrapper repeats the statement and
    its parameters: 500 rows of them), one line, bounded."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if isinstance(error, TimeoutError) and not text:
        text = "timed out"
    return f"{type(cause).__name__}: {text}"[:300]


def _bad_data(error: Exception) -> bool:
    """An error about the rows themselves (retrying the same batch would fail forever)."""
    if isinstance(error, DataError | IntegrityError):
        return True
    return isinstance(error, StatementError) and not isinstance(error, DBAPIError)  # bind processing


def _utc(when: datetime) -> datetime:
    if not isinstance(when, datetime):
        raise TypeError(f"time must be a datetime, not {type(when).__name__}")
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _clean_text(value: object) -> str:
    # Client-supplied strings (the model name, the request id) reach the database: bounded, no NUL
    # (PostgreSQL refuses it in text), no lone surrogate (not encodable as UTF-8).
    text = (value if type(value) is str else str(value)).replace("\x00", "")[:MAX_TEXT]
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _int(value: object, low: int, high: int) -> int:
    if type(value) is int and low <= value <= high:
        return value
    number: int = int(value)  # type: ignore[call-overload]  # what int() takes; else an invalid record
    return min(max(number, low), high)


def _float(value: object) -> float:
    if type(value) is float and value - value == 0.0:  # finite (inf - inf and NaN - NaN are NaN)
        return value
    number: float = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else 0.0  # SQLite would store NaN as NULL


def row(record: LlmCallRecord) -> dict[str, Any]:
    """The row for ``record``, each field coerced to its column; TypeError/ValueError when one
    cannot be (the record is dropped, not its batch).

    The writer runs this on the event loop for every record: the common case (plain ASCII strings
    of sane length, ints and finite floats) is checked in a few C calls, the rest cleaned field by
    field."""
    texts: tuple[str, ...] = (
        record.request_id,
        record.consumer,
        record.route,
        record.model,
        record.provider,
        record.target_model,
        record.outcome,
        record.cache,
    )
    try:
        joined = "".join(texts)  # TypeError unless all are str
        clean = joined.isascii() and "\x00" not in joined and max(map(len, texts)) <= MAX_TEXT
    except TypeError:
        clean = False
    if not clean:
        texts = tuple(map(_clean_text, texts))
    request_id, consumer, route, model, provider, target_model, outcome, cache = texts
    when = record.time
    if type(when) is not datetime or when.tzinfo is not UTC:
        when = _utc(when)
    ttft = record.ttft_ms
    return {
        "time": when,
        "request_id": request_id,
        "consumer": consumer,
        "route": route,
        "model": model,
        "provider": provider,
        "target_model": target_model,
        "prompt_tokens": _int(record.prompt_tokens, *_INT64),
        "completion_tokens": _int(record.completion_tokens, *_INT64),
        "cost_usd": _float(record.cost_usd),
        "latency_ms": _float(record.latency_ms),
        "ttft_ms": None if ttft is None else _float(ttft),
        "outcome": outcome,
        "status": _int(record.status, *_INT32),
        "cache": cache,
        "fallbacks": _int(record.fallbacks, *_INT32),
        "stream": record.stream is True or bool(record.stream),
    }


def _iso_time(value: datetime) -> str:
    # SQLite gives back the naive UTC time it was given; PostgreSQL an aware one.
    return _utc(value).isoformat()


def _day(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


class AnalyticsStore:
    """LLM call records, queued by ``record()`` and written in batches by a task of its own.

    Owned by the Gateway: ``start()`` in startup, ``stop()`` in shutdown. ``record()`` may be
    called before ``start()`` (the records wait in the queue) and is refused after ``stop()``.
    Call it from the event loop's thread. The module docstring says what can be lost and when.
    """

    def __init__(
        self,
        url: str | None,
        default_path: Path,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        retry_max_delay: float = 10.0,
        stop_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if flush_interval <= 0 or retry_max_delay <= 0 or stop_timeout <= 0:
            raise ValueError("flush_interval, retry_max_delay and stop_timeout must be positive")
        self.url = engine_url(url, default_path)
        self.backend = "sqlite" if self.url.drivername.startswith("sqlite") else "postgresql"
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_max_delay = retry_max_delay
        self.stop_timeout = stop_timeout
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout

        self._queue: deque[LlmCallRecord] = deque()
        self._in_flight = 0  # records of the batch being written (out of the queue meanwhile)
        self._accepting = True
        self._started = False
        self._closing = False
        self._wake = asyncio.Event()  # set by record() when a batch is full, and by stop()
        self._task: asyncio.Task[None] | None = None
        self._engine: AsyncEngine | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

        self._recorded = 0
        self._written = 0
        self._dropped = 0
        self._failed_batches = 0
        self._written_batches = 0
        self._last_error: str | None = None
        self._failing = False
        self._reported: str | None = None  # the failure last logged (a repeat is not logged again)

    # -- the request path ------------------------------------------------------------------------

    def record(self, record: LlmCallRecord) -> bool:
        """Queue ``record`` for the writer: False (counted in ``dropped``) when ``queue_size``
        records are waiting or the store is stopped. Never blocks, never raises; the record is
        checked by the writer, not here."""
        self._recorded += 1
        queue = self._queue
        if not self._accepting or len(queue) >= self.queue_size:
            self._dropped += 1
            return False
        queue.append(record)
        if len(queue) == self.batch_size:  # a full batch: wake the writer (once per crossing)
            with suppress(RuntimeError):  # set from another thread: the interval flush picks it up
                self._wake.set()
        return True

    @property
    def stats(self) -> AnalyticsStats:
        return AnalyticsStats(
            recorded=self._recorded,
            written=self._written,
            dropped=self._dropped,
            failed_batches=self._failed_batches,
            queue_depth=len(self._queue) + self._in_flight,
            last_error=self._last_error,
            backend=self.backend,
            written_batches=self._written_batches,
            failing=self._failing,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the engine, bring the schema to head and start the writer.

        A database that does not answer within ``connect_timeout`` (down, unreachable, schema
        locked) does not fail the start: it is logged, and the writer retries the migration with
        backoff while records queue up."""
        if self._started:
            return
        self._started = True
        self._accepting = True
        self._closing = False
        self._schema_ready = False
        if self._engine is None:
            self._engine = self._create_engine()
        try:
            async with asyncio.timeout(self.connect_timeout * 2):
                ready = await self._ensure_schema()
        except TimeoutError as error:
            self._note_failure(error, "schema migration")
            ready = False
        if not ready:
            logger.warning(
                "analytics database %s unavailable at start (%s): records are queued (up to %d) "
                "and written once it answers",
                self.url.render_as_string(hide_password=True),
                self._last_error,
                self.queue_size,
            )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kairos-analytics-writer")

    async def stop(self) -> None:
        """Refuse new records, write what is queued within ``stop_timeout`` seconds (one attempt
        per batch: a database that is down is not waited for), count the rest as dropped, and
        dispose of the engine."""
        if not self._started:
            return
        self._started = False
        self._accepting = False
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            async with asyncio.timeout(self.stop_timeout):
                if task is not None:
                    await task  # it finishes the batch it is writing, if any
                while self._queue and await self._flush():
                    pass
        except TimeoutError:
            pass
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            lost = len(self._queue)
            if lost:
                self._dropped += lost
                self._queue.clear()
                logger.warning("analytics: %d records not written at shutdown (%s)", lost, self._last_error)
            engine, self._engine = self._engine, None
            if engine is not None:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await engine.dispose()
                except (TimeoutError, SQLAlchemyError, OSError) as error:
                    logger.debug("analytics: disposing of the engine: %s", describe(error))

    def _create_engine(self) -> AsyncEngine:
        if self.backend == "sqlite":
            options: dict[str, Any] = {"connect_args": {"timeout": self.connect_timeout}}
            if self.url.database in (None, "", ":memory:"):
                options["poolclass"] = StaticPool  # one connection, or each would see its own database
            engine = create_async_engine(self.url, **options)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        return create_async_engine(
            self.url,
            pool_size=2,  # the writer, and a query from the endpoint
            max_overflow=2,
            pool_timeout=self.connect_timeout,
            pool_pre_ping=True,  # a server restart leaves dead pooled connections: replace, not fail
            connect_args={
                "timeout": self.connect_timeout,
                "command_timeout": self.command_timeout,
                "server_settings": {"application_name": "kairos-analytics"},
            },
        )

    async def _ensure_schema(self) -> bool:
        async with self._schema_lock:
            if self._schema_ready:
                return True
            engine = self._engine
            if engine is None:
                return False
            try:
                if self.backend == "sqlite" and self.url.database not in (None, "", ":memory:"):
                    await asyncio.to_thread(Path(self.url.database).parent.mkdir, parents=True, exist_ok=True)
                async with engine.begin() as connection:
                    before, after = await connection.run_sync(upgrade)
            except Exception as error:  # SQLAlchemy's, asyncpg's own on connect (auth), OSError, timeouts
                self._note_failure(error, "schema migration")
                return False
            self._schema_ready = True
            if before != after:
                logger.info("analytics schema migrated from %s to %s", before or "nothing", after)
            return True

    # -- the writer ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            delay = 0.0
            while True:
                if delay:
                    await self._pause(delay, for_batch=False)
                else:
                    await self._pause(self.flush_interval, for_batch=True)
                if self._closing:
                    return
                if await self._flush():
                    delay = 0.0
                else:
                    delay = min(max(delay * 2, FIRST_RETRY_DELAY), self.retry_max_delay)
                    delay *= random.uniform(0.8, 1.0)  # workers retrying one database: not in step
        except Exception:  # a bug: say so (record() keeps queueing up to the bound, then refuses)
            logger.exception("analytics writer stopped")

    async def _pause(self, seconds: float, *, for_batch: bool) -> None:
        """Wait ``seconds``, less if stopping or (``for_batch``) once a batch is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._closing and not (for_batch and len(self._queue) >= self.batch_size):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _flush(self) -> bool:
        """Write one batch; False when the database failed (the batch is back in the queue)."""
        if not self._schema_ready and not await self._ensure_schema():
            return False
        queue = self._queue
        if not queue:
            return True
        batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
        records: list[LlmCallRecord] = []
        rows: list[dict[str, Any]] = []
        for record in batch:
            try:
                rows.append(row(record))
            except Exception as error:  # anything a wrong field type can raise: drop this record
                self._drop_invalid(record, error)
                continue
            records.append(record)
        if not rows:
            return True
        self._in_flight = len(rows)
        try:
            await self._insert(rows)
        except asyncio.CancelledError:
            self._requeue(records)  # stop() counts them; a cancelled INSERT may or may not have committed
            raise
        except Exception as error:
            if _bad_data(error):
                return await self._insert_one_by_one(records, rows)
            self._requeue(records)
            self._failed_batches += 1
            self._note_failure(error, "write")
            return False
        finally:
            self._in_flight = 0
        self._written += len(rows)
        self._written_batches += 1
        self._note_success()
        return True

    async def _insert(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self._engine is not None
        async with self._engine.begin() as connection:
            await connection.execute(insert(llm_calls), rows)

    async def _insert_one_by_one(self, records: list[LlmCallRecord], rows: list[dict[str, Any]]) -> bool:
        """The database refused a value in the batch: write the rows one at a time and drop only
        those it refuses (rare: ``row()`` already bounds and cleans every field)."""
        for index, (record, one) in enumerate(zip(records, rows, strict=True)):
            try:
                await self._insert([one])
            except Exception as error:
                if not _bad_data(error):  # the database itself failed meanwhile: keep the rest
                    self._requeue(records[index:])
                    self._failed_batches += 1
                    self._note_failure(error, "write")
                    return False
                self._drop_invalid(record, error)
                continue
            self._written += 1
        self._written_batches += 1
        return True

    def _requeue(self, records: list[LlmCallRecord]) -> None:
        """Put a failed batch back in front; beyond ``queue_size``, drop the oldest."""
        queue = self._queue
        queue.extendleft(reversed(records))
        excess = len(queue) - self.queue_size
        if excess > 0:
            for _ in range(excess):
                queue.popleft()
            self._dropped += excess

    def _drop_invalid(self, record: LlmCallRecord, error: BaseException) -> None:
        self._dropped += 1
        self._last_error = f"invalid record {record.request_id!r} dropped: {describe(error)}"[:300]
        if self._reported != self._last_error:
            self._reported = self._last_error
            logger.warning("analytics: %s", self._last_error)

    def _note_failure(self, error: BaseException, what: str) -> None:
        self._last_error = describe(error)
        self._failing = True
        if self._reported != self._last_error:  # each new reason once, not every retry
            self._reported = self._last_error
            logger.warning(
                "analytics database %s failed (%s): %s; %d records queued, retrying",
                self.url.render_as_string(hide_password=True),
                what,
                self._last_error,
                len(self._queue),
            )

    def _note_success(self) -> None:
        if self._failing:
            self._failing = False
            self._reported = None
            logger.info("analytics database answers again; %d records still queued", len(self._queue))

    # -- queries ---------------------------------------------------------------------------------

    async def aggregate(
        self,
        group_by: GroupBy,
        since: datetime | None = None,
        until: datetime | None = None,
        consumer: str | None = None,
        model: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Totals per ``group_by`` key over the written records with ``since <= time < until``
        (naive datetimes are UTC), optionally of one consumer and/or one model.

        One dict per key: ``key`` (a ``day`` is an ISO date, UTC), ``requests``, ``errors``
        (outcomes in ``ERROR_OUTCOMES``), ``rate_limited``, ``client_cancelled``,
        ``prompt_tokens``, ``completion_tokens``, ``cost_usd``, ``avg_latency_ms``,
        ``p50_latency_ms`` (the median; of an even count the lower middle value, as
        percentile_disc), ``avg_ttft_ms`` (None when no record has one), ``cache_hits``,
        ``fallbacks`` (their sum). Ordered by requests, most first (then by key); by day, oldest
        first. At most ``limit`` keys.
        Raises AnalyticsUnavailable when the database cannot answer."""
        rows = await self._read(self._aggregate_query(group_by, since, until, consumer, model, limit))
        return [
            {
                "key": _day(entry.key) if group_by == "day" else entry.key,
                "requests": int(entry.requests),
                "errors": int(entry.errors),
                "rate_limited": int(entry.rate_limited),
                "client_cancelled": int(entry.client_cancelled),
                "prompt_tokens": int(entry.prompt_tokens),
                "completion_tokens": int(entry.completion_tokens),
                "cost_usd": float(entry.cost_usd),
                "avg_latency_ms": float(entry.avg_latency_ms),
                "p50_latency_ms": float(entry.p50_latency_ms),
                "avg_ttft_ms": None if entry.avg_ttft_ms is None else float(entry.avg_ttft_ms),
                "cache_hits": int(entry.cache_hits),
                "fallbacks": int(entry.fallbacks),
            }
            for entry in rows
        ]

    def _aggregate_query(
        self,
        group_by: GroupBy,
        since: datetime | None,
        until: datetime | None,
        consumer: str | None,
        model: str | None,
        limit: int,
    ) -> Select[Any]:
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        calls = llm_calls.c
        key: ColumnElement[Any]
        if group_by == "day" and self.backend == "postgresql":
            # A literal, not a bound parameter: the same expression appears twice below.
            key = func.date(func.timezone(literal_column("'UTC'"), calls.time), type_=Date)
        elif group_by == "day":
            key = func.date(calls.time, type_=String)  # SQLite keeps the UTC time as text
        elif self.backend == "sqlite":
            # "+column": SQLite would otherwise walk the (consumer, time) or (model, time) index to
            # group without sorting, a random table read per row: 3x slower than a scan and a sort.
            # (A WHERE on the column still uses the index: it names the column itself.)
            key = literal_column(f"+{llm_calls.name}.{group_by}", Text)
        else:
            key = calls[group_by]
        conditions: list[ColumnElement[bool]] = []
        if since is not None:
            conditions.append(calls.time >= _utc(since))
        if until is not None:
            conditions.append(calls.time < _utc(until))
        if consumer is not None:
            conditions.append(calls.consumer == consumer)
        if model is not None:
            conditions.append(calls.model == model)
        # Each record with the share of its key's records at or below its latency (cume_dist): the
        # median is the lowest latency with a share >= 0.5, PostgreSQL's percentile_disc(0.5), in
        # the same scan and one sort, on both backends (SQLite has no percentile function).
        ranked = (
            select(
                key.label("key"),
                calls.outcome,
                calls.prompt_tokens,
                calls.completion_tokens,
                calls.cost_usd,
                calls.latency_ms,
                calls.ttft_ms,
                calls.cache,
                calls.fallbacks,
                func.cume_dist().over(partition_by=key, order_by=calls.latency_ms).label("cume"),
            )
            .where(*conditions)
            .subquery("ranked")
        )
        r = ranked.c

        def counted(condition: ColumnElement[bool]) -> ColumnElement[Any]:
            return func.sum(case((condition, 1), else_=0))

        requests = func.count().label("requests")
        query = select(
            r.key,
            requests,
            counted(r.outcome.in_(ERROR_OUTCOMES)).label("errors"),
            counted(r.outcome == "rate_limited").label("rate_limited"),
            counted(r.outcome == "client_cancelled").label("client_cancelled"),
            func.sum(r.prompt_tokens).label("prompt_tokens"),
            func.sum(r.completion_tokens).label("completion_tokens"),
            func.sum(r.cost_usd).label("cost_usd"),
            func.avg(r.latency_ms).label("avg_latency_ms"),
            func.min(case((r.cume >= 0.5, r.latency_ms))).label("p50_latency_ms"),
            func.avg(r.ttft_ms).label("avg_ttft_ms"),
            counted(r.cache == "hit").label("cache_hits"),
            func.sum(r.fallbacks).label("fallbacks"),
        ).group_by(r.key)
        if group_by == "day":
            query = query.order_by(r.key.asc())
        else:
            query = query.order_by(requests.desc(), r.key.asc())
        return query.limit(limit)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The ``limit`` newest written records, newest first, as dicts of the record's fields
        (``time`` an ISO 8601 string in UTC). Raises AnalyticsUnavailable when the database
        cannot answer."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        calls = llm_calls.c
        query = (
            select(*(calls[name] for name in _FIELDS))
            .order_by(calls.time.desc(), calls.id.desc())
            .limit(limit)
        )
        result = []
        for entry in await self._read(query):
            values = entry._asdict()
            values["time"] = _iso_time(values["time"])
            values["stream"] = bool(values["stream"])
            result.append(values)
        return result

    async def _read(self, query: Select[Any]) -> list[Any]:
        engine = self._engine
        if engine is None:
            raise AnalyticsUnavailable("the analytics store is not started")
        if not await self._ensure_schema():
            raise AnalyticsUnavailable(f"analytics database unavailable: {self._last_error}")
        try:
            async with engine.connect() as connection:
                return list((await connection.execute(query)).all())
        except Exception as error:  # SQLAlchemy's, asyncpg's own (on connect), OSError, timeouts
            raise AnalyticsUnavailable(f"analytics database unavailable: {describe(error)}") from error
