"""TransformMiddleware on its own in a Starlette app (a global policy, no gateway Exchange)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kairos.errors import send_error
from kairos.middleware.transform import TransformMiddleware
from kairos.routing.route import safe_upstream_path
from tests.asgi import AsgiClients


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "path": request.url.path,
            "raw_path": request.scope.get("raw_path", b"").decode(),
            "query": request.scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
            "body": body.decode(),
        }
    )


async def big(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        yield b'{"items": ['
        for index in range(2000):
            yield (b"," if index else b"") + b'{"n": %d}' % index
        yield b'], "secret": 1}'

    return StreamingResponse(chunks(), media_type="application/json")


async def small(request: Request) -> Response:
    return Response(b'{"secret": 1, "kept": 2}', media_type="application/json", headers={"ETag": '"abc"'})


def app(**policy: Any) -> TransformMiddleware:
    routes = [Route("/big", big), Route("/small", small, methods=["GET", "HEAD"])]
    inner = Starlette(routes=[*routes, Route("/{path:path}", echo, methods=["GET", "POST"])])
    return TransformMiddleware(inner, **policy)


def test_header_query_and_path_rules_standalone(asgi_client: AsgiClients) -> None:
    policy = {
        "headers": [
            {"action": "set", "name": "X-Via", "value": "kairos ${client_ip}"},
            {"action": "remove", "name": "X-Secret"},
            {"action": "replace", "name": "X-Token", "pattern": "^Token (.+)$", "replacement": "Bearer $1"},
        ],
        "query_params": [{"action": "set", "name": "v", "value": "2"}],
        "path": {"pattern": "^/v1/", "replacement": "/v2/"},
    }
    response = asgi_client(app(request=policy)).get(
        "/v1/items?v=1&a=b", headers={"X-Secret": "s", "X-Token": "Token t"}
    )
    body = response.json()
    headers = dict(body["headers"])
    assert body["path"] == "/v2/items" and body["raw_path"] == "/v2/items"
    assert body["query"] == "v=2&a=b"
    assert headers["x-via"] == "kairos 127.0.0.1" and headers["x-token"] == "Bearer t"
    assert "x-secret" not in headers


def test_the_client_scope_is_never_changed_in_place(asgi_client: AsgiClients) -> None:
    seen: list[Scope] = []

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await inner(scope, receive, send)

    inner = app(request={"headers": [{"action": "set", "name": "X-A", "value": "1"}]})
    asgi_client(outer).get("/x")
    assert not any(name == b"x-a" for name, _ in seen[0]["headers"])


def test_a_rewrite_to_another_host_is_refused(asgi_client: AsgiClients) -> None:
    response = asgi_client(app(request={"path": {"pattern": "^/to/(.*)$", "replacement": "/$1"}})).get(
        "/to/%2Fevil"
    )
    assert response.status_code == 502 and response.json()["type"] == "config"
    for path in ("//evil", "/a/../b", "/a/%2e%2e/b", "/a\\b", "relative", "/a b", "/a?b", "/%2F/evil"):
        assert not safe_upstream_path(path), path
    for path in ("/", "/a/b", "/a%2Fb", "/a..b/c", "/@host"):
        assert safe_upstream_path(path), path


def test_request_json_body_rules_and_content_length(asgi_client: AsgiClients) -> None:
    policy = {"body": {"remove": ["password"], "rename": {"user": "account.name"}}, "max_body_bytes": 100}
    response = asgi_client(app(request=policy)).post("/save", json={"user": "ada", "password": "p"})
    body = response.json()
    assert json.loads(body["body"]) == {"account": {"name": "ada"}}
    assert dict(body["headers"])["content-length"] == str(len(body["body"]))
    big = json.dumps({"user": "x" * 200, "password": "p"})
    assert asgi_client(app(request=policy)).post("/save", content=big).json()["body"] == big  # not JSON-typed
    response = asgi_client(app(request=policy)).post(
        "/save", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.json()["body"] == big  # over the bound


def test_response_rules_and_a_big_json_response_streams_untouched(asgi_client: AsgiClients) -> None:
    policy = {
        "status_code_mappings": [{"from": 200, "to": 203, "condition": {"query": "legacy", "present": True}}],
        "headers": [{"action": "set", "name": "X-Done", "value": "1"}],
        "body": {"remove": ["secret"]},
        "max_body_bytes": 1000,
    }
    small_response = asgi_client(app(response=policy)).get("/small?legacy")
    assert small_response.status_code == 203 and small_response.json() == {"kept": 2}
    assert small_response.headers["content-length"] == str(len(small_response.content))
    assert "etag" not in small_response.headers  # the upstream's validator no longer fits the body
    assert asgi_client(app(response=policy)).get("/small").status_code == 200
    head = asgi_client(app(response=policy)).head("/small")
    assert head.status_code == 200 and head.headers["etag"] == '"abc"'
    big = asgi_client(app(response=policy)).get("/big")
    assert big.headers["x-done"] == "1"
    assert big.json()["secret"] == 1 and len(big.json()["items"]) == 2000


def test_gateway_generated_answers_pass_untouched(asgi_client: AsgiClients) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(send, "upstream", "down", "rid")

    policy = {
        "status_code_mappings": [{"from": 502, "to": 200}],
        "headers": [{"action": "set", "name": "X", "value": "1"}],
    }
    response = asgi_client(TransformMiddleware(failing, response=policy)).get("/")
    assert response.status_code == 502 and "x" not in response.headers


def test_websocket_upgrades_get_request_header_rules_only() -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    policy = {
        "headers": [{"action": "add", "name": "X-Added", "value": "yes"}],
        "path": {"pattern": "^/ws", "replacement": "/x"},
    }
    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": []}
    asyncio.run(TransformMiddleware(inner, request=policy)(scope, receive, send))
    assert seen[0]["headers"] == [(b"x-added", b"yes")] and seen[0]["path"] == "/ws"


def test_a_lifespan_scope_passes_through() -> None:
    events: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        events.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    asyncio.run(TransformMiddleware(inner, request={"headers": []})({"type": "lifespan"}, receive, send))
    assert events == ["lifespan"]


def test_one_walk_gives_what_rule_by_rule_gives() -> None:
    """HeaderPass (rules on distinct headers, no condition, applied in one walk) must equal applying
    the rules one after another, on every mix of actions and of headers present, repeated or not."""
    import random

    from kairos.config.transform import RequestTransformation
    from kairos.middleware.transform import _apply_header_rules, _Context, _rewrite_headers

    chooser = random.Random(20261124)
    names = ["X-A", "X-B", "User-Agent", "X-Tenant", "Accept"]
    rule_shapes = [
        lambda name: {"action": "set", "name": name, "value": "set-${request_id}"},
        lambda name: {"action": "add", "name": name, "value": "added"},
        lambda name: {"action": "remove", "name": name},
        lambda name: {"action": "replace", "name": name, "pattern": "^(.*)$", "replacement": "$1 via"},
        lambda name: {"action": "replace", "name": name, "pattern": "a", "replacement": "A"},
    ]
    walked = 0
    for _ in range(400):
        chosen = chooser.sample(names, chooser.randint(1, len(names)))
        rules = [chooser.choice(rule_shapes)(name) for name in chosen]
        plan = RequestTransformation.model_validate({"headers": rules}).plan
        assert plan.header_pass is not None, rules
        headers = [
            (chooser.choice(names).lower().encode(), chooser.choice([b"alpha", b"b", b""]))
            for _ in range(chooser.randint(0, 6))
        ]
        scope: Scope = {"type": "http", "headers": headers, "path": "/", "client": ("127.0.0.1", 1)}
        context = _Context(scope, None)
        one_walk = _rewrite_headers(plan.headers, plan.header_pass, headers, context)
        rule_by_rule = _apply_header_rules(plan.headers, headers, context)
        assert one_walk == rule_by_rule, (rules, headers)
        # Response header names may come in any case: the walk matches them all the same.
        shouted = [(name.upper(), value) for name, value in headers]
        walked_shouted = _rewrite_headers(plan.headers, plan.header_pass, shouted, context)
        assert [(name.lower(), value) for name, value in walked_shouted] == rule_by_rule
        walked += 1
    assert walked == 400
    # Two rules on one header, or a condition, are applied rule by rule.
    twice = RequestTransformation.model_validate(
        {"headers": [{"action": "remove", "name": "X-A"}, {"action": "add", "name": "x-a", "value": "1"}]}
    )
    assert twice.plan.header_pass is None
    conditional = RequestTransformation.model_validate(
        {"headers": [{"action": "set", "name": "X-A", "value": "1", "condition": {"path": "^/v1"}}]}
    )
    assert conditional.plan.header_pass is None
