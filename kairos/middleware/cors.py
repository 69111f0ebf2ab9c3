"""CorsMiddleware: CORS preflights answered by the gateway, CORS headers on actual responses.

The policy is ``cors`` (CorsConfig), top level and per route; a route's block replaces the global
one and ``enabled: false`` turns CORS off for that route (requests then pass through untouched, at
the cost of one lookup). Standalone, the constructor's policy (a value or an accessor) applies.

What is reused from Starlette's ``CORSMiddleware`` (pure ASGI, precomputes in ``__init__``): the
whole preflight decision (``preflight_response``: allowed origin/method/headers, ``*`` handling,
``Vary``, ``*`` with credentials echoing the origin) and the config normalisation it precomputes
(``is_allowed_origin``, ``simple_headers``). One Starlette instance per distinct CorsConfig, cached
like IpFilterMiddleware's compiled filters. Kairos adds around it:

- the preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered 200
  with Starlette's headers, plus ``X-Request-ID`` and the ``GENERATED`` mark (so security headers
  apply); a refused one (origin, method or header not allowed) is the gateway's JSON 400
  ``bad_request`` naming what failed, with no ``Access-Control-Allow-Origin`` for a foreign origin,
  as Starlette does;
- ``allowed_headers`` empty means only the CORS-safelisted request headers (Accept,
  Accept-Language, Content-Language, Content-Type) are allowed (Starlette and Envoy agree); ``["*"]``
  reflects whatever the preflight asks for. ``allowed_origins`` empty allows no origin.

Actual responses follow Starlette's rules (``Access-Control-Allow-Origin`` is the echoed origin,
or ``*`` for allow-all without credentials; ``Vary: Origin`` always, since the answer depends on
it) but are rewritten here on the raw ASGI header list instead of through Starlette's ``send``
(which builds ``Headers``/``MutableHeaders`` per response: ~17 µs per request measured, against
~3 µs here). Two deliberate differences: the upstream's own ``Access-Control-*`` headers are
dropped first (where the gateway owns CORS its policy is the only one, so a foreign origin never
sees an upstream ``*``), and a foreign origin gets no CORS header at all (Starlette still sends it
``Access-Control-Allow-Credentials``/``-Expose-Headers``).

Gateway-generated errors inside this middleware (401, 403, 413, 429, 502, 504...) get the CORS
headers too, so a browser can read their bodies. 404/405 come from the RouteMiddleware outside it
and carry none (there is no route, hence no route policy).

In the gateway a preflight must reach this middleware even on a route that does not list
``OPTIONS``: the pipeline gives RouteMiddleware ``answers_preflight(policy)`` as its ``preflight``
predicate, so a preflight that would be a 405 is matched by its requested method instead when CORS
is on for that route. It sits before AuthMiddleware: a preflight carries no credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.compiled import PerConfig
from kairos.config.policies import CorsConfig
from kairos.errors import GENERATED, send_error
from kairos.request import as_accessor, policy_of, request_id_and_ip, route_policy

if TYPE_CHECKING:
    from kairos.routing.route import Route

CorsPolicy = CorsConfig | Callable[[], CorsConfig | None] | None
Header = tuple[bytes, bytes]

_BODY_HEADERS = frozenset({b"content-type", b"content-length"})
_ACAO = b"access-control-allow-origin"


class _Cors(CORSMiddleware):
    """Starlette's CORS for one config, plus its response headers precomputed as raw ASGI pairs."""

    def __init__(self, app: ASGIApp, config: CorsConfig) -> None:
        super().__init__(
            app,
            allow_origins=frozenset(
                origin.rstrip("/") if origin != "*" else origin for origin in config.allowed_origins
            ),
            allow_methods=tuple(dict.fromkeys(method.upper() for method in config.allowed_methods)),
            allow_headers=config.allowed_headers,
            allow_credentials=config.allow_credentials,
            expose_headers=config.exposed_headers,
            max_age=config.max_age,
        )
        # Credentials / expose headers, sent with Access-Control-Allow-Origin (never without it).
        self.extra: tuple[Header, ...] = tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.simple_headers.items()
            if name != "Access-Control-Allow-Origin"
        )
        self.star = self.allow_all_origins and not self.allow_credentials

    def allow_origin(self, origin: bytes) -> bytes | None:
        """The Access-Control-Allow-Origin value for a request from ``origin``, or None."""
        if self.star:
            return b"*"
        if self.allow_all_origins or self.is_allowed_origin(origin.decode("latin-1")):
            return origin
        return None

    def response_headers(self, headers: list[Header], origin: bytes | None) -> list[Header]:
        out: list[Header] = []
        vary: list[bytes] = []
        for header in headers:
            name = header[0]
            if name == b"vary":
                vary.append(header[1])
            elif name[:15] != b"access-control-":
                out.append(header)
        allowed = self.allow_origin(origin) if origin is not None else None
        if allowed is not None:
            out.append((_ACAO, allowed))
            out.extend(self.extra)
        if not vary:
            out.append((b"vary", b"Origin"))
        else:
            if not any(b"origin" in value.lower() for value in vary):
                vary.append(b"Origin")
            out.append((b"vary", b", ".join(vary)))
        return out


def _cors(route: Route) -> CorsConfig | None:
    return route.config.cors


def answers_preflight(global_policy: CorsPolicy) -> Callable[[Route], bool]:
    """Whether CORS is on for a route, with ``global_policy`` for routes without their own block:
    the RouteMiddleware's ``preflight`` predicate (a preflight there is this middleware's to answer)."""
    fallback = as_accessor(global_policy)

    def answers(route: Route) -> bool:
        config = policy_of(route, _cors, fallback)
        return config is not None and config.enabled

    return answers


class CorsMiddleware:
    def __init__(self, app: ASGIApp, global_policy: CorsPolicy = None) -> None:
        self.app = app
        self._global = as_accessor(global_policy)
        self._compiled: PerConfig[CorsConfig, _Cors] = PerConfig(lambda config: _Cors(app, config))
        # Whether CORS is on for a route (so this middleware answers its preflights).
        self.answers_preflight = answers_preflight(self._global)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # browsers apply no CORS to WebSocket upgrades
            await self.app(scope, receive, send)
            return
        config = route_policy(scope, _cors, self._global)
        if config is None or not config.enabled:
            await self.app(scope, receive, send)
            return
        cors = self._compiled.get(config)
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        if origin is not None and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "access-control-request-method" in headers:
                await _preflight(cors, headers, scope, send)
                return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = cors.response_headers(message.get("headers", []), origin)
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _preflight(cors: _Cors, headers: Headers, scope: Scope, send: Send) -> None:
    response = cors.preflight_response(request_headers=headers)
    request_id, _ = request_id_and_ip(scope)
    if response.status_code == 200:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*response.raw_headers, (b"x-request-id", request_id.encode())],
                GENERATED: True,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
        return
    # Starlette's failure text is "Disallowed CORS origin, method"; keep its wording in the JSON.
    message = bytes(response.body).decode()
    cors_headers = [(name, value) for name, value in response.raw_headers if name not in _BODY_HEADERS]
    await send_error(
        send, "bad_request", f"{message} (preflight for {headers['origin']})", request_id, cors_headers
    )
