"""Alembic's environment for the analytics schema.

Run only by ``command.upgrade`` from kairos/analytics/migrate.py, on the connection it lends in
``config.attributes["connection"]`` (inside the caller's transaction, which it commits): there is
no URL and no offline (SQL script) mode here.
"""

from __future__ import annotations

from alembic import context

from kairos.analytics.schema import VERSION_TABLE, metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the analytics migrations run through kairos.analytics.migrate.upgrade(connection)"
        )
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
