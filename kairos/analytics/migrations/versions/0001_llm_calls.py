"""llm_calls: one row per OpenAI-compatible call, indexed for time ranges (alone, per consumer,
per model).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    big_int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's rowid alias is INTEGER
    op.create_table(
        "llm_calls",
        sa.Column("id", big_int, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("target_model", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("cache", sa.Text(), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_llm_calls_time", "llm_calls", ["time"])
    op.create_index("ix_llm_calls_consumer_time", "llm_calls", ["consumer", "time"])
    op.create_index("ix_llm_calls_model_time", "llm_calls", ["model", "time"])


def downgrade() -> None:
    op.drop_table("llm_calls")  # its indexes go with it
