"""Rate limits in a storage of the ``limits`` library: a real memcached on 127.0.0.1 shared by two real
gateway processes (``kairos run``), which together admit exactly the limit; memcached stopped, each
policy fails open or closed as configured, and counts again once memcached is back."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, free_port, kairos_run, route, server_process, stop, wait_for_port

DAY = 86_400  # windows aligned to the clock: a day-long one is never crossed during the test


@contextmanager
def memcached_server(tmp: Path, port: int | None = None) -> Iterator[Server]:
    """A real memcached (Debian's, `make system-deps`) on 127.0.0.1, TCP only, stopped by its PID."""
    program = shutil.which("memcached")
    if program is None:
        raise RuntimeError("memcached is not installed: run `make system-deps` (it installs it with apt-get)")
    port = port or free_port()
    args = ["-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16"]
    if os.geteuid() == 0:
        args += ["-u", "root"]  # memcached refuses to run as root unless told which user to be
    with server_process(
        args, port, tmp / f"memcached-{port}-{time.monotonic_ns()}.log", program=program
    ) as server:
        yield server


def limit(count: int, window_type: str, uri: str, **extra: Any) -> dict[str, Any]:
    return {"strategy": "PerIP", "requests_per_window": count, "window_duration": DAY,
            "window_type": window_type, "storage_uri": uri, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def memcached(module_tmp: Path) -> Iterator[Server]:
    with memcached_server(module_tmp) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(module_tmp: Path, upstream: Server, memcached: Server) -> Iterator[list[Server]]:
    uri = f"memcached://127.0.0.1:{memcached.port}"
    up = [backend(upstream)]
    config = {
        "version": 1,
        "routers": [
            route("/fixed", "/echo/fixed", up, rate_limit=limit(10, "FixedWindow", uri)),
            route("/sliding", "/echo/sliding", up, rate_limit=limit(6, "SlidingWindow", uri)),
            route("/burst", "/echo/burst", up, rate_limit=limit(12, "FixedWindow", uri)),
            route("/open", "/echo/open", up, rate_limit=limit(2, "FixedWindow", uri)),
            route("/closed", "/echo/closed", up, rate_limit=limit(2, "SlidingWindow", uri, fail_closed=True)),
        ],
    }
    with ExitStack() as stack:
        # Started side by side (each takes seconds to import), then waited for.
        servers = [stack.enter_context(kairos_run(module_tmp, config, wait=False)) for _ in range(2)]
        for server in servers:
            wait_for_port(server.port, server.process)
            httpx.get(f"{server.url}/ready", timeout=5).raise_for_status()
        yield servers


def alternate(replicas: list[Server], path: str, count: int) -> list[httpx.Response]:
    """``count`` requests, one at a time, replica one, two, one, two..."""
    return [httpx.get(f"{replicas[n % 2].url}{path}", timeout=5) for n in range(count)]


@pytest.mark.parametrize(("path", "quota"), [("/fixed", 10), ("/sliding", 6)])
def test_two_replicas_admit_exactly_the_limit_together(replicas: list[Server], path: str, quota: int) -> None:
    answers = alternate(replicas, path, quota + 4)
    assert [a.status_code for a in answers] == [200] * quota + [429] * 4
    # Each replica's answer counts the other's requests: one counter, in memcached.
    assert [int(a.headers["x-ratelimit-remaining"]) for a in answers] == [
        *range(quota - 1, -1, -1),
        0,
        0,
        0,
        0,
    ]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {str(quota)}
    refused = answers[-1]
    assert refused.json()["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= DAY
    assert 0 < int(refused.headers["x-ratelimit-reset"]) <= DAY
    assert refused.headers["ratelimit-policy"] == f'"perip";q={quota};w={DAY}'


def test_concurrent_requests_over_both_replicas_admit_exactly_the_limit(replicas: list[Server]) -> None:
    """A fixed window is one atomic memcached ``incr`` per decision: exact under concurrency too."""

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            urls = [f"{replicas[n % 2].url}/burst" for n in range(40)]
            return [answer.status_code for answer in await asyncio.gather(*(client.get(url) for url in urls))]

    codes = asyncio.run(fire())
    assert codes.count(200) == 12 and codes.count(429) == 28


def wait_until(check: Callable[[Server], bool], server: Server, seconds: float = 5.0) -> None:
    """Poll ``check(server)`` every 50 ms until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check(server):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_memcached_down_fails_open_or_closed_then_counting_resumes(
    module_tmp: Path, replicas: list[Server], memcached: Server
) -> None:
    stop(memcached.process)  # by its PID; the fixture's own stop is then a no-op
    opened = alternate(replicas, "/open", 6)  # the limit is 2: the limiter steps aside
    assert [a.status_code for a in opened] == [200] * 6
    assert all("x-ratelimit-remaining" not in a.headers for a in opened)
    for replica in replicas:
        closed = httpx.get(f"{replica.url}/closed", timeout=5)
        assert closed.status_code == 503 and closed.json()["type"] == "rate_limit_unavailable"
        assert closed.headers["retry-after"] == "1"
        metrics = httpx.get(f"{replica.url}/metrics", timeout=5).text
        assert "kairos_rate_limit_fail_open_total 3.0" in metrics
        assert "kairos_rate_limit_store_errors_total 4.0" in metrics
        wait_until(lambda server: "is unreachable" in server.output(), replica)
        assert (
            replica.output().count(
                f"rate limit store at memcached://127.0.0.1:{memcached.port} is unreachable"
            )
            == 1
        )

    def counted(server: Server) -> bool:
        return "x-ratelimit-remaining" in httpx.get(f"{server.url}/open", timeout=5).headers

    with memcached_server(module_tmp, memcached.port):  # back, empty, on the same port
        # Within a second (the retry interval) each replica counts again, in the new memcached.
        for replica in replicas:
            wait_until(counted, replica)
        answers = alternate(replicas, "/open", 3)
        assert [a.status_code for a in answers] == [429, 429, 429]  # 2 admitted by the two checks above
        for replica in replicas:
            wait_until(lambda server: "is reachable again" in server.output(), replica)
