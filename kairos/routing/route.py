"""Compiled, immutable routes and backends: what a request is matched against and sent to.

Built once per config generation from the validated config. Everything a request needs is
precomputed here (method sets, the ``Allow`` header, the upstream base URL, the path builder), so
the hot path only reads attributes. Mutable per-backend state (in-flight counts, health, outlier
ejection and circuit state) lives in ``BackendState``, shared by every route that uses the same
scheme+host+port and carried across reloads by the gateway's registry.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from kairos.config.model import HTTP_METHODS, RouteConfig
from kairos.proxy.redirects import RedirectRewriter
from kairos.proxy.tls import client_context
from kairos.resilience.breaker import CircuitBreaker
from kairos.resilience.outlier import OutlierDetector
from kairos.routing.template import (
    SEGMENT_SAFE,
    CatchAll,
    Literal,
    Param,
    PathTemplate,
    encode_segment_value,
)

if TYPE_CHECKING:
    from kairos.routing.balancer import Balancer

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass(slots=True, eq=False)
class BackendState:
    """Runtime facts about one upstream server, shared across routes and config reloads.

    ``healthy`` is set by active health checks, ``outlier`` by passive outlier ejection and
    ``breaker`` by the circuit breaker, each from the traffic of every route using the backend.
    """

    key: str
    in_flight: int = 0
    healthy: bool = True
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outlier: OutlierDetector = field(default_factory=OutlierDetector)

    def available(self, now: float) -> bool:
        """Healthy, not ejected, and its circuit lets a call through (``now``: time.monotonic())."""
        return self.healthy and not self.outlier.ejected(now) and not self.breaker.blocks(now)


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    index: int
    key: str  # scheme://host:port — the identity that state is shared by
    scheme: str
    host: str
    port: int
    weight: int
    http2: bool
    health_check_path: str | None
    http_base: str  # e.g. http://10.0.0.5:8080 (ws backends mapped to http for plain requests)
    ws_base: str  # e.g. ws://10.0.0.5:8080
    state: BackendState
    ssl: ssl.SSLContext | None = None  # custom upstream TLS (tls_ca_file / tls_verify), else default


def backend_key(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{host}:{port}"


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
    allow_dot_segment_params: bool = False  # the route's opt-out of the matcher's traversal check
    # Maps Location-type headers (and, optionally, cookies) naming a backend back to the gateway;
    # None when the route turned both off.
    redirects: RedirectRewriter | None = None

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


def allowed_methods(config: RouteConfig) -> frozenset[str]:
    methods = set(config.methods)
    if "GET" in methods:
        methods.add("HEAD")  # HEAD is allowed wherever GET is (RFC 9110 §9.3.2)
    return frozenset(methods)


def allow_header(methods: frozenset[str]) -> str:
    return ", ".join(method for method in HTTP_METHODS if method in methods)


def compile_route(index: int, config: RouteConfig, states: dict[str, BackendState]) -> Route:
    """Compile one validated route; backend state is looked up in (or added to) ``states``."""
    from kairos.routing.balancer import make_balancer

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
        upstream_path=UpstreamPath.compile(config.internal_template, catch_all_names),
        timeout=config.timeout_ms / 1000 if config.timeout_ms else None,
        connect_timeout=config.connect_timeout_ms / 1000,
        websocket=config.protocol == "websocket",
        key=f"{config.protocol} {','.join(sorted(config.methods))} {config.external_path}",
        allow_dot_segment_params=config.allow_dot_segment_params,
        redirects=redirects,
    )
