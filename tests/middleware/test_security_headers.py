"""SecurityHeadersMiddleware on its own around a Starlette app (global policy) and raw ASGI apps."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kairos.config.policies import DEFAULT_SECURITY_HEADERS, SecurityHeadersConfig
from kairos.errors import reject
from kairos.middleware.exchange import ExchangeMiddleware
from kairos.middleware.routing import RouteMiddleware
from kairos.middleware.security import SecurityHeadersMiddleware
from tests.asgi import AsgiClients
from tests.routing.util import build_table, router

DEFAULT_NAMES = {name.lower() for name in DEFAULT_SECURITY_HEADERS}


async def page(request: Request) -> PlainTextResponse:
    return PlainTextResponse("page", headers={"X-Frame-Options": "SAMEORIGIN"})


class Refuse:
    """A raw ASGI endpoint (Starlette routes to it as an app) rendering a gateway error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reject(scope, send, "authentication_error", "who are you", "rid-7")


def app_with(policy: Any) -> SecurityHeadersMiddleware:
    routes = [Route("/page", page), Route("/refuse", Refuse())]
    return SecurityHeadersMiddleware(Starlette(routes=routes), policy)


def security_names(response: httpx.Response) -> set[str]:
    return DEFAULT_NAMES & set(response.headers.keys())


def test_generated_responses_get_the_set_app_responses_do_not_by_default(asgi_client: AsgiClients) -> None:
    http = asgi_client(app_with(SecurityHeadersConfig()))
    refused = http.get("/refuse")
    assert refused.status_code == 401 and refused.json()["request_id"] == "rid-7"
    assert security_names(refused) == DEFAULT_NAMES
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert refused.headers["content-security-policy"] == "default-src 'self'"
    assert security_names(http.get("/page")) == {"x-frame-options"}  # only the page's own


def test_proxied_true_adds_only_what_the_response_lacks(asgi_client: AsgiClients) -> None:
    response = asgi_client(app_with(SecurityHeadersConfig(proxied=True))).get("/page")
    assert security_names(response) == DEFAULT_NAMES
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]  # the app's value kept


def test_custom_headers_override_add_and_drop(asgi_client: AsgiClients) -> None:
    config = SecurityHeadersConfig(
        headers={"Content-Security-Policy": "default-src 'none'", "X-XSS-Protection": "", "X-Extra": "1"}
    )
    response = asgi_client(app_with(config)).get("/refuse")
    assert response.headers["content-security-policy"] == "default-src 'none'"
    assert "x-xss-protection" not in response.headers
    assert response.headers["x-extra"] == "1"


def test_disabled_or_absent_policy_adds_nothing_and_the_accessor_is_live(asgi_client: AsgiClients) -> None:
    current: list[SecurityHeadersConfig | None] = [None]
    http = asgi_client(app_with(lambda: current[0]))
    assert security_names(http.get("/refuse")) == set()
    current[0] = SecurityHeadersConfig.model_validate(False)
    assert security_names(http.get("/refuse")) == set()
    current[0] = SecurityHeadersConfig.model_validate(True)
    assert security_names(http.get("/refuse")) == DEFAULT_NAMES


def test_route_policy_wins_and_404s_use_the_global_one(asgi_client: AsgiClients) -> None:
    async def proxied(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("upstream")(scope, receive, send)

    table = build_table(
        [
            router("/plain"),
            router("/opted-in", security_headers={"proxied": True}),
            router("/off", methods=("POST",), security_headers=False),
        ]
    )
    http = asgi_client(
        SecurityHeadersMiddleware(
            ExchangeMiddleware(RouteMiddleware(proxied, table=lambda: table)), SecurityHeadersConfig()
        )
    )
    missing = http.get("/nowhere")
    assert missing.status_code == 404 and security_names(missing) == DEFAULT_NAMES
    assert security_names(http.get("/plain")) == set()
    assert security_names(http.get("/opted-in")) == DEFAULT_NAMES
    wrong_method = http.get("/off")  # 405 rendered for a path whose only route turns them off...
    assert wrong_method.status_code == 405
    assert security_names(wrong_method) == DEFAULT_NAMES  # ...but no route matched: global policy


def test_websocket_refusals_get_the_set_when_the_server_supports_http_responses() -> None:
    async def refuse_upgrade(scope: Scope, receive: Receive, send: Send) -> None:
        await reject(scope, send, "forbidden", "no", "rid-ws")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/", "headers": [], "extensions": {"websocket.http.response": {}}}
    asyncio.run(SecurityHeadersMiddleware(refuse_upgrade, SecurityHeadersConfig())(scope, receive, send))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 403
    assert {name.decode() for name, _ in sent[0]["headers"]} >= DEFAULT_NAMES
