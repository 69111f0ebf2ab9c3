"""The ``llm_calls`` table as the queries see it (SQLAlchemy Core).

The migrations (``migrations/versions/``) create it and are the source of truth for the database;
this ``Table`` must describe the same thing, which tests/analytics checks with Alembic's
``compare_metadata`` against both backends. A change to the table is a new migration plus the
matching change here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)

# Alembic's bookkeeping table, named for this package so the analytics database may be shared with
# other Alembic-managed schemas (the default name, alembic_version, would collide).
VERSION_TABLE = "kairos_analytics_version"

metadata = MetaData()

# BIGINT on PostgreSQL (BIGSERIAL for the id); SQLite's rowid alias must be spelled INTEGER.
_BigInt = BigInteger().with_variant(Integer(), "sqlite")

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", _BigInt, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("request_id", Text, nullable=False),
    Column("consumer", Text, nullable=False),
    Column("route", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("target_model", Text, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("outcome", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("cache", Text, nullable=False),
    Column("fallbacks", Integer, nullable=False),
    Column("stream", Boolean, nullable=False),
    # Every query is a time range, alone or within one consumer or one model.
    Index("ix_llm_calls_time", "time"),
    Index("ix_llm_calls_consumer_time", "consumer", "time"),
    Index("ix_llm_calls_model_time", "model", "time"),
)
