"""Helpers every layer uses to read a request: its policies, its id and client, its body.

Not a middleware: the middlewares import these (and kairos.exchange) and never each other. What one
layer decides and another needs travels in the Exchange; how a layer reads the Exchange, the
matched route's policies and the request body is written once, here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kairos.exchange import SCOPE_KEY

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope

    from kairos.routing.route import Route

T = TypeVar("T")


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4 hex, at a third of its cost)."""
    return os.urandom(16).hex()


def as_accessor(policy: T | Callable[[], T | None] | None) -> Callable[[], T | None]:
    """A zero-argument accessor for a policy given as a value or as an accessor (the gateway passes
    accessors so a reload is seen at once; a standalone user passes the value). Middlewares call
    it once, in ``__init__``, so a request never asks which of the two it was given."""
    if callable(policy):
        return policy

    def value() -> T | None:
        return policy

    return value


def route_policy(
    scope: Scope, pick: Callable[[Route], T | None], fallback: Callable[[], T | None]
) -> T | None:
    """The matched route's own setting, ``pick(route)``, when it has one; else ``fallback()``, the
    middleware's global policy (an accessor: see as_accessor). Standalone, with no Exchange or no
    route, only the fallback applies.

    ``pick`` is a module-level function (``def _cors(route: Route) -> CorsConfig | None``), never a
    lambda made per request: the hot path allocates nothing here. A route whose setting must win
    even when it is "off" returns a value for it, never None (the auth and cache middlewares).
    """
    exchange = scope.get(SCOPE_KEY)
    route = exchange.route if exchange is not None else None
    if route is not None:  # policy_of, inlined: several layers ask on every request
        value = pick(route)
        if value is not None:
            return value
    return fallback()


def policy_of(
    route: Route | None, pick: Callable[[Route], T | None], fallback: Callable[[], T | None]
) -> T | None:
    """route_policy for a route already in hand (the balancer's, a route a preflight asks about)."""
    if route is not None:
        value = pick(route)
        if value is not None:
            return value
    return fallback()


def request_id_and_ip(scope: Scope) -> tuple[str, str]:
    """The Exchange's request id and resolved client IP; standalone, a fresh id and the peer."""
    exchange = scope.get(SCOPE_KEY)
    if exchange is not None:
        return exchange.request_id, exchange.client_ip
    client = scope.get("client")
    return new_request_id(), (client[0] if client else "")


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked): the middlewares
    that buffer a body to replay it (retry, AI routing) skip those that have none."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bool(value != b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def read_prefix(scope: Scope, receive: Receive, limit: int) -> tuple[list[bytes], bool] | None:
    """The request body's first messages, read until more than ``limit`` bytes came or the body
    ended: ``(chunks, complete)``, or None when the client disconnected. With ``replaying`` this is
    how a layer looks at a body (retry's replay buffer, AI routing's preview, a JSON body
    transformation) and still hands the whole of it on. ``complete`` with more than ``limit`` bytes
    is possible: the last message may carry the body past the limit."""
    if not has_body(scope):
        return [], True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        complete = not message.get("more_body", False)
        if complete or size > limit:
            return chunks, complete


def replaying(chunks: list[bytes], complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered ``chunks`` first (as one message), then the client's
    channel: the rest of the body when it was not ``complete``, or the eventual disconnect."""
    if not chunks:
        return receive
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            body = b"".join(pending)
            pending.clear()
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay
