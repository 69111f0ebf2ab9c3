"""BalancerMiddleware: picks the backend for this attempt and counts it as in flight.

The in-flight count is what ``least_connections`` reads; it is held until the inner app returns,
i.e. until the response (or WebSocket session) is over. ``Exchange.preferred_backend`` (set by AI
routing) wins when it names an available candidate.

Which backends are candidates:

- where the route (or the top level) configures ``circuit_breaker``: those whose circuit lets a
  call through (closed, or a free half-open probe slot);
- where it configures ``health_check``: those that are healthy (active checks) and not ejected
  (passive outlier ejection);
- on a retry (``Exchange.tried`` not empty): those not tried yet, if any is left.

With neither block and no retry, none of this costs anything: the strategy picks among all
backends. Otherwise one pass checks them; a second builds the subset only when one is out.

When no backend is available: if every backend is refused by its circuit, the answer is 503
``circuit_open`` with ``Retry-After`` (seconds until the first probe is allowed). Otherwise some
are only unhealthy or ejected: with ``panic_mode`` (default on) the strategy picks among every
backend whose circuit is not open, as Envoy does (better some errors than refusing everything), a
warning is logged once per episode and ``kairos_panic_mode_total`` counts it; with
``panic_mode: false`` the answer is 503 ``upstream_unavailable``.

Backend state is shared by the routes using the same backend, but a route without a
``circuit_breaker`` block ignores circuit state, and one without ``health_check`` ignores health.

A backend whose breaker is shared by the replicas (``"shared": true``) is judged by the state Redis
returned last; when that is older than 250 ms it is read again before the pick (one call, shared by
the requests that need it at the same time), so the balancer skips a circuit another replica opened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.config.policies import CircuitBreakerConfig, HealthCheckConfig
from kairos.errors import reject
from kairos.exchange import Exchange, get_exchange
from kairos.request import as_accessor, policy_of
from kairos.resilience.panic import PanicTracker
from kairos.routing.backend import Backend, BackendState
from kairos.routing.route import Route

CircuitPolicy = CircuitBreakerConfig | Callable[[], CircuitBreakerConfig | None] | None
HealthPolicy = HealthCheckConfig | Callable[[], HealthCheckConfig | None] | None


def _circuit_breaker(route: Route) -> CircuitBreakerConfig | None:
    return route.config.circuit_breaker


def _health_check(route: Route) -> HealthCheckConfig | None:
    return route.config.health_check


class BalancerMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        circuit_breaker: CircuitPolicy = None,
        health_check: HealthPolicy = None,
        panic: PanicTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``circuit_breaker`` / ``health_check``: the top-level policies (a value, or an accessor
        the gateway passes so a reload applies at once); a route's own block wins."""
        self.app = app
        self._breaker = as_accessor(circuit_breaker)
        self._health = as_accessor(health_check)
        self.panic = panic if panic is not None else PanicTracker()
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        route = exchange.route
        if route is None or route.config.protocol in ("dns", "llm"):  # these order their own upstreams
            await self.app(scope, receive, send)
            return
        backends = route.backends
        if not backends:
            await reject(scope, send, "config", f"Route {route.name} has no backends", exchange.request_id)
            return
        breakers = policy_of(route, _circuit_breaker, self._breaker)
        health = policy_of(route, _health_check, self._health)
        candidates: Sequence[Backend] = backends
        if breakers is not None or health is not None:
            checked = health is not None
            now = self._clock()
            if breakers is not None:
                for backend in backends:  # shared breakers: refresh a state older than 250 ms first
                    shared = backend.state.breaker.shared
                    if shared is not None and shared.stale(now) and shared.usable():
                        await shared.refresh(breakers)
                        now = self._clock()
            for backend in backends:  # one pass; the subset is built only when a backend is out
                if not _usable(backend.state, now, breakers is not None, checked):
                    candidates = [b for b in backends if _usable(b.state, now, breakers is not None, checked)]
                    break
            if not candidates:
                found = await self._none_available(scope, send, exchange, route, now, breakers, health)
                if found is None:
                    return
                candidates = found
            elif self.panic.active:
                self.panic.leave(route.key, route.name)
        elif self.panic.active:
            self.panic.leave(route.key, route.name)
        tried = exchange.tried
        if tried:
            keys = {backend.key for backend in tried}
            fresh = [backend for backend in candidates if backend.key not in keys]
            if fresh:
                candidates = fresh
        preferred = exchange.preferred_backend
        if preferred is not None and 0 <= preferred < len(backends) and backends[preferred] in candidates:
            backend = backends[preferred]
        else:
            backend = route.balancer.pick(candidates, exchange.client_ip)
        exchange.backend = backend
        state = backend.state
        state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1

    async def _none_available(
        self,
        scope: Scope,
        send: Send,
        exchange: Exchange,
        route: Route,
        now: float,
        breakers: CircuitBreakerConfig | None,
        health: HealthCheckConfig | None,
    ) -> Sequence[Backend] | None:
        """No backend is available: refuse (and return None), or enter panic mode and return the
        backends it may use."""
        backends = route.backends
        if breakers is not None and all(b.state.breaker.blocks(now) for b in backends):
            wait = min(b.state.breaker.retry_after(now) for b in backends)
            await reject(
                scope,
                send,
                "circuit_open",
                f"Circuit open for every backend of {route.name}",
                exchange.request_id,
                headers=[(b"retry-after", str(max(1, math.ceil(wait))).encode())],
            )
            return None
        if health is not None and not health.panic_mode:
            await reject(
                scope,
                send,
                "upstream_unavailable",
                f"No healthy backend for {route.name}",
                exchange.request_id,
            )
            return None
        self.panic.enter(route.key, route.name, len(backends))
        return [b for b in backends if breakers is None or not b.state.breaker.blocks(now)]


def _usable(state: BackendState, now: float, breakers: bool, health: bool) -> bool:
    """``state.available(now)``, restricted to the concerns the route configures."""
    if health and (not state.healthy or state.outlier.ejected(now)):
        return False
    return not (breakers and state.breaker.blocks(now))
