"""RetryMiddleware: re-runs the stack below it (balancer → breaker → proxy) for another attempt.

Sits just outside BalancerMiddleware, so each attempt gets a fresh backend pick; the attempts a
request already made are listed in ``Exchange.tried`` and the balancer prefers another backend.
The route's ``timeout_ms`` becomes ``Exchange.deadline``, shared by all attempts (the proxy bounds
each attempt by what is left of it, and by ``per_try_timeout_ms``).

Whether to retry is decided when an attempt's response *starts*, before anything reaches the
client: a retryable answer is swallowed (its small error body is drained, so the circuit breaker
below still sees a normal outcome) and the next attempt runs after the backoff; a final answer is
passed through, and from then on nothing is ever retried. The request body is buffered for replay
up to ``max_replay_bytes``; a larger body is streamed once and its request is not retried.

Without a ``retry`` block a route with several backends still fails over on connect errors (nothing
was sent, so it is always safe), which kairos-rs did not do (reference §10.9).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.config.retry import RetryConfig
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.request import as_accessor, has_body, policy_of, read_prefix, replaying
from kairos.resilience.retry import (
    FAILOVER_ONLY,
    RetryBudget,
    RetryStats,
    backoff_seconds,
    may_retry,
    parse_retry_after,
)
from kairos.routing.backend import Backend
from kairos.routing.route import Route

RetryPolicy = RetryConfig | Callable[[], RetryConfig | None] | None
_BUDGETS_LIMIT = 10_000


def _retry(route: Route) -> RetryConfig | None:
    return route.config.retry


class RetryMiddleware:
    def __init__(self, app: ASGIApp, policy: RetryPolicy = None, stats: RetryStats | None = None) -> None:
        self.app = app
        self._global = as_accessor(policy)
        self._budgets: dict[str, RetryBudget] = {}
        self.stats = stats if stats is not None else RetryStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        route = exchange.route if exchange is not None else None
        if (
            scope["type"] != "http"
            or exchange is None
            or route is None
            or route.config.protocol in ("dns", "llm")  # these order and retry their own upstreams
        ):
            await self.app(scope, receive, send)
            return
        config = policy_of(route, _retry, self._global)
        if config is None:
            if len(route.backends) < 2:
                await self.app(scope, receive, send)
                return
            config = FAILOVER_ONLY
        if config.max_retries == 0:
            await self.app(scope, receive, send)
            return
        if config is FAILOVER_ONLY and not has_body(scope):
            await self._fail_over(scope, receive, send, exchange, route.timeout)
            return
        budget = self._budgets.get(route.key)
        if budget is None:
            if len(self._budgets) >= _BUDGETS_LIMIT:
                self._budgets.clear()
            budget = self._budgets[route.key] = RetryBudget()
        budget.request()
        if route.timeout is not None:
            exchange.deadline = time.monotonic() + route.timeout
        if config.per_try_timeout_ms is not None:
            exchange.try_timeout = config.per_try_timeout_ms / 1000
        body = await _Body.read(scope, receive, config.max_replay_bytes)
        if body is None:
            return  # the client left during the upload
        await _Attempts(self, config, budget, scope, exchange, body, send).run()

    async def _fail_over(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange, route_timeout: float | None
    ) -> None:
        """FAILOVER_ONLY for a request without a body (most of them on a multi-backend route): what
        ``_Attempts`` decides for it, without its bookkeeping. Only a connect error is tried again
        (nothing reached an upstream), at once, within the route's deadline; such a retry never
        draws on the retry budget, and there is no body to buffer, so neither is kept (the budget
        only ever limits routes with a ``retry`` block). This path is ~10 µs of CPU per request
        cheaper, on every route with several backends and no ``retry``."""
        deadline = None
        if route_timeout is not None:
            deadline = exchange.deadline = time.monotonic() + route_timeout
        attempts_left = FAILOVER_ONLY.max_retries
        failed_attempts = 0  # attempts whose (gateway-made) 502 was dropped for another attempt

        async def attempt_send(message: Message) -> None:
            nonlocal failed_attempts
            if failed_attempts > exchange.attempt:
                return  # the rest of a dropped answer
            if (
                message["type"] == "http.response.start"
                and exchange.upstream_failure == "connect"
                and attempts_left > 0
                and (deadline is None or time.monotonic() < deadline)
            ):
                failed_attempts += 1
                return
            await send(message)

        while True:
            exchange.upstream_failure = None
            exchange.backend = None
            await self.app(scope, receive, attempt_send)
            chosen = _picked(exchange)
            if chosen is not None:
                exchange.tried.append(chosen)
            if failed_attempts == exchange.attempt:
                return
            attempts_left -= 1
            self.stats.retries += 1
            exchange.attempt += 1


class _Body:
    """The request body, kept for replay when it fits in ``max_replay_bytes``."""

    __slots__ = ("chunks", "complete", "receive", "replayable")

    def __init__(
        self, chunks: list[bytes], replayable: bool, receive: Receive, complete: bool = True
    ) -> None:
        self.chunks = chunks
        self.replayable = replayable
        self.receive = receive
        self.complete = complete  # the whole body is in ``chunks``

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, limit: int) -> _Body | None:
        read = await read_prefix(scope, receive, limit)
        if read is None:
            return None
        chunks, complete = read
        # Over the limit it is sent once; the rest (if any) still streams from the client.
        return cls(chunks, sum(map(len, chunks)) <= limit, receive, complete)

    def receiver(self) -> Receive:
        """A fresh ``receive`` for one attempt: the buffered body, then the client's channel (the
        rest of an oversized body, or the eventual disconnect)."""
        return replaying(self.chunks, self.complete, self.receive)


def _picked(exchange: Exchange) -> Backend | None:
    """The backend the balancer chose for the attempt that just ran (None if it refused)."""
    return exchange.backend


class _Attempts:
    """One request's attempts."""

    def __init__(
        self,
        owner: RetryMiddleware,
        config: RetryConfig,
        budget: RetryBudget,
        scope: Scope,
        exchange: Exchange,
        body: _Body,
        send: Send,
    ) -> None:
        self.owner = owner
        self.config = config
        self.budget = budget
        self.scope = scope
        self.exchange = exchange
        self.body = body
        self.send = send
        self.method = scope["method"]
        self.idempotency_key = any(name == b"idempotency-key" for name, _ in scope["headers"])
        self.delay = 0.0  # backoff before the next attempt, decided when this one's answer started

    async def run(self) -> None:
        exchange = self.exchange
        while True:
            retry = False

            async def attempt_send(message: Message) -> None:
                nonlocal retry
                if message["type"] == "http.response.start":
                    retry = self._should_retry(message)
                if not retry:
                    await self.send(message)
                # else: the answer of an attempt that will be retried is drained, never sent

            exchange.upstream_failure = None
            exchange.backend = None
            await self.owner.app(self.scope, self.body.receiver(), attempt_send)
            chosen = _picked(exchange)
            if chosen is not None:
                exchange.tried.append(chosen)
            if not retry:
                return
            self.owner.stats.retries += 1
            exchange.attempt += 1
            if self.delay > 0:
                exchange.waited += self.delay  # backoff is not the gateway's own work
                await asyncio.sleep(self.delay)

    def _should_retry(self, start: Message) -> bool:
        exchange, config = self.exchange, self.config
        if not self.body.replayable or exchange.attempt >= config.max_retries:
            return False
        status = start["status"]
        if not may_retry(config, self.method, self.idempotency_key, status, exchange.upstream_failure):
            return False
        retry_after = None
        for name, value in start.get("headers", ()):
            if name.lower() == b"retry-after":
                retry_after = parse_retry_after(value)
                break
        delay = backoff_seconds(config, exchange.attempt, retry_after)
        if exchange.deadline is not None and time.monotonic() + delay >= exchange.deadline:
            return False  # no time left for another attempt: this answer is the answer
        if exchange.upstream_failure != "connect" and not self.budget.try_retry(config.budget_percent):
            self.owner.stats.budget_exhausted += 1
            return False
        self.delay = delay
        return True
