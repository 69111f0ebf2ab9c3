"""RouteMiddleware: matches method + path against the live RouteTable snapshot.

The single matcher for every purpose. Sets ``Exchange.route`` and ``.params`` or answers
404 ``route_not_found`` / 405 ``method_not_allowed`` (with ``Allow``) / 400 ``bad_request``.
When mounted under a prefix (``Mount("/gw", app)``) the prefix (``root_path``) is removed first,
so ``/gw/cats/1`` matches ``/cats/{id}``.

CORS preflights: given a ``preflight`` predicate (the pipeline passes
``CorsMiddleware.answers_preflight``), an ``OPTIONS`` request carrying ``Origin`` and
``Access-Control-Request-Method`` that no route takes as ``OPTIONS`` (it would be a 405) is matched
again with the requested method; if that finds a route the predicate accepts (CORS is on there), the
request goes on with that route, for the CORS layer to answer. Routes that list ``OPTIONS`` keep
getting their preflights as before, and a route with CORS off still answers 405. Only that 405 path
pays for the second lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, quote_from_bytes, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import get_exchange
from kairos.routing.matcher import NoMatch, RouteMatch, RouteTable
from kairos.routing.route import Route

# Printable ASCII except '%' is kept; raw non-ASCII bytes (a client sending UTF-8 unencoded) become
# %XX so the matcher sees one spelling. Used for the fallback too, with '%' encoded there.
_RAW_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in "%?#")
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


def route_path(scope: Scope) -> str:
    """The raw (still percent-encoded, ASCII) path below any mount prefix."""
    raw = scope.get("raw_path")
    if raw:
        if b"?" in raw:  # some servers include the query in raw_path
            raw = raw.split(b"?", 1)[0]
        path = raw.decode("ascii") if raw.isascii() else quote_from_bytes(raw, safe=_RAW_SAFE + "%")
    else:  # no raw_path: the decoded path is all there is
        path = quote(scope["path"], safe=_PATH_SAFE)
    root = scope.get("root_path")
    if root:
        path = _strip_root(path, root)
    return path


def _strip_root(path: str, root: str) -> str:
    """Remove the mount prefix. ``root_path`` is decoded (``/café``) while ``path`` is raw
    (``/caf%C3%A9``), so when the plain prefix test fails, compare the decoded leading segments."""
    if path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/" or root.endswith("/")):
        return path[len(root) :] or "/"
    depth = root.rstrip("/").count("/")
    parts = path.split("/", depth + 1)
    if len(parts) > depth and unquote("/".join(parts[: depth + 1])) == root.rstrip("/"):
        rest = parts[depth + 1] if len(parts) > depth + 1 else ""
        return "/" + rest
    return path


class RouteMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        table: Callable[[], RouteTable],
        preflight: Callable[[Route], bool] | None = None,
    ) -> None:
        self.app = app
        self._table = table
        self._preflight = preflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        method = scope["method"] if kind == "http" else "GET"
        path = route_path(scope)
        table = self._table()
        result = table.match(method, path, websocket=kind == "websocket")
        if (
            isinstance(result, NoMatch)
            and result.allow is not None
            and method == "OPTIONS"
            and self._preflight is not None
        ):
            result = _preflight_match(table, path, scope["headers"], self._preflight) or result
        if isinstance(result, NoMatch):
            if result.bad_path is not None:
                await reject(
                    scope,
                    send,
                    "bad_request",
                    f"Bad request path {path}: {result.bad_path}",
                    exchange.request_id,
                )
            elif result.allow is not None:
                await reject(
                    scope,
                    send,
                    "method_not_allowed",
                    f"Method {method} not allowed for path: {path}",
                    exchange.request_id,
                    headers=[(b"allow", result.allow.encode())],
                )
            else:
                await reject(
                    scope, send, "route_not_found", f"No route found for path: {path}", exchange.request_id
                )
            return
        exchange.route = result.route
        exchange.params = result.params
        await self.app(scope, receive, send)


def _preflight_match(
    table: RouteTable, path: str, headers: list[tuple[bytes, bytes]], answers: Callable[[Route], bool]
) -> RouteMatch | None:
    """The route a CORS preflight asks about (matched by its requested method), if CORS answers there."""
    requested = origin = None
    for name, value in headers:
        if name == b"access-control-request-method":
            requested = value
        elif name == b"origin":
            origin = value
    if not requested or origin is None:
        return None
    result = table.match(requested.decode("latin-1").strip(), path)
    return result if isinstance(result, RouteMatch) and answers(result.route) else None
