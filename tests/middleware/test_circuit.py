"""BalancerMiddleware + CircuitBreakerMiddleware in-process, around a stand-in for the proxy, with a
controlled clock: outcome classification, fast refusals, failover preference, panic mode."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from kairos.config.policies import CircuitBreakerConfig, HealthCheckConfig
from kairos.errors import send_error
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.middleware.balancer import BalancerMiddleware
from kairos.middleware.circuit import CircuitBreakerMiddleware
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from kairos.resilience.panic import PanicTracker
from kairos.routing.backend import Backend
from kairos.routing.route import Route
from tests.routing.util import single_route

A, B = 9001, 9002


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """Stands in for the proxy endpoint: answers per backend port as told."""

    def __init__(self) -> None:
        self.behaviour: dict[int, str] = {}
        self.calls: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange = scope[SCOPE_KEY]
        assert exchange.backend is not None
        port = exchange.backend.port
        self.calls.append(port)
        behaviour = self.behaviour.get(port, "200")
        if scope["type"] == "websocket":
            if behaviour == "200":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 1000})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if behaviour in ("connect", "timeout", "error"):
            exchange.upstream_failure = behaviour
            await send_error(send, "upstream", "refused", exchange.request_id)
            return
        if behaviour == "leave":  # the client went away before anything was sent
            return
        if behaviour == "abort":  # the upstream died mid-body
            await send({"type": "http.response.start", "status": 200, "headers": []})
            exchange.upstream_failure = "error"
            raise RuntimeError("upstream gone mid-body")
        await send({"type": "http.response.start", "status": int(behaviour), "headers": []})
        await send({"type": "http.response.body", "body": b"x"})


def breaker(**overrides: Any) -> CircuitBreakerConfig:
    return CircuitBreakerConfig.model_validate({"failure_threshold": 2, "reset_timeout_ms": 500, **overrides})


def health(**overrides: Any) -> HealthCheckConfig:
    return HealthCheckConfig.model_validate(overrides)


def two_backends(**extra: Any) -> Route:
    return single_route(ports=(A, B), **extra)


class Gateway:
    """The two middlewares as the pipeline stacks them, with top-level policies."""

    def __init__(
        self,
        circuit_breaker: CircuitBreakerConfig | None = None,
        health_check: HealthCheckConfig | None = None,
    ) -> None:
        self.clock = Clock()
        self.upstream = Upstream()
        self.panic = PanicTracker()
        inner = CircuitBreakerMiddleware(self.upstream, circuit_breaker, health_check, clock=self.clock)
        self.app = BalancerMiddleware(inner, circuit_breaker, health_check, self.panic, clock=self.clock)

    def request(
        self, route: Route, tried: Sequence[Backend] = (), kind: str = "http"
    ) -> tuple[int | None, dict[bytes, bytes], Exchange]:
        exchange = Exchange(request_id="r", client_ip="127.0.0.1", started=0.0, route=route)
        exchange.tried = list(tried)
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        scope = {
            "type": kind,
            "headers": [],
            "extensions": {"websocket.http.response": {}},
            SCOPE_KEY: exchange,
        }
        asyncio.run(self.app(scope, receive, send))
        starts = [m for m in sent if m["type"].endswith("response.start")]
        status = starts[0]["status"] if starts else None
        return status, dict(starts[0]["headers"]) if starts else {}, exchange


def test_failures_open_the_circuit_and_then_the_upstream_is_not_contacted() -> None:
    gw = Gateway()
    route = single_route(ports=(A,), circuit_breaker=breaker().model_dump())
    gw.upstream.behaviour[A] = "500"
    assert [gw.request(route)[0] for _ in range(2)] == [500, 500]
    status, headers, _ = gw.request(route)
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert gw.upstream.calls == [A, A]
    state = route.backends[0].state
    assert state.breaker.state == OPEN and not state.available(gw.clock.now)


def test_every_kind_of_upstream_failure_counts_and_a_client_leaving_does_not() -> None:
    for behaviour in ("connect", "timeout", "error", "502", "503", "504", "abort"):
        gw = Gateway(circuit_breaker=breaker(failure_threshold=1))
        route = single_route(ports=(A,))
        gw.upstream.behaviour[A] = behaviour
        if behaviour == "abort":
            with pytest.raises(RuntimeError):
                gw.request(route)
        else:
            gw.request(route)
        assert route.backends[0].state.breaker.state == OPEN, behaviour
    for behaviour in ("leave", "404", "200", "501"):
        gw = Gateway(circuit_breaker=breaker(failure_threshold=1))
        route = single_route(ports=(A,))
        gw.upstream.behaviour[A] = behaviour
        gw.request(route)
        assert route.backends[0].state.breaker.state == CLOSED, behaviour


def test_failure_status_codes_are_configurable() -> None:
    gw = Gateway(circuit_breaker=breaker(failure_threshold=1, failure_status_codes=[429]))
    route = single_route(ports=(A,))
    gw.upstream.behaviour[A] = "500"
    gw.request(route)
    assert route.backends[0].state.breaker.state == CLOSED
    gw.upstream.behaviour[A] = "429"
    gw.request(route)
    assert route.backends[0].state.breaker.state == OPEN


def test_half_open_admits_one_probe_and_recovers_after_success_threshold() -> None:
    gw = Gateway(circuit_breaker=breaker(success_threshold=2))
    route = single_route(ports=(A,))
    gw.upstream.behaviour[A] = "500"
    gw.request(route)
    gw.request(route)
    gw.clock.now += 0.5
    gw.upstream.behaviour[A] = "200"
    assert gw.request(route)[0] == 200  # probe 1
    assert route.backends[0].state.breaker.state == HALF_OPEN
    assert gw.request(route)[0] == 200  # probe 2 closes it
    assert route.backends[0].state.breaker.state == CLOSED
    assert gw.upstream.calls == [A] * 4


def test_a_probe_whose_client_left_gives_its_slot_back() -> None:
    gw = Gateway(circuit_breaker=breaker())
    route = single_route(ports=(A,))
    gw.upstream.behaviour[A] = "500"
    gw.request(route)
    gw.request(route)
    gw.clock.now += 0.5
    gw.upstream.behaviour[A] = "leave"
    assert gw.request(route)[0] is None
    breaker_state = route.backends[0].state.breaker
    assert breaker_state.state == HALF_OPEN and breaker_state.probes == 0
    gw.upstream.behaviour[A] = "200"
    assert gw.request(route)[0] == 200  # the slot was free for the next probe


def test_an_open_backend_is_skipped_while_another_serves() -> None:
    gw = Gateway(circuit_breaker=breaker())
    route = two_backends(load_balancing_strategy="round_robin")
    gw.upstream.behaviour[B] = "500"
    statuses = [gw.request(route)[0] for _ in range(4)]  # a, b, a, b: b opens
    assert statuses == [200, 500, 200, 500]
    assert [gw.request(route)[0] for _ in range(10)] == [200] * 10
    assert gw.upstream.calls[4:] == [A] * 10


def test_when_every_circuit_is_open_the_answer_is_503_with_the_shortest_wait() -> None:
    gw = Gateway(circuit_breaker=breaker(failure_threshold=1, reset_timeout_ms=2500))
    route = two_backends(load_balancing_strategy="round_robin")
    gw.upstream.behaviour[A] = gw.upstream.behaviour[B] = "500"
    gw.request(route)
    gw.clock.now += 1.0
    gw.request(route)  # b opens a second after a
    status, headers, exchange = gw.request(route)
    assert status == 503 and headers[b"retry-after"] == b"2"  # a probes in 1.5 s
    assert exchange.backend is None
    gw.clock.now += 1.6
    assert gw.request(route)[0] == 500  # a's probe went through


def test_a_retry_prefers_a_backend_not_tried_yet() -> None:
    gw = Gateway()
    route = two_backends(load_balancing_strategy="round_robin")
    first, second = route.backends
    assert [gw.request(route, tried=[first])[2].backend for _ in range(3)] == [second] * 3
    gw = Gateway(circuit_breaker=breaker(failure_threshold=1))
    gw.upstream.behaviour[B] = "500"
    gw.request(route, tried=[first])  # b fails and opens
    assert gw.request(route, tried=[first])[2].backend is first  # the only one left


def test_routes_without_a_breaker_ignore_circuit_state() -> None:
    gw = Gateway()
    route = single_route(ports=(A,))
    state = route.backends[0].state
    state.breaker.record(breaker(failure_threshold=1), True, gw.clock.now)
    assert state.breaker.state == OPEN
    gw.upstream.behaviour[A] = "500"
    assert gw.request(route)[0] == 500  # no config: off, nothing refused or recorded
    assert state.breaker.opened == 1


def test_a_route_block_beats_the_top_level_one() -> None:
    gw = Gateway(circuit_breaker=breaker(failure_threshold=10))
    route = single_route(ports=(A,), circuit_breaker={"failure_threshold": 1})
    gw.upstream.behaviour[A] = "500"
    gw.request(route)
    assert route.backends[0].state.breaker.state == OPEN


def test_passive_ejection_takes_a_failing_backend_out_and_brings_it_back() -> None:
    passive = {"consecutive_failures": 2, "base_ejection_ms": 1000}
    gw = Gateway(health_check=health(passive=passive))
    route = two_backends(load_balancing_strategy="round_robin")
    gw.upstream.behaviour[B] = "503"
    assert [gw.request(route)[0] for _ in range(4)] == [200, 503, 200, 503]
    assert route.backends[1].state.outlier.ejected(gw.clock.now)
    assert [gw.request(route)[0] for _ in range(5)] == [200] * 5
    gw.clock.now += 1.0
    gw.upstream.behaviour[B] = "200"
    gw.request(route)
    gw.request(route)
    assert gw.upstream.calls[-2:] in ([A, B], [B, A])


def test_passive_ejection_is_off_without_a_health_check_block_or_when_disabled() -> None:
    for gw in (Gateway(), Gateway(health_check=health(passive={"enabled": False}))):
        route = two_backends()
        gw.upstream.behaviour[B] = "500"
        for _ in range(20):
            gw.request(route)
        assert route.backends[1].state.outlier.ejections == 0


def test_panic_mode_uses_every_backend_when_none_is_healthy() -> None:
    gw = Gateway(health_check=health())
    route = two_backends(load_balancing_strategy="round_robin")
    for backend in route.backends:
        backend.state.healthy = False
    assert [gw.request(route)[0] for _ in range(4)] == [200] * 4
    assert sorted(gw.upstream.calls) == [A, A, B, B]
    assert gw.panic.episodes == 1 and gw.panic.active == {route.key}  # one episode, not four
    route.backends[0].state.healthy = True
    gw.request(route)
    assert gw.panic.active == set()
    assert gw.upstream.calls[-1] == A
    route.backends[0].state.healthy = False
    gw.request(route)
    assert gw.panic.episodes == 2


def test_panic_mode_skips_open_circuits() -> None:
    gw = Gateway(circuit_breaker=breaker(failure_threshold=1), health_check=health())
    route = two_backends(load_balancing_strategy="round_robin")
    gw.upstream.behaviour[A] = "500"
    gw.request(route)  # a opens
    route.backends[1].state.healthy = False
    assert [gw.request(route)[2].backend for _ in range(3)] == [route.backends[1]] * 3
    assert gw.panic.episodes == 1


def test_without_panic_mode_no_healthy_backend_is_503_upstream_unavailable() -> None:
    gw = Gateway(health_check=health(panic_mode=False))
    route = two_backends()
    for backend in route.backends:
        backend.state.healthy = False
    status, _, _ = gw.request(route)
    assert status == 503
    assert gw.upstream.calls == []
    assert gw.panic.episodes == 0


def test_websocket_upgrade_outcomes_are_recorded() -> None:
    gw = Gateway(circuit_breaker=breaker(failure_threshold=1))
    route = single_route(ports=(A,))
    gw.request(route, kind="websocket")
    assert route.backends[0].state.breaker.state == CLOSED
    gw.upstream.behaviour[A] = "refused"
    gw.request(route, kind="websocket")
    assert route.backends[0].state.breaker.state == OPEN
    status, _, _ = gw.request(route, kind="websocket")  # refused before the upgrade, no upstream call
    assert status == 503
    assert gw.upstream.calls == [A, A]
