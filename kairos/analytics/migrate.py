"""Bring an analytics database to the newest schema with Alembic, without an alembic.ini.

``upgrade`` is synchronous, as Alembic is: the store runs it through ``AsyncConnection.run_sync``
inside one transaction. Running it on a database already at head changes nothing, so every
gateway start (and every worker) calls it. On PostgreSQL a transaction-scoped advisory lock makes
concurrent starts (several workers, several replicas) take turns instead of racing on CREATE TABLE;
on SQLite the loser of that race fails, logs a warning and succeeds on its retry.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from kairos.analytics.schema import VERSION_TABLE

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: any constant no other application on the database uses ("kairosan").
_PG_LOCK_KEY = 0x6B6169726F73616E


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config built in code: the shipped scripts, and the connection to run them on."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(connection: Connection) -> tuple[str | None, str | None]:
    """Migrate to head on ``connection`` (the caller commits); returns (revision before, after)."""
    # Alembic's INFO lines ("Context impl ...", "Will assume ...") on every start are noise; the
    # store logs the one line that matters (a revision change).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    before = current_revision(connection)
    command.upgrade(alembic_config(connection), "head")
    return before, current_revision(connection)
