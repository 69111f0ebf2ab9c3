"""RateLimitMiddleware on its own in a Starlette app, with a global policy (no gateway Exchange)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kairos.auth.authenticator import Identity
from kairos.middleware.ratelimit import RateLimitMiddleware
from tests.asgi import AsgiClient, AsgiClients


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


def statuses(http: AsgiClient, path: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    return [http.get(path, headers=headers).status_code for _ in range(count)]


def test_a_global_policy_from_a_dict(asgi_client: AsgiClients) -> None:
    policy = {"requests_per_minute": 2, "algorithm": "fixed_window"}
    http = asgi_client(RateLimitMiddleware(starlette(), policy=policy))
    assert statuses(http, "/hello", 3) == [200, 200, 429]
    # PerIP standalone: one counter for the client across paths.
    assert statuses(http, "/other", 1) == [429]


def test_builtin_paths_are_exempt_by_default(asgi_client: AsgiClients) -> None:
    http = asgi_client(RateLimitMiddleware(starlette(), policy={"requests_per_minute": 1}))
    assert statuses(http, "/health", 5) == [200] * 5


def test_per_user_reads_the_identity_a_standalone_auth_left(asgi_client: AsgiClients) -> None:
    policy = {"strategy": "PerUser", "requests_per_minute": 1}
    http = asgi_client(AsUser(RateLimitMiddleware(starlette(), policy=policy)))
    assert statuses(http, "/hello", 2, {"x-user": "alice"}) == [200, 429]
    assert statuses(http, "/hello", 2, {"x-user": "bob"}) == [200, 429]
    assert statuses(http, "/hello", 2) == [200, 429]  # anonymous: by IP


def test_per_route_standalone_keys_on_the_path(asgi_client: AsgiClients) -> None:
    http = asgi_client(
        RateLimitMiddleware(starlette(), policy={"strategy": "PerRoute", "requests_per_minute": 1})
    )
    assert statuses(http, "/hello", 2) == [200, 429]
    assert statuses(http, "/other", 1) == [200]


def test_no_policy_passes_everything_through(asgi_client: AsgiClients) -> None:
    http = asgi_client(RateLimitMiddleware(starlette()))
    assert statuses(http, "/hello", 5) == [200] * 5
