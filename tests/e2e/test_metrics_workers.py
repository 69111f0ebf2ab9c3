"""``/metrics`` with ``uvicorn --workers 2`` and ``PROMETHEUS_MULTIPROC_DIR``: every scrape, whichever
worker answers it, reports the requests of both workers (kairos/observability/multiprocess.py);
a worker that dies keeps its counts in the totals but not its gauges; ``kairos run --workers 2``
makes (and removes) a temporary directory itself."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Server, backend, free_port, gateway_server, route, server_process

N = 200
ROUTE = "/mw/{id}"
WAIT = 20.0


def config(upstream: Server) -> dict[str, object]:
    return {"version": 1, "routers": [route(ROUTE, "/echo/{id}", [backend(upstream)])]}


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def children(pid: int) -> set[int]:
    """uvicorn's worker processes under the supervisor ``pid`` (from /proc): the children started by
    multiprocessing's spawn (not its resource tracker), still running."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
                found.add(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# No keep-alive: every request opens its own connection, so the kernel hands connections to both
# workers (one client: creating one per request costs an SSL context each).
_FRESH = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def fresh_get(url: str) -> httpx.Response:
    return _FRESH.get(url, headers={"Connection": "close"})


def scrape(url: str) -> dict[str, float]:
    """Sums per (family, sample) for the test route, from a parsed (valid) exposition."""
    text = fresh_get(f"{url}/metrics").text
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") == ROUTE and sample.name in (
                "kairos_requests_total",
                "kairos_request_duration_seconds_count",
            ):
                totals[sample.name] += sample.value
            if sample.name in ("kairos_build_info", "kairos_requests_in_flight", "kairos_uptime_seconds"):
                totals[sample.name + "#series"] += 1
    return totals


def per_pid_requests(directory: Path) -> dict[int, float]:
    """kairos_requests_total of the test route per worker pid, read straight from the mmap files."""
    counts: dict[int, float] = defaultdict(float)
    for path in directory.glob("counter_kairos-*.db"):
        pid = int(path.name.split("-")[1])
        # prometheus_client leaves this function unannotated.
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            if '"kairos_requests_total"' in key and f'"route": "{ROUTE}"' in key:
                counts[pid] += value
    return counts


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Iterator[None]:
    yield
    _FRESH.close()


@pytest.fixture(scope="module")
def multiproc_dir(module_tmp: Path) -> Path:
    directory = module_tmp / "prometheus-multiproc"
    directory.mkdir()
    return directory


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, multiproc_dir: Path) -> Iterator[Server]:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "KAIROS_CONFIG_WATCH": "false"}
    with gateway_server(module_tmp, config(upstream), env=env, args=("--workers", "2")) as server:
        wait_until(lambda: len(children(server.pid)) >= 2, "two workers")
        yield server
        workers = children(server.pid)
    # stop() sent SIGTERM to the supervisor (server.pid): its workers must be gone too
    wait_until(lambda: not any(running(pid) for pid in workers), "the workers to exit")


def assert_every_scrape_says(url: str, expected: int, scrapes: int = 8) -> None:
    def settled() -> bool:
        totals = scrape(url)
        return totals["kairos_requests_total"] == expected

    wait_until(settled, f"a scrape reporting {expected} requests")
    for _ in range(scrapes):  # whichever worker answers, after both synced (≤ 1 s)
        totals = scrape(url)
        assert totals["kairos_requests_total"] == expected, totals
        assert totals["kairos_request_duration_seconds_count"] == expected, totals
        assert totals["kairos_build_info#series"] == 1  # once, not once per worker
        assert totals["kairos_requests_in_flight#series"] == 1
        assert totals["kairos_uptime_seconds#series"] == 1


def test_every_scrape_counts_both_workers(gateway: Server, multiproc_dir: Path) -> None:
    workers = children(gateway.pid)
    assert len(workers) == 2
    for n in range(N):
        response = fresh_get(f"{gateway.url}/mw/{n}")
        assert response.status_code == 200 and response.json()["raw_path"] == f"/echo/{n}"
    assert_every_scrape_says(gateway.url, N)
    served = per_pid_requests(multiproc_dir)
    print(f"\nrequests per worker: {dict(served)}")
    assert set(served) == workers, "both workers served some of the fresh connections"
    assert all(count > 0 for count in served.values())
    assert sum(served.values()) == N


def test_a_dead_worker_keeps_its_counts_but_not_its_gauges(gateway: Server, multiproc_dir: Path) -> None:
    before = per_pid_requests(multiproc_dir)
    expected = int(sum(before.values()))
    victim = max(children(gateway.pid))
    os.kill(victim, signal.SIGKILL)  # no shutdown hook runs: liveness must notice
    wait_until(
        lambda: victim not in children(gateway.pid) and len(children(gateway.pid)) == 2, "a new worker"
    )

    def victim_gauges() -> list[str]:
        return [p.name for p in multiproc_dir.glob(f"gauge_*_kairos-{victim}-*.db")]

    wait_until(lambda: not victim_gauges(), "the dead worker's gauge files to go")
    assert list(multiproc_dir.glob(f"counter_kairos-{victim}-*.db"))  # its counts stay
    assert_every_scrape_says(gateway.url, expected)
    for n in range(10):
        assert fresh_get(f"{gateway.url}/mw/x{n}").status_code == 200
    assert_every_scrape_says(gateway.url, expected + 10)


def families(url: str) -> dict[str, str]:
    """Family name -> type, for the families with at least one sample."""
    text = fresh_get(f"{url}/metrics").text
    return {family.name: family.type for family in text_string_to_metric_families(text) if family.samples}


# Ratios of one process's counts, left out with several workers (kairos/observability/metrics.py):
# compute them in PromQL from the merged counters instead.
SINGLE_PROCESS_ONLY = {"kairos_success_rate", "kairos_response_time_avg"}


def test_single_process_mode_and_the_same_families(
    module_tmp: Path, upstream: Server, gateway: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR, /metrics is the worker's own registry, as before; with it,
    the merged scrape has the same families with the same types."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with gateway_server(module_tmp, config(upstream), env={"KAIROS_CONFIG_WATCH": "false"}) as server:
        for n in range(5):
            assert fresh_get(f"{server.url}/mw/{n}").status_code == 200
        assert scrape(server.url)["kairos_requests_total"] == 5
        single = families(server.url)
    merged = families(gateway.url)
    missing = set(single) - set(merged) - SINGLE_PROCESS_ONLY
    assert not missing, f"families lost in multiprocess mode: {sorted(missing)}"
    assert {name: single[name] for name in merged} == merged  # same types, nothing invented


def test_kairos_run_makes_and_removes_a_temporary_directory(module_tmp: Path, upstream: Server) -> None:
    config_path = module_tmp / "run-workers.json"
    config_path.write_text(json.dumps(config(upstream)))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"KAIROS_WORKERS": "2", "KAIROS_CONFIG_WATCH": "false", "KAIROS_DRAIN_DELAY": "0"})
    args = ["-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port), "--config", str(config_path)]
    log = module_tmp / f"kairos-run-{port}.log"
    with server_process(args, port, log, env) as server:
        wait_until(lambda: len(children(server.pid)) >= 2, "two workers")
        match = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", server.output())
        assert match, server.output()
        directory = Path(match.group(1))
        assert directory.is_dir()
        for n in range(40):
            assert fresh_get(f"{server.url}/mw/{n}").status_code == 200
        assert_every_scrape_says(server.url, 40, scrapes=4)
        workers = children(server.pid)
    assert not directory.exists()  # removed when the supervisor exits
    wait_until(lambda: not any(running(pid) for pid in workers), "the workers to exit")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kairos.app import create_app

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"PROMETHEUS_MULTIPROC_DIR=.*nowhere: not a directory"):
        create_app({"version": 1, "routers": []})
