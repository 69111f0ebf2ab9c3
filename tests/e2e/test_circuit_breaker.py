"""Circuit breakers, outlier ejection and panic mode through the real gateway (uvicorn process) in
front of real misbehaving upstreams (``tests.servers.flaky_upstream``: one process, one port per
upstream, each switched between ok / a status / delay / hang / refuse through an admin port).

Breaker and ejection state is per backend, so every scenario has upstreams of its own. Timings are
short (reset and ejection times of 400-600 ms); upstream request counts prove when the gateway did
not contact a backend.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.app import create_app
from kairos.config import load_data
from tests.asgi import AsgiClients
from tests.processes import Server, backend, free_port, gateway_server, route, server_process

RESET_MS = 1000  # long enough that a loaded machine (xdist, 2 cores) cannot half-open it mid-check
EJECT_MS = 600
NAMES = ("one", "refused", "p1", "p2", "f1", "f2", "o1", "o2", "h1", "h2", "h3", "h4", "reload")


@dataclass
class Flaky:
    name: str
    port: int
    admin: str

    @property
    def key(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mode(self, mode: str) -> None:
        httpx.post(f"{self.admin}/{self.port}/mode/{mode}", timeout=5).raise_for_status()

    def requests(self) -> int:
        count: int = httpx.get(f"{self.admin}/{self.port}/stats", timeout=5).json()["requests"]
        return count

    def proxied(self) -> int:
        """The requests that were not health probes."""
        stats = httpx.get(f"{self.admin}/{self.port}/stats", timeout=5).json()
        return int(stats["requests"]) - int(stats["probes"])


@pytest.fixture(scope="module")
def flaky(module_tmp: Path) -> Iterator[dict[str, Flaky]]:
    ports = {name: free_port() for name in NAMES}
    admin = free_port()
    args = [
        "-m",
        "tests.servers.flaky_upstream",
        "--admin-port",
        str(admin),
        "--ports",
        ",".join(str(port) for port in ports.values()),
        "--names",
        ",".join(NAMES),
    ]
    with server_process(args, admin, module_tmp / f"flaky-{admin}.log") as server:
        yield {name: Flaky(name, port, server.url) for name, port in ports.items()}


def via(upstream: Flaky, **extra: Any) -> dict[str, Any]:
    return backend(upstream.port, **extra)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, flaky: dict[str, Flaky]) -> Iterator[Server]:
    f = flaky
    probes = {"interval_ms": 100, "timeout_ms": 500, "unhealthy_threshold": 1, "healthy_threshold": 1}
    config = {
        "version": 1,
        "routers": [
            route(
                "/one",
                "/",
                [via(f["one"])],
                timeout_ms=3000,
                circuit_breaker={
                    "failure_threshold": 3,
                    "success_threshold": 2,
                    "reset_timeout_ms": RESET_MS,
                    "half_open_max_calls": 1,
                },
            ),
            route(
                "/refused",
                "/",
                [via(f["refused"])],
                circuit_breaker={
                    "failure_threshold": 2,
                    "success_threshold": 1,
                    "reset_timeout_ms": RESET_MS,
                },
            ),
            route(
                "/pair",
                "/",
                [via(f["p1"]), via(f["p2"])],
                circuit_breaker={"failure_threshold": 2, "reset_timeout_ms": 30000},
            ),
            route(
                "/failover",
                "/",
                [via(f["f1"]), via(f["f2"])],
                circuit_breaker={"failure_threshold": 2, "reset_timeout_ms": 30000},
            ),
            route(
                "/outlier",
                "/",
                [via(f["o1"]), via(f["o2"])],
                health_check={"passive": {"consecutive_failures": 2, "base_ejection_ms": EJECT_MS}},
            ),
            route(
                "/panic",
                "/",
                [via(f["h1"], health_check_path="/health"), via(f["h2"], health_check_path="/health")],
                health_check={**probes, "passive": {"enabled": False}},
            ),
            route(
                "/no-panic",
                "/",
                [via(f["h3"], health_check_path="/health"), via(f["h4"], health_check_path="/health")],
                health_check={**probes, "panic_mode": False},
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def metric(gateway: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(wanted)}\}}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{name}{{{wanted}}} not in /metrics"
    return float(match.group(1))


def assert_circuit_open(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "circuit_open"
    assert response.headers["retry-after"] == "1"  # ceil of < 400 ms


def statuses(client: httpx.Client, path: str, count: int) -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def test_500s_open_the_circuit_then_probes_close_it(gateway: Server, flaky: dict[str, Flaky]) -> None:
    one = flaky["one"]
    one.mode("500")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert statuses(client, "/one", 3) == [500, 500, 500]  # failure_threshold
        assert one.requests() == 3
        started = time.monotonic()
        for _ in range(5):
            assert_circuit_open(client.get("/one"))
        assert time.monotonic() - started < 1.0  # answered at once, not after an upstream timeout
        assert one.requests() == 3  # ...and the upstream was never contacted
        assert metric(gateway, "kairos_circuit_breaker_state", backend=one.key, state="open") == 1

        time.sleep(RESET_MS / 1000 + 0.05)
        assert client.get("/one").status_code == 500  # the probe went through, failed: re-opened
        assert_circuit_open(client.get("/one"))
        assert one.requests() == 4

        time.sleep(RESET_MS / 1000 + 0.05)
        one.mode("delay-300")  # a slow probe, so other requests arrive while it is in flight

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
                first = asyncio.create_task(http.get("/one"))
                await asyncio.sleep(0.1)
                others = await asyncio.gather(*(http.get("/one") for _ in range(4)))
                return [await first, *others]

        responses = asyncio.run(burst())
        assert responses[0].status_code == 200  # exactly half_open_max_calls = 1 probe...
        for response in responses[1:]:
            assert_circuit_open(response)  # ...the others are refused while it runs
        assert one.requests() == 5
        assert metric(gateway, "kairos_circuit_breaker_state", backend=one.key, state="half_open") == 1

        one.mode("ok")
        assert client.get("/one").status_code == 200  # second success: success_threshold = 2
        assert metric(gateway, "kairos_circuit_breaker_state", backend=one.key, state="closed") == 1
        assert statuses(client, "/one", 5) == [200] * 5
        assert one.requests() == 11
    assert metric(gateway, "kairos_circuit_breaker_opened_total", backend=one.key) == 2


def test_a_refused_connection_trips_it_too(gateway: Server, flaky: dict[str, Flaky]) -> None:
    refused = flaky["refused"]
    refused.mode("refuse")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(2):
            response = client.get("/refused")
            assert response.status_code == 502 and response.json()["type"] == "upstream"
        assert_circuit_open(client.get("/refused"))
        refused.mode("ok")
        assert_circuit_open(client.get("/refused"))  # up again, but the circuit is still open
        assert refused.requests() == 0
        time.sleep(RESET_MS / 1000 + 0.05)
        assert statuses(client, "/refused", 3) == [200, 200, 200]  # probe, then closed
    assert metric(gateway, "kairos_circuit_breaker_state", backend=refused.key, state="closed") == 1


def test_a_pair_keeps_serving_from_the_healthy_backend(gateway: Server, flaky: dict[str, Flaky]) -> None:
    p1, p2 = flaky["p1"], flaky["p2"]
    p2.mode("500")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert statuses(client, "/pair", 4) == [200, 500, 200, 500]  # round robin; p2 opens
        answers = [client.get("/pair") for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20  # zero errors once open
    assert {r.json()["server"] for r in answers} == {"p1"}
    assert (p1.requests(), p2.requests()) == (22, 2)


def test_connect_failures_fail_over_and_open_the_circuit(gateway: Server, flaky: dict[str, Flaky]) -> None:
    f1, f2 = flaky["f1"], flaky["f2"]
    f2.mode("refuse")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        # Nothing reached f2, so each of its refusals is retried on f1: the client sees no error.
        assert statuses(client, "/failover", 10) == [200] * 10
    assert f1.requests() == 10
    assert metric(gateway, "kairos_circuit_breaker_state", backend=f2.key, state="open") == 1


def test_outlier_ejection_takes_a_failing_backend_out_and_brings_it_back(
    gateway: Server, flaky: dict[str, Flaky]
) -> None:
    o1, o2 = flaky["o1"], flaky["o2"]
    o2.mode("503")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert statuses(client, "/outlier", 4) == [200, 503, 200, 503]  # 2 in a row on o2: ejected
        assert statuses(client, "/outlier", 10) == [200] * 10
        assert (o1.requests(), o2.requests()) == (12, 2)
        assert metric(gateway, "kairos_outlier_ejected", backend=o2.key) == 1
        o2.mode("ok")
        time.sleep(EJECT_MS / 1000 + 0.05)
        names = [client.get("/outlier").json()["server"] for _ in range(4)]
    assert sorted(names) == ["o1", "o1", "o2", "o2"]  # back in the rotation
    assert metric(gateway, "kairos_outlier_ejections_total", backend=o2.key) == 1
    assert metric(gateway, "kairos_outlier_ejected", backend=o2.key) == 0


def wait_unhealthy(gateway: Server, *upstreams: Flaky, healthy: bool = False, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    state = "healthy" if healthy else "unhealthy"
    while True:
        if all(metric(gateway, "kairos_upstream_health", backend=u.key, state=state) == 1 for u in upstreams):
            return
        assert time.monotonic() < deadline, f"active checks did not mark {upstreams} {state}"
        time.sleep(0.05)


def test_panic_mode_when_every_backend_is_unhealthy(gateway: Server, flaky: dict[str, Flaky]) -> None:
    h1, h2 = flaky["h1"], flaky["h2"]
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/panic").status_code == 200
        before = metric(gateway, "kairos_panic_mode_total")
        h1.mode("500")
        h2.mode("500")
        wait_unhealthy(gateway, h1, h2)
        # No healthy backend: panic mode still proxies (the upstreams' own 500s), never a 503.
        assert statuses(client, "/panic", 6) == [500] * 6
        assert metric(gateway, "kairos_panic_mode_total") == before + 1  # one episode, not six
        assert metric(gateway, "kairos_panic_mode_routes") == 1
        h1.mode("ok")
        wait_unhealthy(gateway, h1, healthy=True)
        answers = [client.get("/panic") for _ in range(4)]
        assert [r.json()["server"] for r in answers] == ["h1"] * 4  # only the healthy one again
        assert metric(gateway, "kairos_panic_mode_routes") == 0
        h2.mode("ok")
    assert gateway.output().count("panic mode sends traffic") == 1


def test_without_panic_mode_no_healthy_backend_is_503(gateway: Server, flaky: dict[str, Flaky]) -> None:
    h3, h4 = flaky["h3"], flaky["h4"]
    h3.mode("500")
    h4.mode("500")
    wait_unhealthy(gateway, h3, h4)
    before = h3.proxied() + h4.proxied()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(3):
            response = client.get("/no-panic")
            assert response.status_code == 503
            assert response.json()["type"] == "upstream_unavailable"
    # Only the active probes reached them, no proxied request.
    assert h3.proxied() + h4.proxied() == before
    h3.mode("ok")
    h4.mode("ok")


def test_circuit_state_survives_a_config_reload(flaky: dict[str, Flaky], asgi_client: AsgiClients) -> None:
    upstream = flaky["reload"]
    upstream.mode("500")
    breaker = {"failure_threshold": 2, "reset_timeout_ms": 30000}
    first = {"version": 1, "routers": [route("/r", "/", [via(upstream)], circuit_breaker=breaker)]}
    app = create_app(first)
    gateway = app.state.gateway

    async def main() -> None:
        async with gateway.lifespan(), asgi_client(app).async_client() as client:
            assert [(await client.get("/r")).status_code for _ in range(2)] == [500, 500]
            assert (await client.get("/r")).json()["type"] == "circuit_open"
            state = gateway.backend_states[upstream.key]
            second = {
                "version": 1,
                "circuit_breaker": breaker,
                "routers": [
                    route("/renamed", "/", [via(upstream)]),
                    route("/other", "/", [via(flaky["p1"])]),
                ],
            }
            gateway.apply(load_data(second))
            assert gateway.backend_states[upstream.key] is state  # carried over to the new table
            response = await client.get("/renamed")
            assert response.status_code == 503 and response.json()["type"] == "circuit_open"
            assert (await client.get("/r")).status_code == 404

    asyncio.run(main())
    assert upstream.requests() == 2
