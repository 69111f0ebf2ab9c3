"""SecurityHeadersMiddleware: the security header set on gateway-made and (opt-in) proxied responses.

The policy is ``security_headers`` (SecurityHeadersConfig), top level and per route (a route's
block replaces the global one; ``false`` turns the headers off there). The set is
``DEFAULT_SECURITY_HEADERS`` merged with the config's ``headers`` (``effective_headers()``),
compiled once per distinct config. Only headers the response lacks are added, so an upstream's
own ``X-Frame-Options`` or CSP is never overridden.

- Responses the gateway generates itself (errors: 400/401/403/404/405/413/429/500/502/503/504,
  CORS preflights) get the set whenever it is enabled (the default).
- Proxied responses get it only with ``proxied: true``. Standalone in a FastAPI/Starlette app,
  "proxied" means every response of the wrapped app.

Gateway-made responses are recognised by the ``kairos.errors.GENERATED`` key that
``errors.send_error`` (the single place errors are rendered) and the CORS preflight put on their
``http.response.start`` message: the mark travels with the response, so no per-request state is
shared and no guess is made from the headers.

The policy is resolved when the response starts, not when the request comes in, because this
middleware sits outside the RouteMiddleware (it must see the 404/405s): by then the Exchange holds
the matched route, or none (404, and the global policy applies). WebSocket scopes are only watched
when the server can refuse an upgrade with a real response (``websocket.http.response``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.compiled import PerConfig
from kairos.config.policies import SecurityHeadersConfig
from kairos.errors import GENERATED
from kairos.request import as_accessor, route_policy

if TYPE_CHECKING:
    from kairos.routing.route import Route

SecurityPolicy = SecurityHeadersConfig | Callable[[], SecurityHeadersConfig | None] | None
Header = tuple[bytes, bytes]

_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


def compile_headers(config: SecurityHeadersConfig) -> tuple[Header, ...]:
    """The effective header set as ASGI header pairs (lower-case names)."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in config.effective_headers().items()
    )


def add_missing(headers: Iterable[Header], extra: tuple[Header, ...]) -> list[Header]:
    """``headers`` plus those of ``extra`` whose name is not already there (a new list)."""
    result = list(headers)
    present = {name.lower() for name, _ in result}
    result.extend(header for header in extra if header[0] not in present)
    return result


def _security_headers(route: Route) -> SecurityHeadersConfig | None:
    return route.config.security_headers


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, global_policy: SecurityPolicy = None) -> None:
        self.app = app
        self._global = as_accessor(global_policy)
        self._headers: PerConfig[SecurityHeadersConfig, tuple[Header, ...]] = PerConfig(compile_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and not (
            kind == "websocket" and "websocket.http.response" in scope.get("extensions", {})
        ):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in _STARTS:
                config = route_policy(scope, _security_headers, self._global)
                if config is not None and config.enabled and (config.proxied or message.get(GENERATED)):
                    extra = self._headers.get(config)
                    if extra:
                        message["headers"] = add_missing(message.get("headers", ()), extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)
