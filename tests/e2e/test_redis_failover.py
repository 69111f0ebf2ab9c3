"""Redis failing under load, with real processes on 127.0.0.1 (issue 20): two gateways started as an
operator starts them (``kairos run``), 8 concurrent clients alternating between them, and

- one redis-server killed (SIGKILL, by PID) mid-run and started again, empty, on the same port: every
  request is answered; a fail-open limit admits, a ``fail_closed`` one answers 503
  ``rate_limit_unavailable`` and only while the store is down; the cache is bypassed; each store of
  each gateway logs the outage once and its end once, and ``/metrics`` counts what it cost; then the
  gateways share one limit exactly and one cache again;
- a Sentinel set (master, replica, one sentinel) whose master is stopped: every request is answered
  (fail-open), the sentinel promotes the replica and both gateways find it within 15 s, then share
  one limit exactly again.

The load is bounded (requests per client, an overall deadline, a pause between requests) and every
server is stopped by PID. First, at the store level, the redis-py 8.1 regression the restart showed:
pooled connections the restart closed failed their next call (see ``kairos.redis_outage``).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kairos.cache.entry import CachedResponse
from kairos.cache.redis_store import RedisCacheStore
from kairos.config.ratelimit import RateLimitConfig
from kairos.ratelimit.policy import compile_policy
from kairos.ratelimit.redis_store import RedisStore
from kairos.redis_outage import RETRY_SECONDS
from tests.processes import (
    RedisProcess,
    Server,
    backend,
    free_port,
    kairos_run,
    route,
    server_process,
    stop,
    wait_for_port,
)
from tests.sentinel import SentinelSet, sentinel_servers

CLIENTS = 8  # concurrent clients
PER_CLIENT = 600  # requests each at most (about 50 a second each: the pause below plus the answer)
PAUSE = 0.02  # seconds between two requests of one client: load without taking the machine's cores
DEADLINE = 30.0  # seconds a load may last whatever happens
LOAD_LIMIT = 1_000_000  # the routes under load: never refused by the load itself
EXACT = 10  # the limit two gateways must admit exactly, together
HOST = {"Host": "api.example.com"}  # replicas behind one name see the same Host (the cache key has it)
UNAVAILABLE = "rate_limit_unavailable"


def limit(count: int, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"strategy": "PerIP", "requests_per_window": count, "window_duration": 3600, "burst_allowance": 0,
            "window_type": "FixedWindow", "redis_key_prefix": prefix, **extra}  # fmt: skip


@contextmanager
def restartable_redis(tmp: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(free_port(), tmp)
    process.start()
    try:
        yield process
    finally:
        process.close()


@contextmanager
def two_gateways(tmp: Path, config: dict[str, Any], redis_url: str) -> Iterator[list[Server]]:
    """Two ``kairos run`` replicas on one Redis, started together."""
    env = {"KAIROS_REDIS_URL": redis_url, "KAIROS_DRAIN_DELAY": "0"}
    with ExitStack() as stack:
        servers = [stack.enter_context(kairos_run(tmp, config, env=env, wait=False)) for _ in range(2)]
        for server in servers:
            wait_for_port(server.port, server.process, timeout=30)
            httpx.get(f"{server.url}/ready", timeout=10).raise_for_status()
        yield servers


@pytest.fixture(scope="module")
def cache_upstream(module_tmp: Path) -> Iterator[Server]:
    """tests/servers/cache_upstream.py: answers GET /c/{name} (cacheable) and counts the calls."""
    port = free_port()
    args = ["-m", "tests.servers.cache_upstream", "--port", str(port)]
    with server_process(args, port, module_tmp / f"cache-upstream-{port}.log") as server:
        yield server


def upstream_hits(upstream: Server, name: str) -> int:
    return int(httpx.get(f"{upstream.url}/hits/{name}", timeout=5).json()["hits"])


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def fire(servers: list[Server], path: str, count: int) -> list[int]:
    """``count`` concurrent GETs of ``path`` spread over the gateways; their statuses."""

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=10, headers=HOST) as client:
            urls = [f"{servers[n % len(servers)].url}{path}" for n in range(count)]
            return [answer.status_code for answer in await asyncio.gather(*map(client.get, urls))]

    return asyncio.run(main())


def log_count(server: Server, store: str, event: str) -> int:
    """How often ``server`` logged that its ``store`` ("rate limit store", "cache store") became
    ``event`` ("unreachable", "reachable again")."""
    return len(re.findall(rf"{store} redis at \S+ is {event}\b", server.output()))


# -- the load ------------------------------------------------------------------------------------------


@dataclass
class Answer:
    gateway: int
    path: str
    sent: float  # time.monotonic()
    received: float
    status: int  # 0: no answer (the error is in ``error``)
    decided: bool = False  # carries the rate-limit headers: a store decided (not failed open)
    kind: str = ""  # the error body's "type"
    error: str = ""


@dataclass
class Load:
    """``CLIENTS`` concurrent clients, each sending ``targets`` in turn, starting at its own offset
    (consecutive targets alternate between the gateways), until stopped, ``PER_CLIENT`` requests or
    ``DEADLINE``."""

    targets: list[tuple[int, str, str]]  # (gateway index, base URL, path)
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0

    async def _client(self, http: httpx.AsyncClient, offset: int, stopping: asyncio.Event) -> None:
        deadline = time.monotonic() + DEADLINE
        for n in range(PER_CLIENT):
            if stopping.is_set() or time.monotonic() > deadline:
                return
            gateway, base, path = self.targets[(offset + n) % len(self.targets)]
            self.sent += 1
            sent = time.monotonic()
            try:
                response = await http.get(base + path)
            except httpx.HTTPError as exc:
                self.answers.append(Answer(gateway, path, sent, time.monotonic(), 0, error=repr(exc)))
            else:
                kind = error_type(response) if response.status_code >= 400 else ""
                decided = "x-ratelimit-remaining" in response.headers
                answer = Answer(gateway, path, sent, time.monotonic(), response.status_code, decided, kind)
                self.answers.append(answer)
            await asyncio.sleep(PAUSE)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        stopping = asyncio.Event()
        limits = httpx.Limits(max_connections=CLIENTS * 2)
        async with httpx.AsyncClient(timeout=5, headers=HOST, limits=limits) as http:
            tasks = [asyncio.create_task(self._client(http, n, stopping)) for n in range(CLIENTS)]
            try:
                yield self
            finally:
                stopping.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)

    def through(self, gateway: int) -> list[Answer]:
        return [a for a in self.answers if a.gateway == gateway]


def error_type(response: httpx.Response) -> str:
    """The "type" of a gateway's JSON error body ("rate_limit_unavailable", ...)."""
    try:
        return str(response.json().get("type", ""))
    except ValueError:
        return f"not JSON: {response.text[:80]!r}"


def targets(servers: list[Server], paths: list[str]) -> list[tuple[int, str, str]]:
    """Every (gateway, path) pair, ordered so that consecutive ones alternate between the gateways."""
    count = len(servers) * len(paths)
    assert math.gcd(len(servers), len(paths)) == 1  # so that n -> (n % gateways, n % paths) meets every pair
    return [(n % len(servers), servers[n % len(servers)].url, paths[n % len(paths)]) for n in range(count)]


# -- the store level: a restart's closed pooled connections ------------------------------------------


def test_connections_a_restart_closed_are_replaced_not_failed(tmp_path: Path) -> None:
    """redis-py 8.1's asyncio pool skipped its check of a pooled connection (maintenance notifications
    on by default, redis/redis-py#4252): after a restart every connection idle in a store's pool failed
    its next call ("Connection closed by server"), each failure another outage second for the store.
    ``connect`` turns the notifications off: the pool reconnects them and no call fails."""
    rule = compile_policy(RateLimitConfig.model_validate(limit(LOAD_LIMIT, "restart"))).limits

    async def main(redis: RedisProcess) -> tuple[int, int]:
        limiter, cache = RedisStore(redis.url), RedisCacheStore(redis.url)
        try:
            now = time.time()
            await cache.set("k", CachedResponse(200, [], b"body", b'"e"', now, now + 60))
            # Several connections in each pool: as many calls at once.
            await asyncio.gather(*(limiter.acquire(["k"], rule) for _ in range(8)))
            await asyncio.gather(*(cache.get("k") for _ in range(8)))
            redis.kill()
            await asyncio.to_thread(redis.start)  # empty, on the same port
            await asyncio.sleep(0.05)  # the client's event loop reads the closed connections' EOF
            verdicts = await asyncio.gather(*(limiter.acquire(["k"], rule) for _ in range(8)))
            assert all(v.allowed for [v] in verdicts)
            assert await asyncio.gather(*(cache.get("k") for _ in range(8))) == [None] * 8  # empty
            return limiter.failures, cache.failures
        finally:
            await limiter.close()
            await cache.close()

    with restartable_redis(tmp_path) as redis:
        assert asyncio.run(main(redis)) == (0, 0)


# -- one redis-server killed and restarted under load --------------------------------------------------


@pytest.fixture(scope="module")
def redis(module_tmp: Path) -> Iterator[RedisProcess]:
    with restartable_redis(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def gateways(module_tmp: Path, redis: RedisProcess, cache_upstream: Server) -> Iterator[list[Server]]:
    up = [backend(cache_upstream)]
    config = {
        "version": 1,
        "routers": [
            route("/open", "/c/open", up, rate_limit=limit(LOAD_LIMIT, "open")),
            route("/closed", "/c/closed", up, rate_limit=limit(LOAD_LIMIT, "closed", fail_closed=True)),
            route("/cached/{name}", "/c/{name}", up, cache={"ttl_secs": 60, "storage_uri": redis.url}),
            route("/before", "/c/before", up, rate_limit=limit(EXACT, "before")),
            route("/after", "/c/after", up, rate_limit=limit(EXACT, "after")),
        ],
    }
    with two_gateways(module_tmp, config, redis.url) as servers:
        yield servers


def test_redis_killed_and_restarted_under_load(
    gateways: list[Server], redis: RedisProcess, cache_upstream: Server
) -> None:
    codes = fire(gateways, "/before", 4 * EXACT)
    assert (codes.count(200), codes.count(429)) == (EXACT, 3 * EXACT)  # one limit for both, to begin with
    load = Load(targets(gateways, ["/open", "/closed", "/cached/load"]))

    async def scenario() -> tuple[float, float]:
        async with load.running():
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            redis.kill()  # by PID, mid-run
            await asyncio.sleep(2.0)
            await asyncio.to_thread(redis.start)  # the same port, empty
            restarted = time.monotonic()
            await asyncio.sleep(2.0)
        return killed, restarted

    killed, restarted = asyncio.run(scenario())

    # Every request sent was answered, and only as its route may answer.
    assert len(load.answers) == load.sent
    assert [a for a in load.answers if a.status == 0] == []
    allowed = {"/open": {200, 429}, "/closed": {200, 429, 503}, "/cached/load": {200}}
    assert [a for a in load.answers if a.status not in allowed[a.path]] == []
    refused = [a for a in load.answers if a.status == 503]
    assert refused and {a.kind for a in refused} == {UNAVAILABLE}
    assert all(killed <= a.received for a in refused)  # never before the kill
    # The fail-open route stepped aside while the store was down: admitted without a decision.
    assert any(not a.decided for a in load.answers if a.path == "/open" and a.status == 200)

    for index in range(len(gateways)):
        answers = [a for a in load.through(index) if a.path in ("/open", "/closed")]
        # Back once the store's second of skipping Redis after its last failure has passed...
        decided = [a.sent for a in answers if a.decided and a.sent > restarted]
        assert decided, f"gateway {index}: no decision after the restart"
        recovered = min(decided)
        assert recovered - restarted < RETRY_SECONDS + 1.0, (
            f"gateway {index}: back after {recovered - restarted}"
        )
        # ... and for good: not another outage (the pooled connections the restart closed).
        later = [a for a in answers if a.sent > recovered + 0.2]
        assert later and all(a.decided and a.status == 200 for a in later), f"gateway {index}: down again"
        assert any(a.status == 200 for a in later if a.path == "/closed")

    # The two gateways share one limit exactly again (a fresh key: the restarted Redis is empty)...
    codes = fire(gateways, "/after", 4 * EXACT)
    assert (codes.count(200), codes.count(429)) == (EXACT, 3 * EXACT)
    # ... and one cache: stored through one, a hit through the other.
    first = httpx.get(f"{gateways[0].url}/cached/after-restart", headers=HOST, timeout=5)
    assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
    time.sleep(0.1)
    second = httpx.get(f"{gateways[1].url}/cached/after-restart", headers=HOST, timeout=5)
    assert (second.status_code, second.headers["x-cache"]) == (200, "HIT")
    assert upstream_hits(cache_upstream, "after-restart") == 1

    for index, gateway in enumerate(gateways):
        # Logged once when each store lost Redis and once when it found it again.
        for store in ("rate limit store", "cache store"):
            logged = (log_count(gateway, store, "unreachable"), log_count(gateway, store, "reachable again"))
            assert logged == (1, 1), f"gateway {index}, {store}: {logged}"
        # What the outage cost, counted: every failed decision was a 503 or a fail-open admission.
        errors = metric(gateway, "kairos_rate_limit_store_errors_total")
        failed_open = metric(gateway, "kairos_rate_limit_fail_open_total")
        refused_here = sum(1 for a in refused if a.gateway == index)
        assert failed_open >= 1 and refused_here >= 1
        assert errors == failed_open + refused_here
        assert metric(gateway, "kairos_cache_store_errors_total") >= 1
    print(f"\n{load.sent} requests; {len(refused)} answered 503 while Redis was down")


# -- a Sentinel failover under load ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_set(module_tmp: Path) -> Iterator[SentinelSet]:
    with sentinel_servers(module_tmp) as servers:
        yield servers


@pytest.fixture(scope="module")
def sentinel_gateways(
    module_tmp: Path, sentinel_set: SentinelSet, cache_upstream: Server
) -> Iterator[list[Server]]:
    up = [backend(cache_upstream)]
    config = {
        "version": 1,
        "routers": [
            route("/open", "/c/open", up, rate_limit=limit(LOAD_LIMIT, "s-open")),
            route("/before", "/c/before", up, rate_limit=limit(EXACT, "s-before")),
            route("/after", "/c/after", up, rate_limit=limit(EXACT, "s-after")),
        ],
    }
    with two_gateways(module_tmp, config, sentinel_set.url) as servers:
        yield servers


def test_sentinel_failover_under_load(sentinel_gateways: list[Server], sentinel_set: SentinelSet) -> None:
    gateways = sentinel_gateways
    codes = fire(gateways, "/before", 4 * EXACT)
    assert (codes.count(200), codes.count(429)) == (EXACT, 3 * EXACT)
    load = Load(targets(gateways, ["/open"]))

    async def scenario() -> tuple[float, float]:
        async with load.running():
            await asyncio.sleep(0.5)
            stopped = time.monotonic()
            await asyncio.to_thread(stop, sentinel_set.master.process)  # by PID
            promoted = 0.0
            while True:  # bounded: the sentinel promotes the replica, both gateways decide on it
                assert time.monotonic() - stopped < 15, "no failover found by both gateways within 15 s"
                if not promoted:
                    port = await asyncio.to_thread(sentinel_set.master_port)
                    promoted = time.monotonic() if port == sentinel_set.replica.port else 0.0
                elif all(any(a.decided and a.sent > promoted for a in load.through(n)) for n in (0, 1)):
                    break
                await asyncio.sleep(0.1)
            found = time.monotonic() - stopped
            await asyncio.sleep(0.5)
        return promoted - stopped, found

    promoted, found = asyncio.run(scenario())
    assert len(load.answers) == load.sent
    assert [a for a in load.answers if a.status not in (200, 429)] == []  # none failed, none timed out
    assert sentinel_set.master_port() == sentinel_set.replica.port
    assert found < 15
    for index, gateway in enumerate(gateways):
        # It lost the master, admitted without a decision meanwhile (fail-open), and said so.
        failed_open = metric(gateway, "kairos_rate_limit_fail_open_total")
        assert failed_open >= 1
        assert metric(gateway, "kairos_rate_limit_store_errors_total") == failed_open
        lost = log_count(gateway, "rate limit store", "unreachable")
        assert lost >= 1 and log_count(gateway, "rate limit store", "reachable again") == lost, index
    codes = fire(gateways, "/after", 4 * EXACT)
    assert (codes.count(200), codes.count(429)) == (EXACT, 3 * EXACT)  # one limit again, on the new master
    print(
        f"\n{load.sent} requests; replica promoted after {promoted:.1f} s, found by both after {found:.1f} s"
    )
