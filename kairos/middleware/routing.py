"""RouteMiddleware: matches method + path against the live RouteTable snapshot.

The single matcher for every purpose. Sets ``Exchange.route`` and ``.params`` or answers
404 ``route_not_found`` / 405 ``method_not_allowed`` (with ``Allow``) / 400 ``bad_request``.
When mounted under a prefix (``Mount("/gw", app)``) the prefix (``root_path``) is removed first,
so ``/gw/cats/1`` matches ``/cats/{id}``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import get_exchange
from kairos.routing.matcher import NoMatch, RouteTable


def route_path(scope: Scope) -> str:
    """The raw (still percent-encoded) path below any mount prefix."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    if "?" in path:  # some servers include the query in raw_path
        path = path.split("?", 1)[0]
    root = scope.get("root_path")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class RouteMiddleware:
    def __init__(self, app: ASGIApp, table: Callable[[], RouteTable]) -> None:
        self.app = app
        self._table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        method = scope["method"] if kind == "http" else "GET"
        path = route_path(scope)
        result = self._table().match(method, path)
        if isinstance(result, NoMatch):
            if result.bad_path is not None:
                await reject(scope, send, "bad_request", f"Bad request path {path}: {result.bad_path}",
                             exchange.request_id)
            elif result.allow is not None:
                await reject(scope, send, "method_not_allowed", f"Method {method} not allowed for path: {path}",
                             exchange.request_id, headers=[(b"allow", result.allow.encode())])
            else:
                await reject(scope, send, "route_not_found", f"No route found for path: {path}", exchange.request_id)
            return
        exchange.route = result.route
        exchange.params = result.params
        await self.app(scope, receive, send)
