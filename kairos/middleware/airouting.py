"""AiRoutingMiddleware: asks the AI router which backend should serve the request.

Sits between TransformMiddleware (so the model sees the request the backend will get) and
RetryMiddleware, and only sets ``Exchange.preferred_backend``: the balancer honours it when that
backend is available (circuit, health), else balances as usual, so AI routing can never send a
request to a backend the resilience layers refused. Routes without an enabled ``ai_policy`` pass
through at the cost of two attribute reads.

The body preview is read here, bounded: at most ``body_preview_chars`` + a redaction margin
(kairos/ai/context.py) of the body is buffered, and the inner app gets a ``receive`` that replays
those bytes first, then continues with the client's channel, so the backend (and retry's own replay
buffer below) gets the complete, unmodified body. ``latency_prediction`` reads no body.

``shadow: true`` routes start the decision beside the request, which is balanced normally and never
waits for it; when both are done, ``kairos_ai_shadow_decisions_total`` records whether the AI would
have picked the backend that was used. Shadow decisions share ``ai.max_concurrency`` with the
others (beyond it they are skipped as ``fallback_busy``), so evaluating a route can never pile up
provider calls.

A repeated request takes a short path: its redacted context comes from the router's memo
(kairos/ai/context.py ``ContextMemo``) and its cached decision from ``AiRouter.cached``, both
synchronous, so a cached decision adds a few µs to the request, not a redaction and two awaits.

With ``debug_header: true`` the response carries ``X-Kairos-AI-Backend: <index|none>;
outcome=<outcome>``. The chosen index and the outcome also travel in the Exchange to the access log
(``ai_backend``, ``ai_outcome``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.ai.context import REDACT_MARGIN, RequestContext
from kairos.ai.router import AiRouter, Decision, RoutePlan
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.request import as_accessor, has_body, read_prefix, replaying
from kairos.routing.route import Route

DEBUG_HEADER = b"x-kairos-ai-backend"


class AiRoutingMiddleware:
    def __init__(self, app: ASGIApp, router: AiRouter | Callable[[], AiRouter | None]) -> None:
        self.app = app
        self._router = as_accessor(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        route = exchange.route if exchange is not None else None
        policy = route.config.ai_policy if route is not None else None
        if policy is None or not policy.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        assert exchange is not None and route is not None
        router = self._router()
        plan = router.plan_for(route) if router is not None else None
        if router is None or plan is None:
            await self.app(scope, receive, send)
            return
        context = None
        if plan.uses_body:
            body = b""
            if has_body(scope):
                read = await _read_preview(scope, receive, plan.preview_chars + REDACT_MARGIN)
                if read is None:
                    return  # the client left during the upload
                body, receive = read
            context = router.contexts.context(
                scope["method"],
                scope.get("raw_path") or scope["path"].encode("utf-8"),
                scope.get("query_string", b""),
                scope["headers"],
                body,
                plan.preview_chars,
            )
        if plan.shadow:
            await self._shadow(router, plan, route, context, exchange, scope, receive, send)
            return
        index = router.cached(plan, context) if context is not None else None
        if index is not None:  # the common case, and the cheap one: a repeated request
            exchange.preferred_backend = index
            exchange.ai_outcome = "cached"
            if plan.debug_header:
                send = _with_header(send, Decision(index, "cached", index))
            await self.app(scope, receive, send)
            return
        decision = await router.decide(plan, route, context)
        exchange.preferred_backend = decision.index
        exchange.ai_outcome = decision.outcome
        if plan.debug_header:
            send = _with_header(send, decision)
        try:
            await self.app(scope, receive, send)
        finally:
            if plan.strategy is None:
                router.observe(exchange)

    async def _shadow(
        self,
        router: AiRouter,
        plan: RoutePlan,
        route: Route,
        context: RequestContext | None,
        exchange: Exchange,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        task = router.decide_in_background(plan, route, context)
        exchange.ai_outcome = "shadow"
        try:
            await self.app(scope, receive, send)
        finally:
            if plan.strategy is None:
                router.observe(exchange)
            used = exchange.backend or (exchange.tried[-1] if exchange.tried else None)
            if used is not None:
                position = next((i for i, b in enumerate(route.backends) if b is used), None)

                def compare(done: asyncio.Task[Decision]) -> None:
                    if done.cancelled() or done.exception() is not None:
                        return
                    chosen = done.result().chosen
                    if chosen is not None and position is not None:
                        router.stats.agreement(plan.name, chosen == position)

                task.add_done_callback(compare)


async def _read_preview(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Receive] | None:
    """At least ``limit`` bytes of the body (whole messages; all of it when shorter) and a
    ``receive`` that replays them before the rest; None when the client disconnected."""
    read = await read_prefix(scope, receive, limit - 1)  # read_prefix stops past its limit
    if read is None:
        return None
    chunks, complete = read
    return b"".join(chunks), replaying(chunks, complete, receive)


def _with_header(send: Send, decision: Decision) -> Send:
    shown = "none" if decision.index is None else str(decision.index)
    value = f"{shown}; outcome={decision.outcome}".encode("latin-1")

    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (DEBUG_HEADER, value)]}
        await send(message)

    return send_with_header
