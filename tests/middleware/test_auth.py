"""AuthMiddleware on its own in a plain Starlette app, with a global policy (no gateway)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kairos.auth.authenticator import Authenticator
from kairos.config.jwt import JwtConfig
from kairos.config.model import ApiKeyConsumer
from kairos.middleware.auth import AuthMiddleware
from tests.asgi import AsgiClients

SECRET = "standalone-secret-that-is-32-characters-or-more"


async def whoami(request: Request) -> JSONResponse:
    identity = request.scope["state"]["identity"]
    return JSONResponse({"kind": identity.kind, "subject": identity.subject, "roles": sorted(identity.roles)})


def make_app(required_roles: Sequence[str] = ()) -> AuthMiddleware:
    authenticator = Authenticator(
        JwtConfig(secret=SECRET), [ApiKeyConsumer(name="robot", keys=("robot-key-0123456789",))]
    )
    return AuthMiddleware(
        Starlette(routes=[Route("/", whoami)]), authenticator, required=True, required_roles=required_roles
    )


def test_global_policy_sets_the_identity(asgi_client: AsgiClients) -> None:
    http = asgi_client(make_app())
    token = jwt.encode(
        {"sub": "bob", "roles": ["ops"], "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    assert http.get("/", headers={"Authorization": f"Bearer {token}"}).json() == {
        "kind": "jwt",
        "subject": "bob",
        "roles": ["ops"],
    }
    assert http.get("/", headers={"X-API-Key": "robot-key-0123456789"}).json()["subject"] == "robot"
    refused = http.get("/")
    assert refused.status_code == 401 and refused.json()["type"] == "authentication_error"
    assert len(refused.json()["request_id"]) == 32  # standalone: the middleware makes one


def test_global_roles(asgi_client: AsgiClients) -> None:
    http = asgi_client(make_app(required_roles=["admin"]))
    token = jwt.encode({"sub": "bob", "roles": "ops"}, SECRET, algorithm="HS256")
    assert http.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_verified_tokens_are_cached_until_expiry() -> None:
    authenticator = Authenticator(JwtConfig(secret=SECRET))
    assert authenticator.jwt is not None
    token = jwt.encode({"sub": "c", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    headers = [(b"authorization", f"Bearer {token}".encode())]
    first = authenticator.authenticate(headers)
    assert authenticator.authenticate(headers) is first  # the second call is a cache hit
