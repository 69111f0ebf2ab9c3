"""The shared circuit breaker's script and mirrors against a real redis-server: several ``SharedBreakers``
in one process stand for replicas (each its own client, replica id and per-replica breaker), so the
rules that must hold across replicas are checked on the real script: the replicas' failures add up,
a success on any resets them, half-open probes are limited in total, a probe slot's lease frees it,
the ratio mode counts every replica's outcomes, and an unreachable Redis hands over to each replica's
own breaker. The keys of one breaker share a Redis Cluster slot, and a real three-master cluster runs
the script (and the shared AI decision cache's)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.crc import key_slot

from kairos.ai.shared_cache import SharedDecisionCache
from kairos.config import load_data
from kairos.config.breaker import BackendCircuitBreakerConfig
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from kairos.resilience.shared_breaker import SharedBreakers, SharedCircuit, breaker_keys
from kairos.routing.route import compile_route
from tests.processes import free_port, server_process

_BACKENDS = count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(**overrides: Any) -> BackendCircuitBreakerConfig:
    return BackendCircuitBreakerConfig.model_validate({"shared": True, **overrides})


@pytest.fixture
def backend() -> str:
    """A backend key no other test uses (the tests share one redis-server)."""
    return f"http://10.9.{next(_BACKENDS)}.1:8080"


@pytest.fixture
async def replicas(redis: str) -> AsyncIterator[list[SharedBreakers]]:
    async with AsyncExitStack() as stack:
        stores = [SharedBreakers(redis) for _ in range(3)]
        for store in stores:
            stack.push_async_callback(store.close)
        yield stores


def attach(store: SharedBreakers, key: str) -> SharedCircuit:
    """What ``SharedBreakers.update`` does for a backend of a shared route."""
    breaker = CircuitBreaker()
    circuit = store.circuits[key] = breaker.shared = SharedCircuit(store, key, breaker)
    return circuit


async def attempt(circuit: SharedCircuit, cfg: BackendCircuitBreakerConfig, failed: bool) -> bool:
    """One attempt as the middleware makes it; False when the shared state refused it."""
    admission = await circuit.admit(cfg, 5000, time.monotonic())
    assert admission is not None, "redis is reachable"
    if not admission.admitted:
        return False
    await circuit.record(cfg, failed, admission.ticket)
    return True


def test_the_keys_of_one_breaker_share_a_cluster_slot() -> None:
    for key in ("http://10.0.0.5:8080", "https://api.example.com:443", "ws://[::1]:9000", "http://a}b{c:1"):
        keys = breaker_keys(key)
        assert len(keys) == 3 and all(k.startswith("kairos:breaker:") for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    slots = {key_slot(breaker_keys(f"http://10.0.0.{n}:80")[0].encode()) for n in range(20)}
    assert len(slots) > 10  # different backends spread over the cluster


@pytest.mark.anyio
async def test_the_replicas_failures_add_up_and_every_replica_then_refuses(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_threshold=3, reset_timeout_ms=60000)
    a, b, c = (attach(store, backend) for store in replicas)
    assert await attempt(a, cfg, failed=True)
    assert await attempt(b, cfg, failed=True)
    assert a.state is CLOSED and b.failures == 2  # each answer brings the shared count
    assert await attempt(c, cfg, failed=True)  # the third failure, on a third replica: open
    assert c.state is OPEN and c.breaker.opened == 1
    # a and b still hold the state they saw; once it is older than 250 ms they read it again.
    a.fetched = b.fetched = float("-inf")
    assert not await attempt(a, cfg, failed=False)
    assert not await attempt(b, cfg, failed=False)
    assert a.blocks(time.monotonic()) and 59 < a.retry_after(time.monotonic()) <= 60
    assert a.breaker.blocks(time.monotonic())  # the balancer's question reads the shared view
    assert a.breaker.state == CLOSED  # the replica's own breaker was never used
    assert [store.failures for store in replicas] == [0, 0, 0]


@pytest.mark.anyio
async def test_a_url_that_decodes_replies_works_the_same(redis: str, backend: str) -> None:
    cfg = config(failure_threshold=2, reset_timeout_ms=60000)
    store = SharedBreakers(redis + "?decode_responses=true")
    try:
        circuit = attach(store, backend)
        assert await attempt(circuit, cfg, failed=True) and await attempt(circuit, cfg, failed=True)
        assert circuit.state_at(time.monotonic()) == OPEN and circuit.breaker.opened == 1
        circuit.fetched = float("-inf")
        assert not await attempt(circuit, cfg, failed=True)
        assert circuit.breaker.opened == 1  # the same opening seen again is not counted again
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_success_on_any_replica_resets_the_count(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_threshold=3)
    a, b, _ = (attach(store, backend) for store in replicas)
    for _ in range(2):
        assert await attempt(a, cfg, failed=True)
    await b.refresh(cfg)
    assert b.failures == 2
    assert await attempt(b, cfg, failed=False)  # a count to reset: sent
    assert b.failures == 0
    for _ in range(2):
        assert await attempt(a, cfg, failed=True)
    assert a.state is CLOSED and a.failures == 2


@pytest.mark.anyio
async def test_successes_with_nothing_to_reset_cost_no_redis_call(
    replicas: list[SharedBreakers], backend: str, redis: str
) -> None:
    cfg = config(failure_threshold=3)
    a = attach(replicas[0], backend)
    client = replicas[0]._client
    assert client is not None
    before = (await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    for _ in range(100):
        assert await attempt(a, cfg, failed=False)
    after = (await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    assert after - before == 1  # the first attempt read the state; the 99 others were answered here


@pytest.mark.anyio
async def test_half_open_probes_are_limited_across_replicas(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_threshold=1, reset_timeout_ms=100, half_open_max_calls=2, success_threshold=2)
    a, b, c = (attach(store, backend) for store in replicas)
    assert await attempt(a, cfg, failed=True)
    assert a.state is OPEN
    await asyncio.sleep(0.15)
    for circuit in (a, b, c):
        circuit.fetched = float("-inf")
    admissions = await asyncio.gather(
        *(circuit.admit(cfg, 5000, time.monotonic()) for circuit in (a, b, c, a, b, c))
    )
    probes = [item for item in admissions if item is not None and item.admitted]
    assert len(probes) == 2 and all(item.ticket for item in probes)  # two in total, not two each
    assert all(item is not None and not item.admitted for item in admissions if item not in probes)
    holders = [
        circuit for circuit, item in zip((a, b, c, a, b, c), admissions, strict=True) if item in probes
    ]
    assert c.breaker.state_at(time.monotonic()) == HALF_OPEN or c.state is HALF_OPEN
    for circuit, probe in zip(holders, probes, strict=True):
        await circuit.record(cfg, False, probe.ticket)
    assert holders[-1].state is CLOSED  # success_threshold probes succeeded: closed for everyone
    c.fetched = float("-inf")
    assert await attempt(c, cfg, failed=False) and c.state is CLOSED


@pytest.mark.anyio
async def test_a_failed_probe_reopens_and_a_stale_ticket_is_ignored(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_threshold=1, reset_timeout_ms=100, success_threshold=1)
    a, b, _ = (attach(store, backend) for store in replicas)
    assert await attempt(a, cfg, failed=True)
    await asyncio.sleep(0.12)
    first = await a.admit(cfg, 5000, time.monotonic())
    assert first is not None and first.admitted and first.ticket is not None
    await a.record(cfg, True, first.ticket)  # the probe failed: open again, a new period
    assert a.state is OPEN and a.breaker.opened == 2
    await a.record(cfg, False, first.ticket)  # its ticket again: ignored, still open
    assert a.state is OPEN
    await asyncio.sleep(0.12)
    b.fetched = float("-inf")
    second = await b.admit(cfg, 5000, time.monotonic())
    assert second is not None and second.ticket is not None and second.ticket != first.ticket
    await b.record(cfg, False, second.ticket)
    assert b.state is CLOSED


@pytest.mark.anyio
async def test_a_released_or_expired_probe_slot_is_free_again(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_threshold=1, reset_timeout_ms=50, half_open_max_calls=1)
    a, b, _ = (attach(store, backend) for store in replicas)
    assert await attempt(a, cfg, failed=True)
    await asyncio.sleep(0.08)
    held = await a.admit(cfg, 5000, time.monotonic())
    assert held is not None and held.ticket is not None
    b.fetched = float("-inf")
    refused = await b.admit(cfg, 5000, time.monotonic())
    assert refused is not None and not refused.admitted and refused.wait == 0.0
    a.release(held.ticket)  # the client left: the slot goes back (in the background)
    await asyncio.sleep(0.05)
    b.fetched = float("-inf")
    taken = await b.admit(cfg, 200, time.monotonic())  # a 200 ms lease, then b "dies" holding it
    assert taken is not None and taken.ticket is not None
    a.fetched = float("-inf")
    again = await a.admit(cfg, 5000, time.monotonic())
    assert again is not None and not again.admitted
    await asyncio.sleep(0.25)
    a.fetched = float("-inf")
    after_lease = await a.admit(cfg, 5000, time.monotonic())
    assert after_lease is not None and after_lease.ticket is not None


@pytest.mark.anyio
async def test_ratio_mode_counts_every_replicas_outcomes(
    replicas: list[SharedBreakers], backend: str
) -> None:
    cfg = config(failure_rate_threshold=0.5, window_ms=10000, minimum_requests=10, reset_timeout_ms=60000)
    a, b, _ = (attach(store, backend) for store in replicas)
    for _ in range(6):
        assert await attempt(a, cfg, failed=False)  # counted here, sent with the next call
    assert a.pending == 6
    await a.refresh(cfg)
    assert a.pending == 0
    for _ in range(3):
        assert await attempt(b, cfg, failed=True)
    assert b.state is CLOSED  # 3 of 9: under the rate
    for _ in range(3):
        assert await attempt(b, cfg, failed=True)  # 6 of 12
    assert b.state_at(time.monotonic()) == OPEN


@pytest.mark.anyio
async def test_an_unreachable_redis_hands_over_to_each_replicas_own_breaker(
    redis: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(failure_threshold=2, reset_timeout_ms=60000)
    store = SharedBreakers(redis)
    try:
        circuit = attach(store, backend)
        for _ in range(2):
            assert await attempt(circuit, cfg, failed=True)
        assert circuit.state is OPEN
    finally:
        await store.close()
    dead = SharedBreakers(f"redis://127.0.0.1:{free_port()}/0")
    try:
        circuit2 = attach(dead, backend)
        circuit2.state, circuit2.probe_at = OPEN, time.monotonic() + 30  # what it saw before the outage
        with caplog.at_level(logging.WARNING, logger="kairos"):
            assert await circuit2.admit(cfg, 5000, time.monotonic()) is None
            assert await circuit2.admit(cfg, 5000, time.monotonic()) is None  # down: not even tried
        assert not circuit2.usable()
        assert (
            circuit2.breaker.state_at(time.monotonic()) == OPEN
        )  # kept open here until the time Redis had set
        assert 29 < circuit2.breaker.retry_after(time.monotonic()) <= 30
        assert dead.failures == 2
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1 and "per replica" in unreachable[0].getMessage()
        # While down, an outcome is the replica's own breaker's to count (Redis is not even tried).
        other = attach(dead, backend + "0")
        await other.record(cfg, True, None)
        await other.record(cfg, True, None)
        assert other.breaker.state == OPEN and dead.failures == 4
    finally:
        await dead.close()


def table_for(data: dict[str, Any]) -> tuple[Any, list[Any]]:
    loaded = load_data(data, "(test)")
    states: dict[str, Any] = {}
    routes = [compile_route(index, route, states) for index, route in enumerate(loaded.config.routers)]
    return loaded.config, routes


def routes_config(shared: bool, top: bool = False) -> dict[str, Any]:
    def one(path: str, port: int, **extra: Any) -> dict[str, Any]:
        return {"external_path": path, "internal_path": "/", "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": port}], **extra}  # fmt: skip

    data: dict[str, Any] = {
        "version": 1,
        "routers": [
            one("/shared", 9001, circuit_breaker={"shared": shared}),
            one("/plain", 9002, circuit_breaker={}),
            one("/top", 9003),
        ],
    }
    if top:
        data["circuit_breaker"] = {"shared": True}
    return data


def test_update_attaches_shared_views_only_where_a_route_asks(caplog: pytest.LogCaptureFixture) -> None:
    store = SharedBreakers("redis://127.0.0.1:1/0")  # never called here
    config_, routes = table_for(routes_config(shared=True))
    store.update(routes, config_.circuit_breaker, "(test)")
    shared = [route.backends[0].state.breaker.shared is not None for route in routes]
    assert shared == [True, False, False]
    config_, routes2 = table_for(routes_config(shared=True, top=True))
    store.update(routes2, config_.circuit_breaker, "(test)")
    assert [route.backends[0].state.breaker.shared is not None for route in routes2] == [True, False, True]
    config_, routes3 = table_for(routes_config(shared=False))
    store.update(routes3, config_.circuit_breaker, "(test)")
    assert all(route.backends[0].state.breaker.shared is None for route in routes3)
    assert store.circuits == {}
    # Without KAIROS_REDIS_URL: nothing attached, one warning naming the keys.
    local = SharedBreakers(None)
    config_, routes4 = table_for(routes_config(shared=True, top=True))
    with caplog.at_level(logging.WARNING, logger="kairos"):
        local.update(routes4, config_.circuit_breaker, "config.json")
    assert all(route.backends[0].state.breaker.shared is None for route in routes4)
    (warning,) = [r.getMessage() for r in caplog.records if "KAIROS_REDIS_URL" in r.getMessage()]
    assert "circuit_breaker.shared, routers[0].circuit_breaker.shared is true" in warning
    assert "per replica" in warning and warning.startswith("config config.json:")


def test_shared_is_a_backend_breaker_option_only() -> None:
    assert BackendCircuitBreakerConfig().shared is False
    with pytest.raises(Exception, match="shared"):
        BackendCircuitBreakerConfig.model_validate({"shared": "yes"})
    ai = {"provider": "openai", "model": "m", "circuit_breaker": {"shared": True}}
    loaded = load_data({"version": 1, "ai": ai, "routers": []}, "(t)")
    assert any("shared" in str(warning) for warning in loaded.warnings)  # an unknown key there


# -- a real Redis Cluster ---------------------------------------------------------------------------


def cluster_ok(port: int) -> bool:
    with SyncRedis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True) as client:
        return bool(client.execute_command("CLUSTER INFO")["cluster_state"] == "ok")


@pytest.fixture(scope="module")
def cluster(module_tmp: Path) -> Iterator[str]:
    """Three masters, no replicas (as tests/e2e/test_redis_topologies.py starts them)."""
    program = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if program is None or cli is None:
        raise RuntimeError("redis-server is not installed: run `make system-deps`")
    with ExitStack() as stack:
        nodes = []
        for _ in range(3):
            port = free_port()
            home = module_tmp / f"cluster-{port}"
            home.mkdir()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(home), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            log = module_tmp / f"cluster-{port}.log"
            nodes.append(stack.enter_context(server_process(args, port, log, program=program)))
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, timeout=30, capture_output=True)  # fmt: skip
        for node in nodes:
            deadline = time.monotonic() + 10
            while not cluster_ok(node.port):
                assert time.monotonic() < deadline, f"the cluster is not ok on {node.port}"
                time.sleep(0.05)
        yield "redis+cluster://" + addresses[0]


@pytest.mark.anyio
async def test_the_scripts_run_on_a_redis_cluster(cluster: str) -> None:
    """Every key of one breaker (three keys, one script) and of one decision lands on one slot, on
    whichever node holds it: the scripts run on a cluster as on one server."""
    cfg = config(failure_threshold=2, reset_timeout_ms=100, failure_rate_threshold=None)
    stores = [SharedBreakers(cluster), SharedBreakers(cluster)]
    decisions = SharedDecisionCache(cluster)
    try:
        for n in range(6):  # backends on several slots (and so nodes)
            key = f"http://10.8.{n}.1:80"
            a, b = attach(stores[0], key), attach(stores[1], key)
            assert await attempt(a, cfg, failed=True) and await attempt(b, cfg, failed=True)
            assert b.state is OPEN
            await asyncio.sleep(0.11)
            a.fetched = float("-inf")  # a saw the count of 1: it reads the state again (>250 ms)
            probe = await a.admit(cfg, 5000, time.monotonic())
            assert probe is not None and probe.ticket is not None
            await a.record(cfg, False, probe.ticket)
            assert a.state is HALF_OPEN  # one success of the three needed
            await decisions.put(f"route-{n}", bytes([n]) * 16, n % 2, 30.0)
            found = await decisions.get(f"route-{n}", bytes([n]) * 16, 2)
            assert found is not None and found[0] == n % 2 and 29 < found[1] <= 30
        ratio = config(failure_rate_threshold=0.5, minimum_requests=2)
        c = attach(stores[0], "http://10.8.99.1:80")
        assert await attempt(c, ratio, failed=False) and await attempt(c, ratio, failed=True)
        assert c.state is OPEN  # the window key is on the state's slot too
        assert stores[0].failures == stores[1].failures == decisions.failures == 0
    finally:
        for store in stores:
            await store.close()
        await decisions.close()
