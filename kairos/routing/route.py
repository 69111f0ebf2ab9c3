"""Compiled, immutable routes and their backends: what a request is matched against and sent to.

Built once per config generation from the validated config. Everything a request needs is
precomputed here (method sets, the ``Allow`` header, the auth rule, the upstream base URL, the path
builder), so the hot path only reads attributes. Mutable per-backend state (in-flight counts,
health, outlier ejection and circuit state) lives in ``BackendState`` (kairos/routing/backend.py),
shared by every route that uses the same scheme+host+port and carried across reloads by the
gateway's registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from kairos.config.model import HTTP_METHODS, RouteConfig
from kairos.config.path_template import (
    SEGMENT_SAFE,
    CatchAll,
    Literal,
    Param,
    PathTemplate,
    encode_segment_value,
    parse_template,
)
from kairos.proxy.redirects import RedirectRewriter
from kairos.proxy.tls import client_context
from kairos.routing.backend import Backend as Backend  # re-exported: kairos/proxy/http.py imports it here
from kairos.routing.backend import BackendState, backend_key
from kairos.routing.balancer import Balancer, make_balancer

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass(frozen=True, slots=True)
class AuthRule:
    """Who may call a route: credentials ``required`` (for every listed method), every one of
    ``roles``, and which credentials count (``accept``: any / jwt / api_key)."""

    required: bool = False
    roles: frozenset[str] = frozenset()
    accept: str = "any"


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    index: int  # position in config.json: the last tie-breaker of precedence
    config: RouteConfig
    template: PathTemplate
    methods: frozenset[str]
    allow: str  # the Allow header for 405 answers
    backends: tuple[Backend, ...]
    balancer: Balancer
    upstream_path: UpstreamPath
    timeout: float | None  # seconds; None = no total deadline
    connect_timeout: float
    websocket: bool  # protocol "websocket": preferred for upgrades, skipped for plain requests
    key: str  # stable identity across reloads (protocol, methods, template): scopes per-route state
    auth: AuthRule  # auth_required, required_roles, auth: what AuthMiddleware enforces
    allow_dot_segment_params: bool = False  # the route's opt-out of the matcher's traversal check
    # Maps Location-type headers (and, optionally, cookies) naming a backend back to the gateway;
    # None when the route turned both off.
    redirects: RedirectRewriter | None = None
    # An ftp or dns route without parameters (kairos-rs's ``"external_path": "/ftp"``) also takes
    # the paths below it (the FTP tree below ``internal_path``; a DNS route's ``/query`` and
    # ``/cache/...``): ``template`` gained a trailing ``{*path}`` and the matcher also gives it the
    # bare prefix (``/ftp``), which a catch-all alone never matches.
    subtree: bool = False

    @property
    def name(self) -> str:
        return self.config.external_path

    @property
    def protocol(self) -> str:
        return self.config.protocol


@dataclass(frozen=True, slots=True)
class UpstreamPath:
    """Builds the upstream path from ``internal_path`` and the matched parameters.

    Parameter values arrive percent-decoded and are re-encoded for exactly one segment, so
    ``..%2F..%2Fadmin`` stays a single segment (``..%2F..%2Fadmin``) and ``%3F``/``%23`` can never
    start a query or fragment upstream.
    """

    parts: tuple[str, ...]  # literal text and parameter names, alternating (literal first)
    constant: str | None = field(default=None)

    raw_names: frozenset[str] = frozenset()  # catch-all values: already encoded, inserted as they are

    @classmethod
    def compile(cls, template: PathTemplate, raw_names: frozenset[str] = frozenset()) -> UpstreamPath:
        parts: list[str] = []
        literal = ""
        for segment in template.segments:
            literal += "/"
            if isinstance(segment, Literal):
                literal += encode_segment_value(segment.text) if segment.text else ""
            elif isinstance(segment, Param | CatchAll):
                parts += [literal, segment.name]
                literal = ""
            else:
                for index, piece in enumerate(segment.literals):
                    if index:
                        parts += [literal, segment.names[index - 1]]
                        literal = ""
                    literal += quote(piece, safe=SEGMENT_SAFE)
        parts.append(literal)
        return cls(tuple(parts), literal if len(parts) == 1 else None, raw_names)

    def build(self, params: Mapping[str, str]) -> str:
        if self.constant is not None:
            return self.constant
        parts = self.parts
        out = [parts[0]]
        raw_names = self.raw_names
        for index in range(1, len(parts), 2):
            name = parts[index]
            out.append(params[name] if name in raw_names else encode_segment_value(params[name]))
            out.append(parts[index + 1])
        return "".join(out)


def safe_upstream_path(path: str) -> bool:
    """Whether a rewritten path can only name a resource on the chosen backend: one leading ``/``
    (``//host`` would be another authority), no ``\\``/``?``/``#``/whitespace/control characters,
    no ``.``/``..`` segments, also once percent-decoded."""
    if _UNSAFE_PATH.search(path) is not None:
        return False
    return "%" not in path or _UNSAFE_PATH.search(unquote(path)) is None


# Not starting with exactly one "/", a forbidden character, or a dot segment.
_UNSAFE_PATH = re.compile(r"\A(?!/(?!/))|[\\?#\x00-\x20\x7f]|(?:\A|/)\.\.?(?:/|\Z)")


def allowed_methods(config: RouteConfig) -> frozenset[str]:
    methods = set(config.methods)
    if "GET" in methods:
        methods.add("HEAD")  # HEAD is allowed wherever GET is (RFC 9110 §9.3.2)
    return frozenset(methods)


def allow_header(methods: frozenset[str]) -> str:
    return ", ".join(method for method in HTTP_METHODS if method in methods)


SUBTREE_PARAM = "path"  # the parameter a parameterless ftp route's subtree is matched into


def compile_route(index: int, config: RouteConfig, states: dict[str, BackendState]) -> Route:
    """Compile one validated route; backend state is looked up in (or added to) ``states``."""
    backends: list[Backend] = []
    for position, backend in enumerate(config.upstreams):
        scheme = backend.scheme or "dns"
        host = backend.hostname
        host_in_url = f"[{host}]" if ":" in host else host
        key = backend_key(scheme, host, backend.port)
        state = states.get(key)
        if state is None:
            state = states[key] = BackendState(key)
        backends.append(
            Backend(
                index=position,
                key=key,
                scheme=scheme,
                host=host,
                port=backend.port,
                weight=backend.weight,
                http2=backend.http2,
                health_check_path=backend.health_check_path,
                http_base=f"{_HTTP_SCHEMES.get(scheme, scheme)}://{host_in_url}:{backend.port}",
                ws_base=f"{_WS_SCHEMES.get(scheme, scheme)}://{host_in_url}:{backend.port}",
                state=state,
                ssl=client_context(backend.tls_ca_file, backend.tls_verify, backend.http2)
                if scheme in ("https", "wss")
                else None,
            )
        )
    methods = allowed_methods(config)
    template = config.external_template
    internal = config.internal_template
    subtree = config.protocol in ("ftp", "dns", "llm") and not template.param_names
    if subtree:
        template = parse_template(config.external_path.rstrip("/") + "/{*" + SUBTREE_PARAM + "}")
        internal = parse_template(config.internal_path.rstrip("/") + "/{*" + SUBTREE_PARAM + "}")
    tail = template.catch_all
    catch_all_names = frozenset({tail}) if tail is not None else frozenset[str]()
    redirects = None
    if config.rewrite_location or config.rewrite_cookies:
        redirects = RedirectRewriter.build(
            config.internal_template,
            template,
            UpstreamPath.compile(template, catch_all_names).build,
            [(backend.scheme, backend.host, backend.port) for backend in backends],
            locations=config.rewrite_location,
            cookies=config.rewrite_cookies,
        )
    return Route(
        index=index,
        config=config,
        template=template,
        methods=methods,
        allow=allow_header(methods),
        backends=tuple(backends),
        balancer=make_balancer(config.load_balancing_strategy),
        upstream_path=UpstreamPath.compile(internal, catch_all_names),
        timeout=config.timeout_ms / 1000 if config.timeout_ms else None,
        connect_timeout=config.connect_timeout_ms / 1000,
        websocket=config.protocol == "websocket",
        key=f"{config.protocol} {','.join(sorted(config.methods))} {config.external_path}",
        auth=AuthRule(config.auth_required, frozenset(config.required_roles), config.auth),
        allow_dot_segment_params=config.allow_dot_segment_params,
        redirects=redirects,
        subtree=subtree,
    )
