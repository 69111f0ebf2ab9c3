"""BalancerMiddleware: picks the backend for this attempt and counts it as in flight.

The in-flight count is what ``least_connections`` reads; it is held until the inner app returns,
i.e. until the response (or WebSocket session) is over. ``Exchange.preferred_backend`` (set by AI
routing) wins when it names a candidate.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import get_exchange


class BalancerMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        route = exchange.route
        if route is None:
            await self.app(scope, receive, send)
            return
        candidates = route.backends
        if not candidates:
            await reject(scope, send, "config", f"Route {route.name} has no backends", exchange.request_id)
            return
        preferred = exchange.preferred_backend
        if preferred is not None and 0 <= preferred < len(candidates):
            backend = candidates[preferred]
        else:
            backend = route.balancer.pick(candidates, exchange.client_ip)
        exchange.backend = backend
        state = backend.state
        state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1
