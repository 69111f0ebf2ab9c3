"""State the replicas share through Redis (``KAIROS_REDIS_URL``), with real processes on 127.0.0.1:
three gateways started as an operator starts them (``kairos run``), one real redis-server, a local
OpenAI-compatible provider (tests/servers/fake_llm.py) and switchable upstreams
(tests/servers/flaky_upstream.py, whose request counts prove when no replica called a backend).

- an AI-routing decision made by one replica is reused by another: the provider is called once;
- a circuit breaker with ``"shared": true`` opened by failures through one replica makes the others
  answer 503 ``circuit_open`` at once, without calling the failing upstream; a replica with traffic
  of its own stops sending within the state's 250 ms cache;
- half-open trial requests are limited across replicas: one in total, not one per replica;
- a healthy shared backend costs a few Redis calls a second, not one per request;
- redis-server killed: every request is still served, the breakers run per replica and the AI
  decisions are cached per replica; restarted (empty, on the same port): sharing resumes.

The processes start once for the module, the gateways in parallel. The third replica serves the same
routes but the AI one: a gateway with an AI route imports litellm at startup (~5 s of CPU), and a
third import on two cores would add as much to the module's time for nothing the two others do not
already show.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis

from tests.processes import (
    RedisProcess,
    Server,
    backend,
    free_port,
    kairos_run,
    route,
    server_process,
    wait_for_port,
)

API_KEY = "sk-kairostest-Shared0State1Key2"
MODEL = "shared-model"
RESET_MS = 600
NAMES = ("ai0", "ai1", "dead", "pair1", "pair2", "probe", "ok", "solo", "after")
REFUND = {"message": "I want a refund for order 17"}


@dataclass
class Flaky:
    port: int
    admin: str

    def mode(self, mode: str) -> None:
        httpx.post(f"{self.admin}/{self.port}/mode/{mode}", timeout=5).raise_for_status()

    def requests(self) -> int:
        count: int = httpx.get(f"{self.admin}/{self.port}/stats", timeout=5).json()["requests"]
        return count


class CountedRedis(RedisProcess):
    """The restartable redis-server, with what the tests read of it."""

    def client(self) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def evalsha_calls(self) -> int:
        with self.client() as client:
            stats: dict[str, Any] = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture(scope="module")
def store(module_tmp: Path) -> Iterator[CountedRedis]:
    process = CountedRedis(free_port(), module_tmp)
    process.start()
    try:
        yield process
    finally:
        if process.server is not None:
            process._stack.close()


@pytest.fixture(scope="module")
def flaky(module_tmp: Path) -> Iterator[dict[str, Flaky]]:
    ports = {name: free_port() for name in NAMES}
    admin = free_port()
    listen = ",".join(str(port) for port in ports.values())
    args = ["-m", "tests.servers.flaky_upstream", "--admin-port", str(admin), "--ports", listen]
    args += ["--names", ",".join(NAMES)]
    with server_process(args, admin, module_tmp / f"flaky-{admin}.log") as server:
        yield {name: Flaky(port, server.url) for name, port in ports.items()}


@pytest.fixture(scope="module")
def fake(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.fake_llm", "--port", str(port), "--rule", "refund=1", "--rule", "search=0"]
    with server_process(args, port, module_tmp / f"fake-llm-{port}.log") as server:
        yield server


def config(fake: Server, f: dict[str, Flaky], with_ai: bool = True) -> dict[str, Any]:
    def breaker(**options: Any) -> dict[str, Any]:
        defaults = {"reset_timeout_ms": RESET_MS, "half_open_max_calls": 1, "success_threshold": 1}
        return {"shared": True, **defaults, **options}

    def to(name: str) -> dict[str, Any]:
        return backend(f[name].port)

    ai_policy = {
        "enabled": True,
        "strategy": {"content_analysis": {"model": MODEL}},
        "cache_ttl_secs": 60,
        "debug_header": True,
    }
    ai = {"provider": "openai", "model": "gpt-4o-mini", "api_key": API_KEY, "api_base": f"{fake.url}/v1"}
    held = {"reset_timeout_ms": 60000}  # open for the whole module once opened
    data: dict[str, Any] = {
        "version": 1,
        "ai": {**ai, "timeout_ms": 3000},
        "routers": [
            route("/ai", "/", [to("ai0"), to("ai1")], ("POST",), ai_policy=ai_policy),
            route("/dead", "/", [to("dead")], circuit_breaker=breaker(failure_threshold=3, **held)),
            route(
                "/pair", "/", [to("pair1"), to("pair2")], circuit_breaker=breaker(failure_threshold=2, **held)
            ),
            route("/probe", "/", [to("probe")], circuit_breaker=breaker(failure_threshold=2)),
            route("/ok", "/", [to("ok")], circuit_breaker=breaker(failure_threshold=3)),
            route("/solo", "/", [to("solo")], circuit_breaker=breaker(failure_threshold=2, **held)),
            route("/after", "/", [to("after")], circuit_breaker=breaker(failure_threshold=2, **held)),
        ],
    }
    if not with_ai:
        data["routers"] = data["routers"][1:]
        del data["ai"]
    return data


@pytest.fixture(scope="module")
def replicas(
    module_tmp: Path, store: CountedRedis, fake: Server, flaky: dict[str, Flaky]
) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        env = {"KAIROS_REDIS_URL": store.url}
        servers = [
            stack.enter_context(kairos_run(module_tmp, config(fake, flaky, ai), env=env, wait=False))
            for ai in (True, True, False)
        ]
        for server in servers:  # started together: litellm's import (~5 s) runs in the lifespan
            wait_for_port(server.port, server.process, timeout=90)
            httpx.get(f"{server.url}/ready", timeout=10).raise_for_status()
        yield servers


def hits(fake: Server) -> int:
    return int(httpx.get(f"{fake.url}/_stats", timeout=5).json()["hits_by_model"].get(MODEL, 0))


def ai_outcome(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    index, _, outcome = response.headers["x-kairos-ai-backend"].partition("; outcome=")
    return index, outcome


def until(check: Callable[[], bool], seconds: float = 3.0) -> float:
    """Seconds until ``check()`` holds (polled every 20 ms), or fail after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the time"
        time.sleep(0.02)
    return time.monotonic() - started


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def fire(requests: list[tuple[str, str]]) -> list[int]:
    """Every (replica URL, path) GET at once; their statuses in order."""

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = await asyncio.gather(*(client.get(f"{url}{path}") for url, path in requests))
        return [answer.status_code for answer in answers]

    return asyncio.run(main())


def get(server: Server, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", timeout=10)


def test_an_ai_decision_made_by_one_replica_is_reused_by_another(
    replicas: list[Server], fake: Server, store: CountedRedis
) -> None:
    before = hits(fake)
    first = httpx.post(f"{replicas[0].url}/ai", json=REFUND, timeout=10)
    assert ai_outcome(first) == ("1", "chosen")
    assert hits(fake) == before + 1
    with store.client() as client:  # written in the background, just after the decision
        until(lambda: bool(client.keys("kairos:ai:decision:{*}")))
    again = httpx.post(f"{replicas[1].url}/ai", json=REFUND, timeout=10)
    assert ai_outcome(again) == ("1", "cached")
    assert again.json()["server"] == "ai1"
    assert hits(fake) == before + 1  # one provider call for both replicas


def test_a_breaker_opened_through_one_replica_stops_the_others(
    replicas: list[Server], flaky: dict[str, Flaky]
) -> None:
    dead = flaky["dead"]
    dead.mode("500")
    assert [get(replicas[0], "/dead").status_code for _ in range(3)] == [500, 500, 500]
    assert dead.requests() == 3
    for server in replicas:
        started = time.monotonic()
        refused = get(server, "/dead")
        assert refused.status_code == 503 and refused.json()["type"] == "circuit_open", refused.text
        assert time.monotonic() - started < 0.5  # at once: no upstream, no timeout
        assert 50 <= int(refused.headers["retry-after"]) <= 60
    assert dead.requests() == 3  # neither replica 2 nor 3 ever called it


def test_a_replica_with_traffic_stops_sending_within_the_cache_interval(
    replicas: list[Server], flaky: dict[str, Flaky]
) -> None:
    pair1, pair2 = flaky["pair1"], flaky["pair2"]
    warm = replicas[1]
    assert {get(warm, "/pair").json()["server"] for _ in range(4)} == {"pair1", "pair2"}  # fresh state
    pair1.mode("503")
    statuses = [get(replicas[0], "/pair").status_code for _ in range(4)]  # round robin: 2 on pair1
    assert statuses.count(503) == 2
    seen = pair1.requests()
    time.sleep(0.3)  # the state replica 2 cached is now older than 250 ms
    served = [get(warm, "/pair") for _ in range(6)]
    assert [answer.json()["server"] for answer in served] == ["pair2"] * 6
    assert pair1.requests() == seen  # no request from replica 2 reached the open backend
    assert pair2.requests() > 0


def test_half_open_trials_are_limited_across_replicas(
    replicas: list[Server], flaky: dict[str, Flaky]
) -> None:
    probe = flaky["probe"]
    probe.mode("500")
    assert [get(replicas[0], "/probe").status_code for _ in range(2)] == [500, 500]
    assert get(replicas[2], "/probe").status_code == 503  # open for everyone
    time.sleep(RESET_MS / 1000 + 0.1)  # probe time
    probe.mode("delay-600")  # the trial request holds its slot for 600 ms, then succeeds
    before = probe.requests()
    statuses = fire([(server.url, "/probe") for server in replicas for _ in range(3)])
    assert sorted(statuses) == [200] + [503] * 8, statuses  # one trial in total, not one per replica
    assert probe.requests() == before + 1
    probe.mode("ok")  # success_threshold 1: that trial closed the circuit for every replica
    time.sleep(0.3)
    assert [get(server, "/probe").status_code for server in replicas] == [200, 200, 200]


def test_a_healthy_shared_backend_costs_a_few_redis_calls_a_second(
    replicas: list[Server], store: CountedRedis
) -> None:
    """The figure docs/resilience.md quotes: script calls per request on a healthy shared backend."""
    with httpx.Client(base_url=replicas[0].url, timeout=10) as client:
        client.get("/ok")
        before = store.evalsha_calls()
        started = time.monotonic()
        for _ in range(300):
            assert client.get("/ok").status_code == 200
        seconds = time.monotonic() - started
    calls = store.evalsha_calls() - before  # the AI cache uses EVALSHA too, but no AI route is called
    print(f"\n300 requests in {seconds:.2f} s through one replica: {calls} Redis script calls")
    assert calls <= seconds / 0.25 + 2  # one state refresh per 250 ms, whatever the request rate


def test_redis_down_every_request_is_served_per_replica_then_sharing_resumes(
    replicas: list[Server], store: CountedRedis, flaky: dict[str, Flaky], fake: Server
) -> None:
    solo, after = flaky["solo"], flaky["after"]
    store.kill()
    # Served whatever Redis: a healthy shared backend, an AI route (decided and cached per replica).
    for server in replicas:
        assert get(server, "/ok").status_code == 200
    search = {"message": "search the catalogue for boots"}
    before = hits(fake)
    assert ai_outcome(httpx.post(f"{replicas[0].url}/ai", json=search, timeout=10)) == ("0", "chosen")
    assert ai_outcome(httpx.post(f"{replicas[0].url}/ai", json=search, timeout=10)) == ("0", "cached")
    assert ai_outcome(httpx.post(f"{replicas[1].url}/ai", json=search, timeout=10)) == ("0", "chosen")
    assert hits(fake) == before + 2  # each replica asked once: nothing shared while Redis is down
    # Each replica's own breaker: replica 1 opens its circuit, replica 2 still tries the backend.
    solo.mode("500")
    assert [get(replicas[0], "/solo").status_code for _ in range(3)] == [500, 500, 503]
    assert get(replicas[1], "/solo").status_code == 500
    assert solo.requests() == 3
    assert metric(replicas[0], "kairos_circuit_breaker_store_errors_total") > 0
    assert metric(replicas[0], "kairos_ai_cache_store_errors_total") > 0
    log = replicas[0].output()
    assert log.count("circuit breaker store redis at") == 1  # the outage is logged once...
    assert "shared circuit breakers run per replica" in log
    assert log.count("AI decision cache redis at") == 1

    store.start()  # empty, on the same port
    time.sleep(1.1)  # a store skips Redis for a second after a failure
    for server in replicas:  # the first call of each store finds it back
        assert get(server, "/ok").status_code == 200
    back = re.compile(r"circuit breaker store redis at \S+ is reachable again")
    until(lambda: all(back.search(server.output()) for server in replicas))  # logged once it answers
    # Shared again: failures through replica 3 stop replicas 1 and 2.
    after.mode("502")
    assert [get(replicas[2], "/after").status_code for _ in range(2)] == [502, 502]
    time.sleep(0.3)
    assert [get(server, "/after").status_code for server in replicas[:2]] == [503, 503]
    assert after.requests() == 2
    # And AI decisions are shared again.
    browse = {"message": "search for a blue jacket"}
    assert ai_outcome(httpx.post(f"{replicas[1].url}/ai", json=browse, timeout=10)) == ("0", "chosen")
    with store.client() as client:
        until(lambda: bool(client.keys("kairos:ai:decision:{*}")))
    assert ai_outcome(httpx.post(f"{replicas[0].url}/ai", json=browse, timeout=10)) == ("0", "cached")
