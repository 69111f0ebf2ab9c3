"""kairos.resilience.health in process, probing real HTTP servers on 127.0.0.1 (no mocks).

The servers are tests/servers/switchable_upstream.py apps run in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from kairos.config import load_data
from kairos.config.policies import HealthCheckConfig
from kairos.resilience.health import ClientKey, HealthChecker, first_offsets, plan
from kairos.routing.backend import BackendState
from kairos.routing.route import Route, compile_route
from tests.processes import free_port
from tests.servers.switchable_upstream import STATE, make_app


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# Read afresh through a call: mypy keeps an attribute narrowed by an assert across the awaits that
# change it, and would call the opposite assert unreachable.
def running(checker: HealthChecker) -> bool:
    return checker.running


def healthy(state: BackendState) -> bool:
    return state.healthy


class Upstream:
    def __init__(self, name: str, port: int, app: web.Application) -> None:
        self.name, self.port, self.app = name, port, app

    @property
    def arrivals(self) -> list[float]:
        return list(self.app[STATE]["arrivals"])

    def mode(self, mode: str) -> None:
        self.app[STATE]["mode"] = mode


@asynccontextmanager
async def upstreams(count: int) -> AsyncIterator[list[Upstream]]:
    runners: list[web.AppRunner] = []
    servers: list[Upstream] = []
    try:
        for index in range(count):
            app = make_app(f"u{index}")
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            servers.append(Upstream(f"u{index}", port, app))
        yield servers
    finally:
        for runner in runners:
            await runner.cleanup()


def backend(port: int, path: str | None = "/healthz", host: str = "http://127.0.0.1") -> dict[str, Any]:
    entry: dict[str, Any] = {"host": host, "port": port}
    if path is not None:
        entry["health_check_path"] = path
    return entry


def route(external: str, backends: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "external_path": external,
        "internal_path": "/whoami",
        "methods": ["GET"],
        "backends": backends,
        **extra,
    }


def compile_config(
    config: dict[str, Any], states: dict[str, BackendState] | None = None
) -> tuple[list[Route], HealthCheckConfig | None]:
    """The compiled routes and top-level block, as Gateway.apply builds them (``states`` survives)."""
    loaded = load_data({"version": 1, **config}).config
    states = {} if states is None else states
    return [
        compile_route(index, item, states) for index, item in enumerate(loaded.routers)
    ], loaded.health_check


def key(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@contextmanager
def health_log() -> Iterator[list[str]]:
    """Lines logged by kairos.health (its own handler: the gateway's logging may stop propagation)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.INFO)
    log = logging.getLogger("kairos.health")
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


# -- planning -------------------------------------------------------------------------------------


def test_only_backends_with_a_path_are_planned_with_the_route_block_over_the_top_level_one() -> None:
    routes, default = compile_config(
        {
            "health_check": {"interval_ms": 5000, "timeout_ms": 700},
            "routers": [
                route("/a", [backend(1001), backend(1002, path=None)]),
                route("/b", [backend(1003, path="/status?deep=1")], health_check={"interval_ms": 250}),
            ],
        }
    )
    targets = plan(routes, default)
    assert sorted(targets) == [key(1001), key(1003)]  # 1002 has no health_check_path: never probed
    assert targets[key(1001)].url == "http://127.0.0.1:1001/healthz"
    assert targets[key(1001)].settings.interval_ms == 5000 and targets[key(1001)].timeout == 0.7
    assert targets[key(1003)].url == "http://127.0.0.1:1003/status?deep=1"
    # The route's block replaces the top-level one entirely (no merging): timeout back to its default.
    assert targets[key(1003)].settings.interval_ms == 250 and targets[key(1003)].settings.timeout_ms == 2000
    assert targets[key(1003)].route == "/b"
    # Neither block: health is off there (the balancer ignores it too), so nothing is probed; an
    # empty block turns checks on with the defaults.
    bare, none = compile_config({"routers": [route("/a", [backend(1001)])]})
    assert plan(bare, none) == {}
    empty, default = compile_config({"health_check": {}, "routers": [route("/a", [backend(1001)])]})
    assert plan(empty, default)[key(1001)].settings == HealthCheckConfig()


def test_a_shared_backend_uses_the_block_with_the_shortest_interval() -> None:
    routes, default = compile_config(
        {
            "health_check": {"interval_ms": 900},
            "routers": [
                route("/slow", [backend(1001, "/slow-health")], health_check={"interval_ms": 3000}),
                route(
                    "/fast",
                    [backend(1001, "/fast-health")],
                    health_check={"interval_ms": 200, "healthy_threshold": 5},
                ),
                route(
                    "/same", [backend(1001, "/other")], health_check={"interval_ms": 200}
                ),  # tie: first wins
                route("/top", [backend(1002)]),
                route("/top2", [backend(1002, "/second")], health_check={"interval_ms": 900}),
            ],
        }
    )
    targets = plan(routes, default)
    shared = targets[key(1001)]
    assert shared.settings.interval_ms == 200 and shared.settings.healthy_threshold == 5
    assert shared.route == "/fast" and shared.url.endswith("/fast-health")
    assert targets[key(1002)].route == "/top" and targets[key(1002)].url.endswith("/healthz")


def test_non_http_backends_are_not_probed_and_tls_backends_get_their_own_client() -> None:
    routes, default = compile_config(
        {
            "health_check": {},
            "routers": [
                route("/dns", [backend(1001, host="127.0.0.1")], protocol="dns"),  # not an HTTP backend
                route("/secure", [{**backend(1443, host="https://127.0.0.1"), "tls_verify": False}]),
                route("/h2", [{**backend(1002), "http2": True}]),
                route("/ws", [backend(1003, host="ws://127.0.0.1")], protocol="websocket"),
            ],
        }
    )
    targets = plan(routes, default)
    assert "127.0.0.1:1001" not in " ".join(targets)
    assert targets["https://127.0.0.1:1443"].client == ClientKey(True, False, None, False)
    assert targets["https://127.0.0.1:1443"].url == "https://127.0.0.1:1443/healthz"
    assert targets["http://127.0.0.1:1002"].client == ClientKey(False, True)
    assert targets["ws://127.0.0.1:1003"].url == "http://127.0.0.1:1003/healthz"  # ws probed over http


def test_first_probes_are_spread_over_the_interval() -> None:
    routes, default = compile_config(
        {
            "health_check": {"interval_ms": 400},
            "routers": [route("/a", [backend(p) for p in (1004, 1001, 1003, 1002)])],
        }
    )
    offsets = first_offsets(plan(routes, default))
    assert [offsets[key(port)] for port in (1001, 1002, 1003, 1004)] == pytest.approx([0, 0.1, 0.2, 0.3])


# -- probing real servers --------------------------------------------------------------------------


def test_probes_arrive_spread_and_periodically_from_one_task_per_backend() -> None:
    async def scenario() -> None:
        async with upstreams(4) as servers:
            routes, default = compile_config(
                {
                    "health_check": {"interval_ms": 400, "timeout_ms": 300},
                    "routers": [route("/a", [backend(server.port) for server in servers])],
                }
            )
            checker = HealthChecker(jitter=0)
            checker.update(routes, default)
            assert checker.tasks == 0  # nothing runs before start()
            started = time.time()
            await checker.start()
            assert running(checker) and checker.tasks == 4
            await asyncio.sleep(0.95)
            assert checker.tasks == 4  # still one per backend, not one per probe
            await checker.stop()
            assert checker.tasks == 0 and not running(checker)
            counts = {server.name: len(server.arrivals) for server in servers}
            await asyncio.sleep(0.5)
            assert {
                server.name: len(server.arrivals) for server in servers
            } == counts  # stopped means stopped

        by_port = sorted(servers, key=lambda server: server.port)
        for index, server in enumerate(by_port):
            # The i-th of 4 backends first probed at 400 ms * i / 4 (never all at once), then every
            # 400 ms on the same phase (no drift, no burst), whatever the first one cost.
            arrivals = [arrival - started for arrival in server.arrivals]
            assert 2 <= len(arrivals) <= 3, arrivals
            late = [arrival - (index * 0.1 + cycle * 0.4) for cycle, arrival in enumerate(arrivals)]
            # Jitter is off: a probe is late only by what a busy machine adds, which may reach
            # ~100 ms for one of them; the typical one is on its phase.
            assert all(-0.02 <= lateness <= 0.15 for lateness in late), arrivals
            assert -0.02 <= statistics.median(late) <= 0.08, arrivals
        assert servers[0].app[STATE]["user_agent"].startswith("Kairos-HealthCheck/")

    run(scenario)


def test_thresholds_and_one_log_line_per_transition() -> None:
    async def scenario() -> None:
        async with upstreams(1) as (server,):
            routes, default = compile_config(
                {
                    "health_check": {"unhealthy_threshold": 3, "healthy_threshold": 2},
                    "routers": [route("/a", [backend(server.port)])],
                }
            )
            checker = HealthChecker()
            checker.update(routes, default)
            state = routes[0].backends[0].state
            target = key(server.port)
            assert healthy(state)  # a new backend starts healthy
            with health_log() as lines:
                server.mode("fail")
                assert [await checker.check(target) for _ in range(2)] == ["failure", "failure"]
                assert healthy(state)  # 2 < unhealthy_threshold
                server.mode("ok")
                assert await checker.check(target) == "success"  # a pass resets the failure streak
                server.mode("fail")
                for _ in range(2):
                    await checker.check(target)
                assert healthy(state)
                await checker.check(target)
                assert not healthy(state)  # third consecutive failure
                await checker.check(target)
                assert not healthy(state)
                server.mode("ok")
                await checker.check(target)
                assert not healthy(state)  # 1 < healthy_threshold
                await checker.check(target)
                assert healthy(state)
                await checker.check(target)
            await checker.stop()
            assert len(server.arrivals) == 10
            assert checker.results[target] == {"success": 4, "failure": 6, "timeout": 0, "error": 0}
            assert lines == [
                f"health check: backend {target} is unhealthy after 3 consecutive failed probes "
                "(last: unexpected status HTTP 503)",
                f"health check: backend {target} is healthy again after 2 consecutive passed probes "
                "(HTTP 200)",
            ]

    run(scenario)


@pytest.mark.parametrize(
    ("mode", "expected_statuses", "result"),
    [
        ("302", [], "success"),  # any 2xx/3xx; the redirect is not followed
        ("204", [], "success"),
        ("404", [], "failure"),
        ("418", [418], "success"),
        ("200", [204], "failure"),
    ],
)
def test_expected_statuses(mode: str, expected_statuses: list[int], result: str) -> None:
    async def scenario() -> None:
        async with upstreams(1) as (server,):
            server.mode(mode)
            routes, default = compile_config(
                {
                    "health_check": {"expected_statuses": expected_statuses},
                    "routers": [route("/a", [backend(server.port)])],
                }
            )
            checker = HealthChecker()
            checker.update(routes, default)
            try:
                assert await checker.check(key(server.port)) == result
            finally:
                await checker.stop()
            assert len(server.arrivals) == 1

    run(scenario)


def test_a_probe_that_hangs_past_timeout_ms_fails_and_a_refused_connection_is_an_error() -> None:
    async def scenario() -> None:
        async with upstreams(1) as (server,):
            server.mode("hang")
            dead = free_port()  # nothing listens there
            routes, default = compile_config(
                {
                    "health_check": {"timeout_ms": 200, "unhealthy_threshold": 1},
                    "routers": [route("/a", [backend(server.port), backend(dead)])],
                }
            )
            checker = HealthChecker()
            checker.update(routes, default)
            try:
                began = time.monotonic()
                assert await checker.check(key(server.port)) == "timeout"
                assert 0.18 <= time.monotonic() - began < 0.6
                assert not routes[0].backends[0].state.healthy
                assert checker.snapshot()[key(server.port)]["last_reason"] == "no answer within 200 ms"
                assert await checker.check(key(dead)) == "error"
                assert not routes[0].backends[1].state.healthy
                assert "ConnectError" in str(checker.snapshot()[key(dead)]["last_reason"])
            finally:
                await checker.stop()

    run(scenario)


# -- reload -----------------------------------------------------------------------------------------


def test_reload_keeps_streaks_of_unchanged_backends_and_replans_the_rest() -> None:
    async def scenario() -> None:
        async with upstreams(3) as (a, b, c):
            states: dict[str, BackendState] = {}
            first = {
                "health_check": {"interval_ms": 10000, "unhealthy_threshold": 2},
                "routers": [route("/x", [backend(a.port), backend(b.port)])],
            }
            routes, default = compile_config(first, states)
            checker = HealthChecker(jitter=0)
            checker.update(routes, default)
            a.mode("fail")
            b.mode("fail")
            await checker.check(key(a.port))
            for _ in range(2):
                await checker.check(key(b.port))
            assert states[key(b.port)].healthy is False
            # Reload: a stays (new interval), b loses its path (no longer checked), c is new.
            second = {
                "health_check": {"interval_ms": 150, "unhealthy_threshold": 2},
                "routers": [route("/x", [backend(a.port), backend(b.port, path=None), backend(c.port)])],
            }
            with health_log() as lines:
                routes, default = compile_config(second, states)
                checker.update(routes, default)
            assert sorted(checker.targets) == sorted([key(a.port), key(c.port)])
            assert states[key(b.port)].healthy is True  # nothing would ever clear it otherwise
            assert lines == [
                f"health check: backend {key(b.port)} is no longer actively checked; marked healthy"
            ]
            snapshot = checker.snapshot()
            assert snapshot[key(a.port)]["consecutive_failures"] == 1  # the streak survived the reload
            assert snapshot[key(a.port)]["interval_ms"] == 150
            assert key(b.port) not in checker.results
            await checker.check(key(a.port))
            assert states[key(a.port)].healthy is False  # 1 before the reload + 1 after = threshold

            # Running: a long interval, then a reload to a short one takes effect at once.
            a.mode("ok")
            slow = {
                "health_check": {"interval_ms": 10000},
                "routers": [route("/x", [backend(a.port), backend(c.port)])],
            }
            checker.update(*compile_config(slow, states))
            manual = len(a.arrivals) + len(c.arrivals)
            await checker.start()
            assert checker.tasks == 2
            await asyncio.sleep(0.3)
            probed = len(a.arrivals) + len(c.arrivals) - manual
            assert probed == 1  # only the first of the two (offset 0); the other waits 5 s
            reload_at = time.time()
            fast = {
                "health_check": {"interval_ms": 100, "healthy_threshold": 2},
                "routers": [route("/x", [backend(a.port), backend(c.port)])],
            }
            checker.update(*compile_config(fast, states))
            await asyncio.sleep(0.55)
            assert checker.tasks == 2  # same tasks, rescheduled
            after = [t for t in a.arrivals + c.arrivals if t >= reload_at]
            assert len(after) >= 6, after
            assert states[key(a.port)].healthy is True  # two passes after the fix
            # Dropping every path stops every task.
            checker.update(*compile_config({"routers": [route("/x", [backend(a.port, path=None)])]}, states))
            await asyncio.sleep(0.05)
            assert checker.tasks == 0 and not checker.targets
            await checker.stop()

    run(scenario)


def test_the_gateway_runs_the_checker_in_its_lifespan_and_exports_metrics() -> None:
    from kairos.gateway import Gateway
    from kairos.observability.metrics import MetricsEndpoint
    from kairos.settings import Settings

    async def scenario() -> None:
        async with upstreams(2) as (a, b):
            a.mode("fail")
            config = {
                "version": 1,
                "health_check": {"interval_ms": 100, "timeout_ms": 100, "unhealthy_threshold": 1},
                "routers": [route("/x", [backend(a.port), backend(b.port)])],
            }
            gateway = Gateway(Settings(), config)
            checker = gateway.health_checker
            assert not running(checker) and checker.tasks == 0  # nothing before the lifespan
            assert a.arrivals == []
            await gateway.startup()
            try:
                assert running(checker) and checker.tasks == 2
                await asyncio.sleep(0.35)
                assert not gateway.backend_states[key(a.port)].healthy
                assert gateway.backend_states[key(b.port)].healthy
                text = generate_latest(MetricsEndpoint(gateway).registry).decode()
                assert f'kairos_upstream_health{{backend="{key(a.port)}",state="unhealthy"}} 1.0' in text
                assert f'kairos_upstream_health{{backend="{key(a.port)}",state="healthy"}} 0.0' in text
                assert f'kairos_upstream_health{{backend="{key(b.port)}",state="healthy"}} 1.0' in text
                assert (
                    f'kairos_upstream_health_checks_total{{backend="{key(a.port)}",result="failure"}}' in text
                )
                # A reload through the gateway re-plans: b only.
                gateway.apply(load_data({**config, "routers": [route("/x", [backend(b.port)])]}))
                await asyncio.sleep(0.05)
                assert list(checker.targets) == [key(b.port)] and checker.tasks == 1
            finally:
                await gateway.shutdown()
            assert not running(checker) and checker.tasks == 0

    run(scenario)
