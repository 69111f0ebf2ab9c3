"""The dashboard: one ASGI app, ``uvicorn admin.app:app --port 3000``, also served by the gateway
itself at ``/admin`` (``KAIROS_DASHBOARD``).

It is thin over the admin API: every page is a few calls of ``kairos.client`` with the logged-in
user's token, rendered server-side by Jinja2; htmx swaps fragments (search, explain, the backend
table) and a small script draws uPlot charts fed by a same-origin Server-Sent Events stream. It
imports nothing of the gateway but the client and the config models (the form is generated from
``RouteConfig``'s schema), so it runs as well on another host as inside the gateway.

Security: a login with the admin token (checked against the gateway) gives an encrypted HttpOnly
``SameSite=Strict`` session cookie (admin/session.py); every state-changing form carries a CSRF
token; a token the gateway stops accepting sends the user back to the login page. A session
without a token (a gateway that has no ``KAIROS_ADMIN_TOKEN`` and answers local clients only) is
given only to a browser on this machine, the admin API's own exposure rule. Every answer carries
``Content-Security-Policy: default-src 'self'`` and the page loads nothing from anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from admin import forms
from admin.session import COOKIE, Session, Sessions
from kairos import __version__
from kairos.client import (
    AsyncKairosClient,
    KairosAPIError,
    KairosConnectionError,
    KairosError,
    MetricsSummary,
    NotFound,
    Unauthorized,
    ValidationFailed,
    histogram_quantile,
)

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
NAV = (
    ("overview", "Overview", ""),
    ("routes", "Routes", "/routes"),
    ("backends", "Backends", "/backends"),
    ("config", "Config", "/config"),
    ("ai", "AI routing", "/ai"),
    ("llm", "LLM", "/llm"),
    ("metrics", "Metrics", "/metrics"),
)
LLM_GROUPS = ("model", "consumer", "day", "route", "provider")
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400}
EVENT_SECONDS = 1.0
TOP = 10  # routes in the overview's busiest list
PAGE_ROWS = 100  # routes per page of the routes table
CLIENTS = 16  # admin tokens whose client is kept
EVENT_LIMIT_SECONDS = 3600.0  # an open tab reconnects (EventSource does) after an hour


def _is_local(request: Request) -> bool:
    """A loopback peer with no forwarding headers: a browser on this machine."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The pages and what they need: where the gateway is, how to reach it, the sessions."""

    def __init__(
        self,
        gateway_url: str | None = None,
        transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
        sessions: Sessions | None = None,
        local_only: bool = False,
    ) -> None:
        self.gateway_url = (gateway_url or os.environ.get("KAIROS_URL") or "http://127.0.0.1:5900").rstrip(
            "/"
        )
        self._transport = transport
        self.sessions = sessions or Sessions()
        self.local_only = local_only
        self._clients: OrderedDict[str, AsyncKairosClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["config_text"] = config_text

    # -- plumbing -------------------------------------------------------------------------------

    def client(self, session: Session) -> AsyncKairosClient:
        """One client per admin token, kept: a new httpx client builds an SSL context (~25 ms)
        and a new connection; the kept one reuses its keep-alive connection. At most
        ``CLIENTS`` tokens are kept (the oldest is closed)."""
        token = session.token or ""
        kept = self._clients.get(token)
        if kept is not None:
            self._clients.move_to_end(token)
            return kept
        transport = self._transport() if self._transport is not None else None
        client = AsyncKairosClient(self.gateway_url, token=token, transport=transport, max_retries=1)
        self._clients[token] = client
        while len(self._clients) > CLIENTS:
            _, oldest = self._clients.popitem(last=False)
            task = asyncio.get_running_loop().create_task(oldest.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    def render(self, request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE, "")
        base = request.scope.get("root_path", "")
        html = self.templates.get_template(template).render(
            request=request,
            base=base,
            nav=NAV,
            csrf=self.sessions.csrf(cookie) if cookie else "",
            version=__version__,
            gateway_url="this gateway" if self._transport is not None else self.gateway_url,
            **context,
        )
        return HTMLResponse(html, status_code=code)

    def login_redirect(self, request: Request, reason: str = "") -> Response:
        base = request.scope.get("root_path", "")
        response = RedirectResponse(
            f"{base}/login" + (f"?reason={reason}" if reason else ""), status_code=303
        )
        response.delete_cookie(COOKIE, path=base or "/")
        return response

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE))

    async def guarded(
        self,
        request: Request,
        page: Callable[[Request, AsyncKairosClient], Awaitable[Response]],
        write: bool = False,
    ) -> Response:
        """Run a page with the user's client: no session → login; a token the gateway refuses →
        login; the gateway unreachable → the page's shell with a banner (503)."""
        session = self.session(request)
        if session is None or (not session.token and not _is_local(request)):
            if request.headers.get("hx-request"):
                return Response(
                    status_code=401, headers={"hx-redirect": f"{request.scope.get('root_path', '')}/login"}
                )
            return self.login_redirect(request)
        if write:
            form = await request.form()
            if not self.sessions.csrf_ok(request.cookies.get(COOKIE), _text(form.get("csrf"))):
                return self.render(
                    request,
                    "error.html",
                    403,
                    title="Refused",
                    message="The form's CSRF token is missing or wrong: reload the page and try again.",
                )
        try:
            return await page(request, self.client(session))
        except Unauthorized:
            return self.login_redirect(request, "expired")
        except KairosConnectionError as exc:
            return self.render(
                request, "error.html", 503, title="Gateway unreachable", message=str(exc), unreachable=True
            )

    # -- login ----------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        reason = request.query_params.get("reason", "")
        message = {
            "expired": "Your session ended or the token was refused: log in again.",
            "logout": "Logged out.",
        }.get(reason, "")
        return self.render(request, "login.html", message=message, local=_is_local(request))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        token = _text(form.get("token")).strip()
        if not token and not _is_local(request):
            return self.render(
                request, "login.html", 401, error="Enter the gateway's admin token.", local=False
            )
        session = Session(token, time.time())
        try:
            await self.client(session).config.status()  # an admin call: the gateway judges the token
        except Unauthorized:
            return self.render(
                request, "login.html", 401, error="The gateway refused this token.", local=_is_local(request)
            )
        except KairosError as exc:
            return self.render(request, "login.html", 503, error=f"{exc}", local=_is_local(request))
        base = request.scope.get("root_path", "")
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(token),
            max_age=int(self.sessions.lifetime),
            path=base or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not self.sessions.csrf_ok(request.cookies.get(COOKIE), _text(form.get("csrf"))):
            return self.render(
                request, "error.html", 403, title="Refused", message="The form's CSRF token is wrong."
            )
        return self.login_redirect(request, "logout")

    # -- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            health, status, summary, backends = await asyncio.gather(
                client.health(), client.config.status(), client.metrics_summary(TOP), client.backends()
            )
            return self.render(
                request,
                "overview.html",
                active="overview",
                health=health,
                status=status,
                top=_top(summary),
                backends=backends,
                totals=summary,
            )

        return await self.guarded(request, page)

    async def events(self, request: Request) -> Response:
        """Server-Sent Events for the overview: one JSON frame a second with totals, rates and
        latency quantiles over the last second, and the per-route top list."""

        async def page(request: Request, client: AsyncKairosClient) -> Response:
            first = await client.metrics_summary(TOP)  # fails fast (login/banner) before the stream
            session = self.session(request)
            assert session is not None
            return StreamingResponse(
                self._frames(session, first),
                media_type="text/event-stream",
                headers={"cache-control": "no-store", "x-accel-buffering": "no"},
            )

        return await self.guarded(request, page)

    async def _frames(self, session: Session, first: MetricsSummary) -> AsyncIterator[str]:
        previous, previous_at = first, time.monotonic()
        started = previous_at
        client = self.client(session)
        while time.monotonic() - started < EVENT_LIMIT_SECONDS:
            await asyncio.sleep(EVENT_SECONDS)
            try:
                summary = await client.metrics_summary(TOP)
            except KairosError as exc:
                yield f"event: unreachable\ndata: {json.dumps(str(exc))}\n\n"
                continue
            now = time.monotonic()
            yield f"data: {json.dumps(_frame(previous, summary, now - previous_at))}\n\n"
            previous, previous_at = summary, now

    async def routes(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            listing = await client.routes.list_documents()
            query = request.query_params.get("q", "").strip().lower()
            matching = [
                (index, route)
                for index, route in enumerate(listing.routes)
                if not query or query in json.dumps(route).lower()
            ]
            pages = max(1, -(-len(matching) // PAGE_ROWS))
            try:
                number = min(max(1, int(request.query_params.get("page", "1"))), pages)
            except ValueError:
                number = 1
            template = "_routes_table.html" if request.headers.get("hx-request") else "routes.html"
            return self.render(
                request,
                template,
                active="routes",
                rows=matching[(number - 1) * PAGE_ROWS : number * PAGE_ROWS],
                matching=len(matching),
                page=number,
                pages=pages,
                query=query,
                generation=listing.generation,
                total=len(listing.routes),
            )

        return await self.guarded(request, page)

    async def route_form(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            index_text = request.query_params.get("index")
            path = request.query_params.get("path", "")
            route: dict[str, Any] = {}
            if index_text is not None:
                try:
                    if path:  # one route, not the whole list
                        route = (await client.routes.get_document(path, index=int(index_text))).route
                    else:
                        route = (await client.routes.list_documents()).routes[int(index_text)]
                except (ValueError, IndexError, NotFound):
                    return self.render(
                        request,
                        "error.html",
                        404,
                        title="No such route",
                        message=f"There is no route at index {index_text}.",
                    )
            return self._form(request, route, index_text)

        return await self.guarded(request, page)

    def _form(
        self,
        request: Request,
        route: dict[str, Any],
        index: str | None,
        status: int = 200,
        placed: dict[str, list[str]] | None = None,
        general: list[str] | None = None,
        raw: FormData | None = None,
    ) -> Response:
        return self.render(
            request,
            "route_form.html",
            status,
            active="routes",
            route=route,
            index=index,
            controls=forms.route_controls(),
            display=forms.display_value,
            extra=json.dumps(forms.unknown_keys(route)),
            placed=placed or {},
            general=general or [],
            raw=raw,
        )

    async def route_save(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            form = await request.form()
            index = _text(form.get("index")) or None
            original_path = _text(form.get("original_path"))
            try:
                route = forms.read_route(form, form.getlist)
            except forms.FormProblems as exc:
                placed = {name: [message] for name, message in exc.problems.items()}
                return self._form(request, exc.document, index, 400, placed, raw=form)
            try:
                if index is None:
                    await client.routes.create(route)
                else:
                    if route.get("external_path") != original_path:
                        await _move(client, original_path, int(index), route)
                    else:
                        await client.routes.update(route, index=int(index))
            except ValidationFailed as exc:
                placed, general = forms.problem_fields(exc.problems or [exc.message])
                return self._form(request, route, index, 400, placed, general, raw=form)
            except KairosAPIError as exc:
                return self._form(request, route, index, exc.status, general=[exc.message], raw=form)
            base = request.scope.get("root_path", "")
            return RedirectResponse(f"{base}/routes?saved={route.get('external_path', '')}", status_code=303)

        return await self.guarded(request, page, write=True)

    async def route_delete(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            form = await request.form()
            path = _text(form.get("path"))
            with contextlib.suppress(NotFound, ValueError):  # already gone: the list shows the truth
                await client.routes.delete(path, index=int(_text(form.get("index"))))
            base = request.scope.get("root_path", "")
            return RedirectResponse(f"{base}/routes?deleted={path}", status_code=303)

        return await self.guarded(request, page, write=True)

    async def explain(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            method = request.query_params.get("method", "GET")
            path = request.query_params.get("path", "/")
            try:
                explanation = await client.explain(method, path if path.startswith("/") else "/" + path)
            except KairosAPIError as exc:
                return self.render(request, "_explain.html", error=exc.message)
            return self.render(request, "_explain.html", explanation=explanation)

        return await self.guarded(request, page)

    async def backends(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            backends = await client.backends()
            template = "_backends_table.html" if request.headers.get("hx-request") else "backends.html"
            return self.render(request, template, active="backends", backends=backends)

        return await self.guarded(request, page)

    async def config(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            document, status = await asyncio.gather(client.config.get(), client.config.status())
            return self.render(
                request,
                "config.html",
                active="config",
                document=document,
                status=status,
                message=request.query_params.get("message", ""),
            )

        return await self.guarded(request, page)

    async def config_reload(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            try:
                status = await client.config.reload()
                message = status.message
                problems: list[str] = []
            except (ValidationFailed, KairosAPIError) as exc:
                message, problems = exc.message, exc.problems
            document, status = await asyncio.gather(client.config.get(), client.config.status())
            return self.render(
                request,
                "config.html",
                active="config",
                document=document,
                status=status,
                message=message,
                problems=problems,
            )

        return await self.guarded(request, page, write=True)

    async def config_validate(self, request: Request) -> Response:
        """Validate a pasted config document offline, with the loader the gateway uses."""

        async def page(request: Request, client: AsyncKairosClient) -> Response:
            from kairos.config import ConfigError, load_data

            form = await request.form()
            text = _text(form.get("document"))
            try:
                loaded = load_data(json.loads(text), "(pasted)")
                result = {"valid": True, "errors": [], "warnings": [str(w) for w in loaded.warnings]}
            except json.JSONDecodeError as exc:
                result = {
                    "valid": False,
                    "errors": [f"(document): not valid JSON: {exc.msg} at line {exc.lineno}"],
                    "warnings": [],
                }
            except ConfigError as exc:
                result = {
                    "valid": False,
                    "errors": [str(p) for p in exc.problems],
                    "warnings": [str(w) for w in exc.warnings],
                }
            return self.render(request, "_validation.html", result=result)

        return await self.guarded(request, page, write=True)

    async def ai(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            snapshot = await client.metrics(prefix="kairos_ai_")
            families: dict[str, list[tuple[dict[str, str], float]]] = {}
            for sample in snapshot.samples:
                if sample.name.startswith("kairos_ai_") and not sample.name.endswith(("_bucket", "_created")):
                    families.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
            return self.render(request, "ai.html", active="ai", families=families)

        return await self.guarded(request, page)

    async def llm(self, request: Request) -> Response:
        """The LLM routes' request analytics (``GET /api/analytics/llm``), grouped as asked."""

        async def page(request: Request, client: AsyncKairosClient) -> Response:
            group = request.query_params.get("group_by", "model")
            group = group if group in LLM_GROUPS else "model"
            try:
                analytics = await client.llm_analytics(group_by=group, limit=PAGE_ROWS)
            except KairosAPIError as exc:
                if exc.status not in (404, 503):
                    raise
                return self.render(
                    request,
                    "llm.html",
                    active="llm",
                    analytics=None,
                    reason=exc.message,
                    group=group,
                    groups=LLM_GROUPS,
                )
            return self.render(
                request,
                "llm.html",
                active="llm",
                analytics=analytics,
                reason="",
                group=group,
                groups=LLM_GROUPS,
            )

        return await self.guarded(request, page)

    async def metrics(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            names = await client.metric_names()
            chosen = request.query_params.get("name") or (names[0] if names else "")
            window = request.query_params.get("range", "1h")
            return self.render(
                request,
                "metrics.html",
                active="metrics",
                names=names,
                chosen=chosen,
                window=window if window in RANGES else "1h",
                ranges=list(RANGES),
            )

        return await self.guarded(request, page)

    async def metrics_data(self, request: Request) -> Response:
        async def page(request: Request, client: AsyncKairosClient) -> Response:
            from datetime import UTC, datetime, timedelta

            name = request.query_params.get("name", "")
            seconds = RANGES.get(request.query_params.get("range", "1h"), 3600)
            end = datetime.now(UTC)
            points = await client.metrics_history(name, end - timedelta(seconds=seconds), end)
            xs = [datetime.fromisoformat(p.timestamp.replace("Z", "+00:00")).timestamp() for p in points]
            return JSONResponse({"name": name, "x": xs, "y": [p.value.value for p in points]})

        return await self.guarded(request, page)


async def _move(client: AsyncKairosClient, original_path: str, index: int, route: dict[str, Any]) -> None:
    """A changed external_path: the admin API names routes by path, so replace the list with the
    route changed at its index, in one atomic change tied to the generation read."""
    listing = await client.routes.list_documents()
    if index >= len(listing.routes) or listing.routes[index].get("external_path") != original_path:
        raise KairosAPIError(
            409, "The routes changed while you edited: reload the page and try again", "conflict"
        )
    routes = list(listing.routes)
    routes[index] = route
    await client.routes.replace(routes, generation=listing.generation)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def config_text(document: dict[str, Any]) -> str:
    """The config for reading: settings indented, one line per route. ``json.dumps(indent=...)``
    runs the pure-Python encoder (~60 ms for 1,000 routes); one ``dumps`` per route keeps the C one."""
    settings = {key: value for key, value in document.items() if key != "routers"}
    head = json.dumps(settings, indent=2)[:-1].rstrip()
    routes = ",\n".join("    " + json.dumps(route) for route in document.get("routers") or [])
    separator = ",\n" if settings else "\n"
    return f'{head}{separator}  "routers": [\n{routes}\n  ]\n}}'


def _top(summary: MetricsSummary) -> list[dict[str, Any]]:
    """The busiest routes with p50/p99 (ms) since start, from their histograms."""
    bounds = [*summary.bounds, math.inf]
    top = []
    for route in summary.routes:
        pairs = list(zip(bounds, route.buckets, strict=True))
        p50, p99 = histogram_quantile(0.5, pairs), histogram_quantile(0.99, pairs)
        top.append(
            {
                "route": route.route,
                "requests": route.requests,
                "errors": route.errors,
                "p50": None if p50 is None else round(p50 * 1000, 3),
                "p99": None if p99 is None else round(p99 * 1000, 3),
            }
        )
    return top


def _frame(previous: MetricsSummary, current: MetricsSummary, seconds: float) -> dict[str, Any]:
    """One SSE frame: rates and quantiles over the last interval (the difference of two summaries)."""
    delta_requests = max(0, current.requests - previous.requests)
    delta_errors = max(0, current.errors - previous.errors)
    bounds = [*current.bounds, math.inf]
    window = [
        (bound, max(0, now - before))
        for bound, now, before in zip(bounds, current.buckets, previous.buckets, strict=True)
    ]
    quantiles = {f"p{round(q * 100)}": histogram_quantile(q, window) for q in (0.5, 0.95, 0.99)}
    return {
        "t": time.time(),
        "rps": round(delta_requests / seconds, 2) if seconds > 0 else 0.0,
        "error_rate": round(delta_errors / delta_requests, 4) if delta_requests else 0.0,
        "in_flight": current.in_flight,
        "requests": current.requests,
        **{key: None if value is None else round(value * 1000, 3) for key, value in quantiles.items()},
        "top": _top(current),
    }


class SecurityHeaders:
    """Every answer of the dashboard carries the CSP and its companions."""

    def __init__(self, app: ASGIApp, local_only: bool) -> None:
        self.app = app
        self.local_only = local_only
        self._clients: OrderedDict[str, AsyncKairosClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.local_only and not _is_local(Request(scope)):
            response = JSONResponse(
                {
                    "error": "the dashboard answers only local clients (no KAIROS_ADMIN_TOKEN is set)",
                    "type": "forbidden",
                },
                status_code=403,
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    gateway_url: str | None = None,
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
    sessions: Sessions | None = None,
    local_only: bool = False,
) -> ASGIApp:
    """The dashboard app. ``transport``: how to reach the gateway (the gateway serving the
    dashboard itself passes an in-process ASGI transport); ``local_only``: refuse every non-local
    client (the gateway sets it when it has no admin token)."""
    # Standalone: the session key from KAIROS_DASHBOARD_SECRET, else from KAIROS_ADMIN_TOKEN when
    # this process has it (replicas of the dashboard then read each other's cookies). The token in
    # the environment never logs anyone in: the login form is the only way in (Kong Manager OSS's
    # unauthenticated UI is what the dashboard must not be).
    sessions = sessions or Sessions(derived_from=os.environ.get("KAIROS_ADMIN_TOKEN") or None)
    board = Dashboard(gateway_url, transport, sessions, local_only)
    app = Starlette(
        routes=[
            Route("/", board.overview),
            Route("/login", board.login_page, methods=["GET"]),
            Route("/login", board.login, methods=["POST"]),
            Route("/logout", board.logout, methods=["POST"]),
            Route("/events", board.events),
            Route("/routes", board.routes),
            Route("/routes/edit", board.route_form, methods=["GET"]),
            Route("/routes/edit", board.route_save, methods=["POST"]),
            Route("/routes/delete", board.route_delete, methods=["POST"]),
            Route("/explain", board.explain),
            Route("/backends", board.backends),
            Route("/config", board.config),
            Route("/config/reload", board.config_reload, methods=["POST"]),
            Route("/config/validate", board.config_validate, methods=["POST"]),
            Route("/ai", board.ai),
            Route("/llm", board.llm),
            Route("/metrics", board.metrics),
            Route("/metrics/data", board.metrics_data),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    return SecurityHeaders(app, local_only)


app = create_app()
