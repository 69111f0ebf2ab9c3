"""Fixtures for the analytics store: a database URL per backend (a SQLite file of the test's own;
a fresh database on the module's PostgreSQL server) and that server itself."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.analytics.postgres import Postgres, postgres_server

_databases = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def postgres(module_tmp: Path) -> Iterator[Postgres]:
    """One PostgreSQL 15 cluster for the module (~2 s to initdb and start), stopped by PID."""
    with postgres_server(module_tmp) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or a new database on the module's server (started
    only when a PostgreSQL case runs)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'analytics.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.createdb(f"test_{next(_databases)}")
