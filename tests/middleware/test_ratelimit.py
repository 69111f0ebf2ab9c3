"""RateLimitMiddleware on its own in a Starlette app, with a global policy (no gateway Exchange)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kairos.auth.authenticator import Identity
from kairos.middleware.ratelimit import RateLimitMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


class AsUser:
    """What a standalone AuthMiddleware does: put the verified identity in scope["state"]."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = dict(scope["headers"]).get(b"x-user")
        if user is not None:
            scope.setdefault("state", {})["identity"] = Identity("jwt", user.decode())
        await self.app(scope, receive, send)


def starlette() -> Starlette:
    return Starlette(routes=[Route("/hello", hello), Route("/health", hello), Route("/other", hello)])


def statuses(app: Any, path: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [(await client.get(path, headers=headers)).status_code for _ in range(count)]

    return asyncio.run(run())


def test_a_global_policy_from_a_dict() -> None:
    policy = {"requests_per_minute": 2, "algorithm": "fixed_window"}
    app = RateLimitMiddleware(starlette(), policy=policy)
    assert statuses(app, "/hello", 3) == [200, 200, 429]
    # PerIP standalone: one counter for the client across paths.
    assert statuses(app, "/other", 1) == [429]


def test_builtin_paths_are_exempt_by_default() -> None:
    app = RateLimitMiddleware(starlette(), policy={"requests_per_minute": 1})
    assert statuses(app, "/health", 5) == [200] * 5


def test_per_user_reads_the_identity_a_standalone_auth_left() -> None:
    policy = {"strategy": "PerUser", "requests_per_minute": 1}
    app = AsUser(RateLimitMiddleware(starlette(), policy=policy))
    assert statuses(app, "/hello", 2, {"x-user": "alice"}) == [200, 429]
    assert statuses(app, "/hello", 2, {"x-user": "bob"}) == [200, 429]
    assert statuses(app, "/hello", 2) == [200, 429]  # anonymous: by IP


def test_per_route_standalone_keys_on_the_path() -> None:
    app = RateLimitMiddleware(starlette(), policy={"strategy": "PerRoute", "requests_per_minute": 1})
    assert statuses(app, "/hello", 2) == [200, 429]
    assert statuses(app, "/other", 1) == [200]


def test_no_policy_passes_everything_through() -> None:
    app = RateLimitMiddleware(starlette())
    assert statuses(app, "/hello", 5) == [200] * 5
