"""Active health checks through the real gateway (uvicorn subprocess) and two real upstreams whose
health endpoint can be switched to fail or hang (tests/servers/switchable_upstream.py).

The tests run in file order on one gateway and one pair of upstreams; each leaves both upstreams
healthy again.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Server, backend, free_port, gateway_server, route, server_process

INTERVAL_MS = 200
TIMEOUT_MS = 150
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 2


def switchable(module_tmp: Path, name: str) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.switchable_upstream", "--port", str(port), "--name", name]
    with server_process(args, port, module_tmp / f"switchable-{name}-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def a(module_tmp: Path) -> Iterator[Server]:
    yield from switchable(module_tmp, "a")


@pytest.fixture(scope="module")
def b(module_tmp: Path) -> Iterator[Server]:
    yield from switchable(module_tmp, "b")


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, a: Server, b: Server) -> Iterator[Server]:
    config = {
        "version": 1,
        "health_check": {
            "interval_ms": INTERVAL_MS,
            "timeout_ms": TIMEOUT_MS,
            "unhealthy_threshold": UNHEALTHY_THRESHOLD,
            "healthy_threshold": HEALTHY_THRESHOLD,
        },
        "routers": [
            route(
                "/hc/whoami",
                "/whoami",
                [backend(a, health_check_path="/healthz"), backend(b, health_check_path="/healthz")],
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def key(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def set_mode(server: Server, mode: str) -> float:
    """Switches the upstream's /healthz; returns the time of the switch."""
    httpx.post(f"{server.url}/control/mode/{mode}", timeout=5).raise_for_status()
    return time.time()


def arrivals(server: Server) -> list[float]:
    return list(httpx.get(f"{server.url}/control/probes", timeout=5).json()["arrivals"])


def metrics(gateway: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def health(gateway: Server, server: Server) -> str:
    values = metrics(gateway)
    states = [
        state
        for state in ("healthy", "unhealthy")
        if values.get(("kairos_upstream_health", (("backend", key(server)), ("state", state)))) == 1
    ]
    assert len(states) == 1, states
    return states[0]


def probes(gateway: Server, server: Server, result: str) -> float:
    labels = (("backend", key(server)), ("result", result))
    return metrics(gateway).get(("kairos_upstream_health_checks_total", labels), 0)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Polls every 20 ms; returns the time the condition held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def served_by(gateway: Server, count: int) -> Counter[str]:
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        names: Counter[str] = Counter()
        for _ in range(count):
            response = client.get("/hc/whoami")
            assert response.status_code == 200, response.text  # zero errors
            names[response.json()["server"]] += 1
    return names


def log_lines(gateway: Server, text: str) -> list[str]:
    return [line for line in gateway.output().splitlines() if text in line]


def phase_offset(first: list[float], second: list[float]) -> float:
    """Median time from each probe of one backend to the other's next probe within one interval."""
    interval = INTERVAL_MS / 1000
    offsets = [later - earlier for earlier in first for later in second if 0 <= later - earlier < interval]
    assert len(offsets) >= 3, (first, second)
    return statistics.median(offsets)


def test_probes_are_spread_periodic_and_independent_of_traffic(gateway: Server, a: Server, b: Server) -> None:
    time.sleep(1.0)
    # Two backends: each is probed half an interval out of phase with the other (+ jitter <= 10 %).
    # Judged on the median over every probe so far, not on the first pair, whose arrival a busy
    # machine can delay by a few tens of ms (connection set-up at startup).
    assert 0.06 <= phase_offset(arrivals(a), arrivals(b)) <= 0.14
    began = time.time()
    assert sum(served_by(gateway, 200).values()) == 200
    time.sleep(max(0.0, 1.0 - (time.time() - began)))
    ended = time.time()
    elapsed = ended - began
    for name, server in (("a", a), ("b", b)):
        times = arrivals(server)
        # The probes that arrived while the traffic ran (the upstream stamps them with the same
        # clock): one per interval whatever the traffic, 200 requests did not add probes. One more
        # than the interval allows may come when a busy machine (xdist, 2 cores) delays a probe
        # into the next slot, and one fewer at each end of the window.
        new = sum(began <= arrival <= ended for arrival in times)
        assert elapsed / 0.22 - 2 <= new <= elapsed / 0.2 + 2, (name, new, elapsed)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert 0.18 <= statistics.median(gaps) <= 0.24, gaps
    user_agent = httpx.get(f"{a.url}/control/probes", timeout=5).json()["user_agent"]
    assert user_agent.startswith("Kairos-HealthCheck/")
    # Both healthy and both in the rotation; the gauge has one series per state.
    assert health(gateway, a) == health(gateway, b) == "healthy"
    values = metrics(gateway)
    assert values[("kairos_upstream_health", (("backend", key(b)), ("state", "unhealthy")))] == 0
    assert probes(gateway, a, "success") >= 5
    assert set(served_by(gateway, 20)) == {"a", "b"}


def test_a_failing_backend_leaves_the_rotation_and_comes_back(gateway: Server, a: Server, b: Server) -> None:
    failed_at = set_mode(b, "fail")
    unhealthy_at = wait_until(lambda: health(gateway, b) == "unhealthy")
    # It took unhealthy_threshold failed probes (the ones after the switch), not fewer.
    assert len([t for t in arrivals(b) if failed_at <= t <= unhealthy_at]) >= UNHEALTHY_THRESHOLD
    assert probes(gateway, b, "failure") >= UNHEALTHY_THRESHOLD
    assert health(gateway, a) == "healthy"
    assert served_by(gateway, 40) == Counter({"a": 40})  # every request to the healthy one, no error
    lines = log_lines(gateway, f"backend {key(b)} is unhealthy")  # one line per transition
    assert len(lines) == 1 and lines[0].endswith(
        f"health check: backend {key(b)} is unhealthy after {UNHEALTHY_THRESHOLD} consecutive failed "
        "probes (last: unexpected status HTTP 503)"
    )

    fixed_at = set_mode(b, "ok")
    healthy_at = wait_until(lambda: health(gateway, b) == "healthy")
    assert len([t for t in arrivals(b) if fixed_at <= t <= healthy_at]) >= HEALTHY_THRESHOLD
    lines = log_lines(gateway, f"backend {key(b)} is healthy again")
    assert len(lines) == 1 and f"after {HEALTHY_THRESHOLD} consecutive passed probes (HTTP 200)" in lines[0]
    assert served_by(gateway, 20) == Counter({"a": 10, "b": 10})  # round robin over both again


def test_a_probe_that_hangs_past_timeout_ms_is_a_failure(gateway: Server, a: Server, b: Server) -> None:
    timeouts = probes(gateway, a, "timeout")
    set_mode(a, "hang")
    wait_until(lambda: health(gateway, a) == "unhealthy")
    assert probes(gateway, a, "timeout") - timeouts >= UNHEALTHY_THRESHOLD
    assert health(gateway, b) == "healthy"
    assert served_by(gateway, 20) == Counter({"b": 20})
    lines = log_lines(gateway, f"backend {key(a)} is unhealthy")
    assert len(lines) == 1 and f"(last: no answer within {TIMEOUT_MS} ms)" in lines[0]
    # Probes of one backend never pile up: one hanging probe at a time, one per interval at most.
    window = [t for t in arrivals(a) if t >= time.time() - 1.0]
    assert len(window) <= 1.0 / (INTERVAL_MS / 1000) + 1
    set_mode(a, "ok")
    wait_until(lambda: health(gateway, a) == "healthy")
    assert set(served_by(gateway, 20)) == {"a", "b"}
