from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Server, upstream_server

SHARED_CONFIGS = Path(__file__).resolve().parent.parent.parent / "shared" / "kairos-rs-configs"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def upstream(module_tmp: Path) -> Iterator[Server]:
    with upstream_server(module_tmp, "a") as server:
        yield server


@pytest.fixture(scope="module")
def upstream_b(module_tmp: Path) -> Iterator[Server]:
    with upstream_server(module_tmp, "b") as server:
        yield server
