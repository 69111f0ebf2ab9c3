"""RateLimitMiddleware: 429 ``rate_limit_error`` with ``Retry-After`` once a client is over its limit.

Inside the gateway it sits after AuthMiddleware, so PerUser strategies key on the verified
identity (kairos-rs ran its limiter before auth, so PerUser never limited anyone); an anonymous
request falls back to its client IP, itself resolved through trusted proxies only. The matched
route's ``rate_limit`` replaces the global one (``{"enabled": false}`` exempts a route). Every
answer, admitted or not, carries ``X-RateLimit-Limit/Remaining/Reset`` and the IETF draft
``RateLimit-Policy``/``RateLimit`` fields. WebSocket upgrades are limited like requests; a refusal
is an HTTP 429 before ``websocket.accept``.

Standalone (no gateway Exchange), the constructor's policy applies, identity is read from
``scope["state"]["identity"]`` (where a standalone AuthMiddleware puts it), PerRoute keys on the
request path, and the gateway's own endpoints (``/health``, ``/ready``, ``/live``, ``/metrics``)
are never limited. Inside the gateway those endpoints never reach the pipeline at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.config.ratelimit import RateLimitConfig
from kairos.errors import reject
from kairos.exchange import SCOPE_KEY
from kairos.ratelimit.limiter import RateLimiter
from kairos.request import as_accessor, new_request_id, policy_of

if TYPE_CHECKING:
    from kairos.routing.route import Route

BUILTIN_PATHS = ("/health", "/ready", "/live", "/metrics")

PolicySource = RateLimitConfig | Mapping[str, Any] | Callable[[], RateLimitConfig | None] | None


def _rate_limit(route: Route) -> RateLimitConfig | None:
    return route.config.rate_limit


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        policy: PolicySource = None,
        *,
        limiter: RateLimiter | None = None,
        redis_url: str | None = None,
        exempt_paths: Iterable[str] = BUILTIN_PATHS,
    ) -> None:
        self.app = app
        self._global = as_accessor(
            RateLimitConfig.model_validate(policy) if isinstance(policy, Mapping) else policy
        )
        self._limiter = limiter if limiter is not None else RateLimiter(redis_url)
        self._exempt = frozenset(exempt_paths)

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = scope.get(SCOPE_KEY)
        route = exchange.route if exchange is not None else None
        config = policy_of(route, _rate_limit, self._global)
        if config is None or not config.enabled or scope["path"] in self._exempt:
            await self.app(scope, receive, send)
            return
        if exchange is not None:
            request_id, client_ip, identity = exchange.request_id, exchange.client_ip, exchange.identity
        else:
            client = scope.get("client")
            request_id, client_ip = new_request_id(), (client[0] if client else "")
            identity = scope.get("state", {}).get("identity")
        user = f"{identity.kind}:{identity.subject}" if identity is not None else None
        route_key = route.key if route is not None else scope["path"]
        # A route's own policy has its own counters; routes on the global policy share "global".
        own = route is not None and route.config.rate_limit is not None
        scope_key = route_key if own else "global"
        decision = self._limiter.check_now(config, scope_key, client_ip, user, route_key)
        if decision is None:
            decision = await self._limiter.check(config, scope_key, client_ip, user, route_key)
        if not decision.allowed:
            self._limiter.rejected[route.name if route is not None else "-"] += 1
            kind = "rate_limit_unavailable" if decision.unavailable else "rate_limit_error"
            await reject(scope, send, kind, decision.message, request_id, headers=decision.headers)
            return
        if not decision.headers or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = decision.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers")
                if isinstance(headers, list):
                    headers.extend(extra)  # the message is ours to amend, as with Starlette's MutableHeaders
                else:
                    message["headers"] = [*(headers or ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
