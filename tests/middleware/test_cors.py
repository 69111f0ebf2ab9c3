"""CorsMiddleware on its own in a Starlette app (global policy), and RouteMiddleware's preflight path."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kairos.config.policies import CorsConfig
from kairos.errors import GENERATED, reject
from kairos.exchange import get_exchange
from kairos.middleware.cors import CorsMiddleware
from kairos.middleware.exchange import ExchangeMiddleware
from kairos.middleware.routing import RouteMiddleware
from tests.asgi import AsgiClients
from tests.routing.util import build_table, router

ORIGIN = "https://app.example"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.method} hello")


async def upstream_cors(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        "own cors", headers={"Access-Control-Allow-Origin": "*", "Access-Control-Max-Age": "9"}
    )


async def refused(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("never called")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", hello, methods=["GET", "POST", "OPTIONS"]),
            Route("/upstream-cors", upstream_cors),
        ]
    )


def preflight(method: str = "POST", origin: str = ORIGIN, **extra: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, **extra}


def test_preflight_answered_by_the_middleware(asgi_client: AsgiClients) -> None:
    config = CorsConfig(
        allowed_origins=(ORIGIN,),
        allowed_methods=("GET", "post"),
        allowed_headers=("X-Custom",),
        max_age=120,
    )
    app = CorsMiddleware(starlette_app(), config)
    response = asgi_client(app).options(
        "/", headers=preflight("POST", **{"Access-Control-Request-Headers": "x-custom"})
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert "x-custom" in response.headers["access-control-allow-headers"].lower()
    assert response.headers["access-control-max-age"] == "120"
    assert "Origin" in response.headers["vary"]
    assert len(response.headers["x-request-id"]) == 32  # standalone: a fresh id
    assert response.text == "OK"  # not the app's "OPTIONS hello"


def test_refused_preflights_are_json_400_without_allow_origin(asgi_client: AsgiClients) -> None:
    http = asgi_client(
        CorsMiddleware(starlette_app(), CorsConfig(allowed_origins=(ORIGIN,), allowed_methods=("GET",)))
    )
    foreign = http.options("/", headers=preflight("GET", origin="https://evil.example"))
    assert foreign.status_code == 400
    assert foreign.json()["type"] == "bad_request"
    assert "origin" in foreign.json()["error"]
    assert "access-control-allow-origin" not in foreign.headers
    method = http.options("/", headers=preflight("DELETE"))
    assert method.status_code == 400 and "method" in method.json()["error"]
    header = http.options("/", headers=preflight("GET", **{"Access-Control-Request-Headers": "X-Secret"}))
    assert header.status_code == 400 and "headers" in header.json()["error"]
    # Safelisted request headers need no allowed_headers entry (empty = safelisted only).
    safelisted = http.options(
        "/", headers=preflight("GET", **{"Access-Control-Request-Headers": "content-type"})
    )
    assert safelisted.status_code == 200


def test_wildcard_headers_reflect_the_request(asgi_client: AsgiClients) -> None:
    http = asgi_client(
        CorsMiddleware(starlette_app(), CorsConfig(allowed_origins=("*",), allowed_headers=("*",)))
    )
    response = http.options("/", headers=preflight("PUT", **{"Access-Control-Request-Headers": "x-a, x-b"}))
    assert response.status_code == 200
    assert response.headers["access-control-allow-headers"] == "x-a, x-b"
    assert response.headers["access-control-allow-origin"] == "*"


def test_actual_responses_carry_cors_headers(asgi_client: AsgiClients) -> None:
    config = CorsConfig(allowed_origins=(ORIGIN,), exposed_headers=("X-Request-ID", "X-Total"))
    http = asgi_client(CorsMiddleware(starlette_app(), config))
    allowed = http.get("/", headers={"Origin": ORIGIN})
    assert allowed.text == "GET hello"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-expose-headers"] == "X-Request-ID, X-Total"
    assert "Origin" in allowed.headers["vary"]
    foreign = http.get("/", headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers
    assert "Origin" in foreign.headers["vary"]
    # A plain OPTIONS (no Access-Control-Request-Method) is not a preflight: the app answers it.
    assert http.options("/", headers={"Origin": ORIGIN}).text == "OPTIONS hello"


def test_credentials_with_wildcard_echo_the_origin(asgi_client: AsgiClients) -> None:
    http = asgi_client(
        CorsMiddleware(starlette_app(), CorsConfig(allowed_origins=("*",), allow_credentials=True))
    )
    actual = http.get("/", headers={"Origin": ORIGIN})
    assert actual.headers["access-control-allow-origin"] == ORIGIN
    assert actual.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in actual.headers["vary"]
    pre = http.options("/", headers=preflight("GET"))
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert pre.headers["access-control-allow-credentials"] == "true"
    no_credentials = asgi_client(CorsMiddleware(starlette_app(), CorsConfig(allowed_origins=("*",))))
    assert no_credentials.get("/", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == "*"


def test_upstream_cors_headers_are_replaced_by_the_policy(asgi_client: AsgiClients) -> None:
    http = asgi_client(CorsMiddleware(starlette_app(), CorsConfig(allowed_origins=(ORIGIN,))))
    foreign = http.get("/upstream-cors", headers={"Origin": "https://evil.example"})
    assert foreign.text == "own cors"
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-max-age" not in foreign.headers
    assert (
        http.get("/upstream-cors", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"]
        == ORIGIN
    )


def test_generated_errors_get_cors_headers(asgi_client: AsgiClients) -> None:
    async def deny(scope: Scope, receive: Receive, send: Send) -> None:
        await reject(scope, send, "rate_limit_error", "slow down", "rid-1")

    response = asgi_client(CorsMiddleware(deny, CorsConfig(allowed_origins=(ORIGIN,)))).get(
        "/", headers={"Origin": ORIGIN}
    )
    assert response.status_code == 429 and response.json()["type"] == "rate_limit_error"
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_disabled_or_absent_policy_passes_through_and_accessor_is_live(asgi_client: AsgiClients) -> None:
    current: list[CorsConfig | None] = [None]
    http = asgi_client(CorsMiddleware(starlette_app(), lambda: current[0]))
    assert http.options("/", headers=preflight("GET")).text == "OPTIONS hello"
    assert "access-control-allow-origin" not in http.get("/", headers={"Origin": ORIGIN}).headers
    current[0] = CorsConfig(allowed_origins=(ORIGIN,))
    assert http.options("/", headers=preflight("GET")).text == "OK"
    current[0] = CorsConfig(enabled=False, allowed_origins=(ORIGIN,))
    assert http.options("/", headers=preflight("GET")).text == "OPTIONS hello"


def test_preflight_marks_the_response_as_gateway_generated(asgi_client: AsgiClients) -> None:
    starts: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                starts.append(message)
            await send(message)

        await CorsMiddleware(refused, CorsConfig(allowed_origins=(ORIGIN,)))(scope, receive, spy)

    asgi_client(app).options("/", headers=preflight("GET"))
    asgi_client(app).options("/", headers=preflight("GET", origin="https://evil.example"))
    assert [start[GENERATED] for start in starts] == [True, True]
    assert [start["status"] for start in starts] == [200, 400]


# --- RouteMiddleware: a preflight reaches CORS on a route that does not list OPTIONS --------------


def routed(cors: CorsMiddleware, routers: list[dict[str, Any]]) -> ExchangeMiddleware:
    table = build_table(routers)
    return ExchangeMiddleware(RouteMiddleware(cors, table=lambda: table, preflight=cors.answers_preflight))


async def route_name(scope: Scope, receive: Receive, send: Send) -> None:
    route = get_exchange(scope).route
    assert route is not None
    await JSONResponse({"route": route.config.external_path, "method": scope["method"]})(scope, receive, send)


def test_route_middleware_matches_a_preflight_by_its_requested_method(asgi_client: AsgiClients) -> None:
    routers = [
        router("/users/me", methods=("GET",)),
        router("/users/{id}", methods=("GET", "PUT")),
        router("/off", methods=("GET",), cors={"enabled": False}),
        router("/own", methods=("GET", "OPTIONS")),
    ]
    cors = CorsMiddleware(route_name, CorsConfig(allowed_origins=(ORIGIN,), allowed_methods=("GET", "PUT")))
    http = asgi_client(routed(cors, routers))
    # PUT /users/me would go to /users/{id}: its preflight is answered with that route's policy.
    response = http.options("/users/me", headers=preflight("PUT"))
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    assert http.options("/users/7", headers=preflight("GET")).status_code == 200
    # A method no route takes stays a 405; so does a preflight where CORS is off for the route.
    assert http.options("/users/7", headers=preflight("DELETE")).status_code == 405
    off = http.options("/off", headers=preflight("GET"))
    assert off.status_code == 405 and off.headers["allow"] == "GET, HEAD"
    # A plain OPTIONS (not a preflight) on a route without OPTIONS is still a 405.
    assert http.options("/users/7", headers={"Origin": ORIGIN}).status_code == 405
    # A route that lists OPTIONS keeps its own OPTIONS handling; CORS (on here) answers it.
    assert http.options("/own", headers=preflight("GET")).text == "OK"
    # Without the predicate (standalone RouteMiddleware) nothing changes: 405.
    plain = ExchangeMiddleware(RouteMiddleware(route_name, table=lambda: build_table(routers)))
    assert asgi_client(plain).options("/users/me", headers=preflight("PUT")).status_code == 405
    # Actual requests are routed as before.
    assert http.put("/users/me").json() == {"route": "/users/{id}", "method": "PUT"}


def test_route_cors_overrides_the_global_one(asgi_client: AsgiClients) -> None:
    routers = [
        router("/global", methods=("GET",)),
        router("/special", methods=("GET",), cors={"allowed_origins": ["https://other.example"]}),
    ]
    cors = CorsMiddleware(route_name, CorsConfig(allowed_origins=(ORIGIN,)))
    http = asgi_client(routed(cors, routers))
    assert http.get("/global", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
    special = http.get("/special", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in special.headers
    other = http.get("/special", headers={"Origin": "https://other.example"})
    assert other.headers["access-control-allow-origin"] == "https://other.example"
    assert (
        http.options("/special", headers=preflight("GET", origin="https://other.example")).status_code == 200
    )


def test_vary_is_merged_with_the_app_vary(asgi_client: AsgiClients) -> None:
    async def varying(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("v", headers={"Vary": "Accept-Encoding"})(scope, receive, send)

    async def already(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("v", headers={"Vary": "origin"})(scope, receive, send)

    config = CorsConfig(allowed_origins=(ORIGIN,))
    merged = asgi_client(CorsMiddleware(varying, config)).get("/", headers={"Origin": ORIGIN})
    assert merged.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    assert asgi_client(CorsMiddleware(already, config)).get("/").headers.get_list("vary") == ["origin"]
