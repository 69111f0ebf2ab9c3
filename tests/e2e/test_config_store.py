"""Config shared by replicas through Redis (``KAIROS_CONFIG_STORE``): three real gateway processes and
a real redis-server. A change through one replica's admin API is validated, stored and applied by
every replica; a bad one reaches none; a replica that starts later runs the stored config, not its
own file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.config_store import RedisConfigStore
from tests.processes import Server, backend, kairos_run, redis_server, route

TOKEN = "config-store-admin-token"
HEADERS = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def redis(module_tmp: Path) -> Iterator[Server]:
    with redis_server(module_tmp) as server:
        yield server


def env_for(redis: Server) -> dict[str, str]:
    return {"KAIROS_CONFIG_STORE": f"redis://127.0.0.1:{redis.port}/0", "KAIROS_ADMIN_TOKEN": TOKEN}


def first_config(upstream: Server) -> dict[str, Any]:
    return {"version": 1, "routers": [route("/who", "/whoami", [backend(upstream)])]}


@pytest.fixture(scope="module")
def replicas(module_tmp: Path, redis: Server, upstream: Server) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(kairos_run(module_tmp, first_config(upstream), env=env_for(redis)))
            for _ in range(3)
        ]


def wait_for(check: Any, seconds: float = 5.0) -> float:
    """Seconds until ``check()`` is true (polled every 20 ms), or fail after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the time"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_route_added_on_one_replica_answers_on_all(replicas: list[Server], upstream: Server) -> None:
    added = route("/added", "/whoami", [backend(upstream)])
    answer = httpx.post(f"{replicas[0].url}/api/routes", json=added, headers=HEADERS, timeout=10)
    assert answer.status_code == 201, answer.text
    delays = [
        wait_for(lambda server=server: httpx.get(f"{server.url}/added", timeout=5).status_code == 200)
        for server in replicas
    ]
    assert max(delays) < 1.0, f"seconds until each replica answered: {delays}"


def test_a_bad_change_reaches_no_replica(replicas: list[Server]) -> None:
    before = [httpx.get(f"{server.url}/api/config/status", headers=HEADERS).json() for server in replicas]
    bad = {
        "external_path": "/bad",
        "internal_path": "/",
        "methods": ["GET"],
        "backends": [{"host": "http://x", "port": 0}],
    }
    refused = httpx.post(f"{replicas[1].url}/api/routes", json=bad, headers=HEADERS, timeout=10)
    assert refused.status_code == 400
    assert "port" in refused.text
    time.sleep(1.2)  # a watcher that would apply something does so within a second
    after = [httpx.get(f"{server.url}/api/config/status", headers=HEADERS).json() for server in replicas]
    assert [status["generation"] for status in after] == [status["generation"] for status in before]
    for server in replicas:
        assert httpx.get(f"{server.url}/bad", timeout=5).status_code == 404


def test_a_replica_started_later_runs_the_stored_config(
    module_tmp: Path, redis: Server, upstream: Server, replicas: list[Server]
) -> None:
    later_route = route("/later", "/whoami", [backend(upstream)])
    answer = httpx.post(f"{replicas[2].url}/api/routes", json=later_route, headers=HEADERS, timeout=10)
    assert answer.status_code == 201, answer.text
    # Its own file knows only /who: what it serves comes from the store.
    with kairos_run(module_tmp, first_config(upstream), env=env_for(redis)) as late:
        for path in ("/who", "/added", "/later"):
            assert httpx.get(f"{late.url}{path}", timeout=5).status_code == 200, path


def test_two_changes_from_one_generation_one_wins(redis: Server) -> None:
    """The compare-and-set under every admin change: of two replicas publishing from the same
    generation, the second is refused (the admin API answers it 409), and nothing is lost."""

    async def race() -> tuple[int | None, int | None, tuple[int, str] | None]:
        store = RedisConfigStore(f"redis://127.0.0.1:{redis.port}/1", key="kairos:config:race")
        try:
            first = await store.publish(0, '{"version": 1, "routers": []}')
            second = await store.publish(0, '{"version": 1, "routers": [], "other": true}')
            return first, second, await store.load()
        finally:
            await store.close()

    first, second, stored = asyncio.run(race())
    assert first == 1 and second is None
    assert stored == (1, '{"version": 1, "routers": []}')


def test_the_store_url_shown_in_logs_and_errors_has_no_password() -> None:
    from kairos.config_store import RedisConfigStore

    store = RedisConfigStore("redis://:s3cret-pass@127.0.0.1:1/0?sentinel_password=other-secret")
    assert "s3cret-pass" not in store.url and "other-secret" not in store.url
    assert store.url.startswith("redis://***@127.0.0.1:1/0")
