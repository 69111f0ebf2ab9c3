"""CircuitBreakerMiddleware: records each attempt's outcome for its backend; fails fast when open.

Innermost, just outside the proxy endpoint and inside BalancerMiddleware, so it sees exactly one
attempt on one backend (``Exchange.backend``), whatever retries happen outside it. Per attempt:

1. If the backend's circuit refuses calls (open, or half-open with every probe slot taken; the
   state can change after the balancer picked), answer 503 ``circuit_open`` with ``Retry-After``
   and never contact the upstream. Otherwise take a half-open probe slot if the circuit is
   half-open.
2. Run the inner app, watching the ``http.response.start`` status it sends.
3. Classify, once, when it returns or raises:

   - failure: the proxy answered itself because the upstream failed (``Exchange.upstream_failure``
     is ``connect``, ``timeout`` or ``error``: its 502/504), the upstream's status is in
     ``failure_status_codes``, or the inner app raised (e.g. ``ResponseAborted``: the upstream
     died mid-body; re-raised);
   - nothing: nothing was sent and no upstream failure was seen (the client left), or the task was
     cancelled; a probe slot is just given back;
   - success: anything else (a 404 from the upstream is the upstream working).

   The outcome goes to the breaker (``circuit_breaker`` block) and to the passive outlier
   ejector (``health_check.passive``).

WebSocket upgrades: the outcome is the upgrade's. ``websocket.accept`` is a success (recorded at
once, so a long session holds no probe slot); a refusal before accept (the proxy's 502 when the
backend refused, or a close) is a failure. What happens later in the session is not recorded.

Per-route blocks win over the top-level ones (``route_policy`` semantics). With neither configured
the middleware costs two attribute reads and passes through.

A shared breaker (``"shared": true``, kairos/resilience/shared_breaker.py) is asked instead of the
replica's own while Redis answers: step 1 may refresh its cached state (at most every 250 ms) or
take a half-open probe slot in Redis, and the outcome of step 3 is sent to Redis when it can change
something (a failure, a probe's outcome). When Redis cannot be reached the replica's own breaker
decides, for this attempt and until Redis answers again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.config.policies import CircuitBreakerConfig, HealthCheckConfig, PassiveHealthConfig
from kairos.errors import reject
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.request import as_accessor, policy_of
from kairos.resilience.shared_breaker import NO_TIMEOUT_LEASE_MS, SharedCircuit
from kairos.routing.backend import Backend
from kairos.routing.route import Route

CircuitPolicy = CircuitBreakerConfig | Callable[[], CircuitBreakerConfig | None] | None
HealthPolicy = HealthCheckConfig | Callable[[], HealthCheckConfig | None] | None

# What counts as a failure for outlier ejection when the route has no circuit_breaker block.
DEFAULT_FAILURE_STATUSES = CircuitBreakerConfig().failure_status_codes


_PROTOCOLS = {"http": ("http", "ftp"), "websocket": ("http", "websocket")}


def _circuit_breaker(route: Route) -> CircuitBreakerConfig | None:
    return route.config.circuit_breaker


def _health_check(route: Route) -> HealthCheckConfig | None:
    return route.config.health_check


class CircuitBreakerMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        circuit_breaker: CircuitPolicy = None,
        health_check: HealthPolicy = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``circuit_breaker`` / ``health_check``: the top-level policies (a value or an accessor);
        a route's own block wins."""
        self.app = app
        self._breaker = as_accessor(circuit_breaker)
        self._health = as_accessor(health_check)
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        if exchange is None or exchange.backend is None or exchange.route is None:
            await self.app(scope, receive, send)  # no backend picked: nothing to judge
            return
        route = exchange.route
        breaker = policy_of(route, _circuit_breaker, self._breaker)
        health = policy_of(route, _health_check, self._health)
        passive = health.passive if health is not None and health.passive.enabled else None
        protocols = _PROTOCOLS.get(scope["type"], ())
        if (breaker is None and passive is None) or route.config.protocol not in protocols:
            await self.app(scope, receive, send)  # off, or no upstream call below (e.g. an FTP route)
            return
        await self._attempt(scope, receive, send, exchange, route, exchange.backend, breaker, passive)

    async def _attempt(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        route: Route,
        backend: Backend,
        config: CircuitBreakerConfig | None,
        passive: PassiveHealthConfig | None,
    ) -> None:
        state = backend.state
        breaker = state.breaker
        clock = self._clock
        ticket: int | None = None
        shared: SharedCircuit | None = None  # the replicas' state judges this attempt
        probe: str | None = None  # a shared half-open probe's slot
        if config is not None:
            now = clock()
            circuit = breaker.shared
            wait: float | None = None
            if circuit is not None and circuit.usable():
                lease = (route.config.timeout_ms or NO_TIMEOUT_LEASE_MS) + 1000
                admission = await circuit.admit(config, lease, now)
                if admission is not None:  # else Redis is unreachable: this replica's breaker decides
                    shared, probe = circuit, admission.ticket
                    if not admission.admitted:
                        wait = admission.wait
                now = clock()
            if shared is None:
                if breaker.blocks(now):
                    wait = breaker.retry_after(now)
                else:
                    ticket = breaker.acquire(config, now)
            if wait is not None:
                await reject(
                    scope,
                    send,
                    "circuit_open",
                    f"Circuit open for {backend.key}",
                    exchange.request_id,
                    headers=[(b"retry-after", str(max(1, math.ceil(wait))).encode())],
                )
                return
        codes = config.failure_status_codes if config is not None else DEFAULT_FAILURE_STATUSES
        settled = False
        status: int | None = None
        refused = False  # a WebSocket closed before it was accepted

        def settle(failed: bool | None) -> Awaitable[None] | None:
            """Record the outcome; what it returns (a shared breaker's Redis call) must be awaited."""
            nonlocal settled
            if settled:
                return None
            settled = True
            if failed is None:
                if shared is not None:
                    shared.release(probe)
                else:
                    breaker.release(ticket)
                return None
            now = clock()
            if passive is not None:
                if failed:
                    state.outlier.failure(passive, now, (b.state.outlier for b in route.backends))
                else:
                    state.outlier.success()
            if config is not None:
                if shared is not None:
                    return shared.record(config, failed, probe)
                breaker.record(config, failed, now, ticket)
            return None

        async def observe(message: Message) -> None:
            nonlocal status, refused
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                status = message["status"]
            elif kind == "websocket.accept":
                pending = settle(False)
                if pending is not None:
                    await pending
            elif kind == "websocket.close" and not settled:
                refused = True
            await send(message)

        exchange.upstream_failure = None  # this attempt's, set by the proxy below
        try:
            await self.app(scope, receive, observe)
        except Exception:
            pending = settle(True)
            if pending is not None:
                await pending
            raise
        except BaseException:  # cancelled: no outcome
            settle(None)
            raise
        if exchange.upstream_failure is not None or refused:
            pending = settle(True)
        elif status is not None:
            pending = settle(status in codes)
        else:
            pending = settle(None)  # nothing was sent: the client left
        if pending is not None:
            await pending
