"""Live reload triggers (kairos/reload.py): a change of the config file and SIGHUP, against the real
gateway under uvicorn, plus the watcher's lifecycle in-process (prompt shutdown, no thread left,
the SIGHUP handler installed only where it is safe and removed at shutdown)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.gateway import Gateway
from kairos.reload import SighupReload
from kairos.settings import Settings
from tests.processes import Server, backend, gateway_server, route

WAIT = 15.0  # generous: the machine is shared


def config_with(upstream: Server, *extra: dict[str, Any], timeout_ms: int = 5000) -> dict[str, Any]:
    routes = [route("/lr/base", "/whoami", [backend(upstream)], timeout_ms=timeout_ms), *extra]
    return {"version": 1, "routers": routes}


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, config_with(upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def config_file(gateway: Server) -> Path:
    return gateway.log.with_name(f"config-{gateway.port}.json")


@pytest.fixture
def restore(config_file: Path, upstream: Server, client: httpx.Client) -> Iterator[None]:
    """Each test ends with the base config applied (a distinct timeout makes the bytes differ from
    whatever runs, so the restore is a reload we can wait for)."""
    yield
    before = generation(client)
    write(config_file, config_with(upstream, timeout_ms=4000 + before))
    wait_until(lambda: generation(client) > before, "the base config back")


def write(path: Path, config: dict[str, Any] | str) -> None:
    path.write_text(config if isinstance(config, str) else json.dumps(config))


def generation(client: httpx.Client) -> int:
    return int(client.get("/ready").json()["config_generation"])


def count(server: Server, pattern: str) -> int:
    return len(re.findall(pattern, server.output()))


def test_edit_adds_a_route_without_restart(
    gateway: Server, config_file: Path, upstream: Server, client: httpx.Client, restore: None
) -> None:
    before = generation(client)
    assert client.get("/lr/new").status_code == 404
    write(config_file, config_with(upstream, route("/lr/new", "/whoami", [backend(upstream)])))
    wait_until(lambda: client.get("/lr/new").status_code == 200, "the new route")
    assert client.get("/lr/new").json() == {"server": "a"}
    assert generation(client) > before
    assert re.search(r"config \S+ applied \(file\)", gateway.output())


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{ this is not json", "JSON"),
        ("bad-port", "port"),
    ],
)
def test_broken_file_keeps_the_old_config(
    gateway: Server,
    config_file: Path,
    upstream: Server,
    client: httpx.Client,
    restore: None,
    content: str,
    why: str,
) -> None:
    before = generation(client)
    rejected = count(gateway, r"config \S+ rejected \(file\)")
    if content == "bad-port":
        bad = route("/lr/bad", "/whoami", [{"host": "http://127.0.0.1", "port": 70000, "weight": 1}])
        content = json.dumps(config_with(upstream, bad))
    write(config_file, content)
    wait_until(lambda: count(gateway, r"config \S+ rejected \(file\)") > rejected, "the rejection log line")
    line = [ln for ln in gateway.output().splitlines() if "rejected (file)" in ln][-1]
    assert f"still serving generation {before}" in line
    assert why.lower() in line.lower(), line
    # The old config keeps serving, and /metrics says why where the reload counter exists.
    assert client.get("/lr/base").json() == {"server": "a"}
    assert generation(client) == before
    metrics = client.get("/metrics").text
    if "kairos_config_reloads_total" in metrics:
        assert re.search(r'kairos_config_reloads_total\{result="failure"\} [1-9]', metrics)


def test_sighup_reloads(gateway: Server, config_file: Path, upstream: Server, client: httpx.Client) -> None:
    before = generation(client)
    signalled = count(gateway, r"applied \(signal\)")
    os.kill(gateway.pid, signal.SIGHUP)
    # force=True: an explicit SIGHUP re-applies even an unchanged file.
    wait_until(lambda: generation(client) > before, "a new generation after SIGHUP")
    assert count(gateway, r"applied \(signal\)") == signalled + 1
    assert client.get("/lr/base").status_code == 200


def test_atomic_replace_is_seen(
    gateway: Server, config_file: Path, upstream: Server, client: httpx.Client, restore: None
) -> None:
    """Editors and ConfigMaps write a temporary file and rename it over the config."""
    temporary = config_file.with_name(config_file.name + ".swp")
    write(temporary, config_with(upstream, route("/lr/renamed", "/whoami", [backend(upstream)])))
    os.replace(temporary, config_file)
    wait_until(lambda: client.get("/lr/renamed").status_code == 200, "the route from the renamed file")


def test_burst_of_writes_costs_few_reloads(
    gateway: Server, config_file: Path, upstream: Server, client: httpx.Client, restore: None
) -> None:
    before = generation(client)
    for n in range(10):
        extra = route(f"/lr/burst{n}", "/whoami", [backend(upstream)])
        write(config_file, config_with(upstream, extra, timeout_ms=5000 + n))
        time.sleep(0.01)
    wait_until(lambda: client.get("/lr/burst9").status_code == 200, "the last write of the burst")
    time.sleep(1.5)  # let any late batch land before counting
    applied = generation(client) - before
    print(f"10 writes -> {applied} reload(s)")
    assert 1 <= applied <= 3
    assert client.get("/lr/burst0").status_code == 404  # the final file is what runs


def test_unrelated_files_do_not_reload(gateway: Server, config_file: Path, client: httpx.Client) -> None:
    before = generation(client)
    for n in range(5):
        config_file.with_name(f"other-{n}.json").write_text("{}")
    time.sleep(1.0)
    assert generation(client) == before


def test_every_worker_picks_up_a_file_change(module_tmp: Path, upstream: Server) -> None:
    """With --workers N each worker watches the file itself: an edit (by hand, or the admin API's
    write in one worker) reaches all of them without a restart."""
    with gateway_server(module_tmp, config_with(upstream), args=("--workers", "2")) as server:
        config_file = server.log.with_name(f"config-{server.port}.json")
        wait_until(lambda: count(server, r"watching \S+ for changes") == 2, "both workers watching")
        write(config_file, config_with(upstream, route("/lr/workers", "/whoami", [backend(upstream)])))
        wait_until(lambda: count(server, r"config \S+ applied \(file\)") == 2, "a reload in each worker")
        with httpx.Client(
            base_url=server.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            for _ in range(20):  # fresh connections: both workers answer some
                assert http.get("/lr/workers").status_code == 200


# -- in-process: the lifecycle --------------------------------------------------------------------


def _config_path(tmp_path: Path, port: int = 9) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"version": 1, "routers": [route("/x", "/x", [backend(port)])]}))
    return path


async def wait_for_generation(gateway: Gateway, wanted: int) -> None:
    deadline = time.monotonic() + WAIT
    while gateway.generation < wanted and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a plain int)
        await asyncio.sleep(0.05)


def test_watcher_starts_and_stops_promptly(tmp_path: Path) -> None:
    path = _config_path(tmp_path)

    async def main() -> tuple[int, float, bool]:
        gateway = Gateway(Settings(config_path=path), path)
        await gateway.startup()
        try:
            assert gateway.config_watcher is not None and gateway.config_watcher.running
            assert any(t.name == "kairos-config-watch" for t in threading.enumerate())
            path.write_text(path.read_text().replace('"/x"', '"/y"', 1))
            await wait_for_generation(gateway, 2)
        finally:
            started = time.monotonic()
            await gateway.shutdown()
            took = time.monotonic() - started
        return gateway.generation, took, gateway.config_watcher is None

    applied, took, cleared = asyncio.run(main())
    assert applied == 2
    assert took < 3.0, f"shutdown took {took:.2f}s"
    assert cleared
    assert not any(t.name == "kairos-config-watch" for t in threading.enumerate())


def test_kubernetes_style_symlink_swap_is_seen(tmp_path: Path) -> None:
    """A ConfigMap volume: config.json -> ..data/config.json, and an update swaps the ..data link
    to a new directory (the file behind the name changes; the name itself is never written)."""
    first, second = tmp_path / "..v1", tmp_path / "..v2"
    first.mkdir()
    second.mkdir()
    _config_path(first, port=9)
    _config_path(second, port=10)
    (tmp_path / "..data").symlink_to(first.name)
    path = tmp_path / "config.json"
    path.symlink_to(Path("..data") / "config.json")

    async def main() -> list[int]:
        gateway = Gateway(Settings(config_path=path), path)
        await gateway.startup()
        try:
            (tmp_path / "..data_tmp").symlink_to(second.name)
            os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
            await wait_for_generation(gateway, 2)
            return [backend.port for route in gateway.table.routes for backend in route.backends]
        finally:
            await gateway.shutdown()

    assert asyncio.run(main()) == [10]


def test_watch_can_be_turned_off(tmp_path: Path) -> None:
    path = _config_path(tmp_path)

    async def main() -> bool:
        gateway = Gateway(Settings(config_path=path, config_watch=False), path)
        await gateway.startup()
        try:
            return gateway.config_watcher is None
        finally:
            await gateway.shutdown()

    assert asyncio.run(main())


def test_sighup_handler_installed_in_main_thread_and_removed(tmp_path: Path) -> None:
    path = _config_path(tmp_path)
    before = signal.getsignal(signal.SIGHUP)
    assert before in (signal.SIG_DFL, signal.SIG_IGN)  # SIG_IGN under nohup: installed over it too

    async def main() -> tuple[bool, int]:
        gateway = Gateway(Settings(config_path=path, config_watch=False), path)
        await gateway.startup()
        try:
            installed = gateway.sighup is not None
            os.kill(os.getpid(), signal.SIGHUP)  # real signal to this process: the handler reloads
            await wait_for_generation(gateway, 2)
            return installed, gateway.generation
        finally:
            await gateway.shutdown()

    installed, applied = asyncio.run(main())
    assert installed and applied == 2
    assert signal.getsignal(signal.SIGHUP) is before  # removed at shutdown: what was there is back


def test_sighup_not_installed_off_the_main_thread_or_over_another_handler(tmp_path: Path) -> None:
    results: list[str | None] = []
    thread = threading.Thread(target=lambda: results.append(SighupReload.why_not()))
    thread.start()
    thread.join()
    assert results[0] is not None and "main thread" in results[0]

    previous = signal.signal(signal.SIGHUP, lambda signum, frame: None)
    try:
        reason = SighupReload.why_not()
        assert reason is not None and "already has a handler" in reason
    finally:
        signal.signal(signal.SIGHUP, previous)
