"""The config.json model: kairos-rs's format, its documented aliases, and Kairos's additions.

One internal shape, whatever the spelling in the file: the legacy route-level ``host``+``port``
becomes a one-element ``backends``; ``retry_config`` becomes ``retry``; top-level ``jwt_secret``
becomes ``jwt.secret``; README-style rate limits become the PascalCase form.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, Field, Strict, field_validator, model_validator

from kairos.config.ai import AiConfig, AiPolicy
from kairos.config.base import Bool, ConfigModel, Int, NonNegativeInt, PositiveInt, Str
from kairos.config.jwt import JwtConfig
from kairos.config.policies import (
    CacheConfig,
    CircuitBreakerConfig,
    CompressionConfig,
    CorsConfig,
    HealthCheckConfig,
    MetricsConfig,
    SecurityHeadersConfig,
    ServerConfig,
)
from kairos.config.ratelimit import RateLimitConfig
from kairos.config.retry import RetryConfig
from kairos.config.transform import RequestTransformation, ResponseTransformation
from kairos.routing.template import PathTemplate, parse_template

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE")
Protocol = Literal["http", "websocket", "ftp", "dns"]
Strategy = Literal["round_robin", "least_connections", "random", "weighted", "ip_hash"]

NO_BACKENDS = "needs `backends` (or the legacy `host` + `port`)"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "ftps": 990, "dns": 53}


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError("must be between 1 and 65535")
    return port


class BackendConfig(ConfigModel):
    host: Str = Field(min_length=1)
    port: Int
    weight: PositiveInt = Field(1, le=2**32 - 1)
    health_check_path: Str | None = None
    http2: Bool = False
    description: Str | None = None
    examples: tuple[Str, ...] = ()
    tls_ca_file: Str | None = None  # PEM bundle to verify an https/wss backend (an internal CA)
    tls_verify: Bool = True  # false: no certificate verification (test setups only)

    @field_validator("tls_ca_file")
    @classmethod
    def _readable_ca(cls, path: str | None) -> str | None:
        if path is not None:
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise ValueError(f"cannot read the CA file: {exc.strerror or exc}") from None
        return path

    @field_validator("port")
    @classmethod
    def _port(cls, port: int) -> int:
        return check_port(port)

    @field_validator("host")
    @classmethod
    def _host_shape(cls, host: str) -> str:
        if "://" in host:
            parts = urlsplit(host)
            if not parts.hostname:
                raise ValueError("missing a host name after the scheme")
            if parts.port is not None:
                raise ValueError("put the port in `port`, not in `host`")
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError("must be scheme://hostname with no path, query or fragment")
        elif "/" in host or (":" in host.strip("[]") and not _is_ip(host)):
            raise ValueError("must be scheme://hostname, e.g. http://10.0.0.5")
        return host.rstrip("/")

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @property
    def scheme(self) -> str:
        return self.host.split("://", 1)[0].lower() if "://" in self.host else ""

    @property
    def hostname(self) -> str:
        return urlsplit(self.host).hostname or "" if "://" in self.host else self.host.strip("[]")


def _cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError("not an IP address or CIDR") from None
    return text


Cidr = Annotated[str, Strict(), AfterValidator(_cidr)]


class IpFilterConfig(ConfigModel):
    """``{"allow": [...], "deny": [...]}``: deny wins; a non-empty allow list admits only its CIDRs."""

    allow: tuple[Cidr, ...] = ()
    deny: tuple[Cidr, ...] = ()


def _method(method: str) -> str:
    upper = method.upper()
    if upper not in HTTP_METHODS:
        raise ValueError("not an HTTP method; use one of " + ", ".join(HTTP_METHODS))
    return upper


Method = Annotated[str, Strict(), AfterValidator(_method)]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class RouteConfig(ConfigModel):
    external_path: Str
    internal_path: Str
    methods: tuple[Method, ...]
    auth_required: Bool = False
    protocol: Protocol = "http"
    backends: tuple[BackendConfig, ...] | None = None
    host: Str | None = None
    port: Int | None = None
    load_balancing_strategy: Strategy = "round_robin"
    retry: RetryConfig | None = Field(None, validation_alias=AliasChoices("retry", "retry_config"))
    request_transformation: RequestTransformation | None = None
    response_transformation: ResponseTransformation | None = None
    ai_policy: AiPolicy | None = None
    rate_limit: RateLimitConfig | None = None
    cache: CacheConfig | None = None
    cors: CorsConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    health_check: HealthCheckConfig | None = None
    ip_filter: IpFilterConfig | None = None
    max_body_size: NonNegativeInt | None = None
    security_headers: SecurityHeadersConfig | None = None
    required_roles: tuple[Str, ...] = ()
    auth: Literal["any", "jwt", "api_key"] = "any"
    timeout_ms: NonNegativeInt = 30000
    connect_timeout_ms: PositiveInt = 5000
    rewrite_location: Bool = Field(
        True,
        description="Map Location, Content-Location and Refresh headers that name a backend (its "
        "origin, or a path under internal_path) back to the gateway and external_path, as nginx's "
        "proxy_redirect default does; the result is a relative reference.",
    )
    rewrite_cookies: Bool = Field(
        False,
        description="Map Set-Cookie Path attributes from internal_path to external_path and drop a "
        "Domain attribute naming a backend host (nginx's proxy_cookie_path / proxy_cookie_domain).",
    )
    allow_dot_segment_params: Bool = Field(
        False,
        description="Let a path parameter whose decoded value holds a '.' or '..' segment (split on '/' "
        "or '\\', e.g. '..%2F..%2Fadmin') through; by default such a request is refused with 400, so a "
        "backend that decodes '%2F' cannot be walked out of its path.",
    )

    @field_validator("external_path", "internal_path")
    @classmethod
    def _template(cls, path: str) -> str:
        parse_template(path)
        return path

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        # Checked after the items (a Field min_length would also call ["FOO"] "empty").
        if not methods:
            raise ValueError("at least one HTTP method must be specified")
        return tuple(dict.fromkeys(methods))  # upper-cased per item; duplicates dropped, order kept

    @field_validator("backends")
    @classmethod
    def _some_backends(cls, backends: tuple[BackendConfig, ...] | None) -> tuple[BackendConfig, ...] | None:
        if backends is not None and not backends:
            raise ValueError("at least one backend must be specified")
        return backends

    @field_validator("port")
    @classmethod
    def _legacy_port(cls, port: int | None) -> int | None:
        return None if port is None else check_port(port)

    @field_validator("load_balancing_strategy", "protocol", mode="before")
    @classmethod
    def _lower_enum(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_backends(self) -> RouteConfig:
        if self.backends is None:
            if self.host is None:
                raise ValueError(NO_BACKENDS)
            scheme = self.host.split("://", 1)[0].lower() if "://" in self.host else ""
            port = self.port if self.port is not None else DEFAULT_PORTS.get(scheme, 80)
            legacy = BackendConfig.model_validate({"host": self.host, "port": port})
            object.__setattr__(self, "backends", (legacy,))
        return self

    @property
    def upstreams(self) -> tuple[BackendConfig, ...]:
        assert self.backends is not None  # resolved by the validator
        return self.backends

    @property
    def external_template(self) -> PathTemplate:
        return parse_template(self.external_path)

    @property
    def internal_template(self) -> PathTemplate:
        return parse_template(self.internal_path)


class ApiKeyConsumer(ConfigModel):
    name: Str = Field(min_length=1)
    keys: tuple[Str, ...] = Field(min_length=1)


class GatewayConfig(ConfigModel):
    """The whole file. ``routers`` is validated route by route by the loader so that one bad route
    does not hide the errors of the next."""

    version: int = Field(1, ge=0, le=255, strict=True)
    jwt: JwtConfig | None = None
    rate_limit: RateLimitConfig | None = None
    ai: AiConfig | None = None
    routers: tuple[RouteConfig, ...] = ()
    trusted_proxies: tuple[Annotated[str, Strict(), AfterValidator(_cidr)], ...] = Field(
        (),
        description="CIDRs of the proxies in front of the gateway: their X-Forwarded-For, Forwarded, "
        "X-Real-IP and similar headers are believed and passed on; from any other peer those headers "
        "are replaced or dropped.",
    )
    forwarded_header: Bool = Field(
        False,
        description="Add this hop to an RFC 7239 Forwarded header on requests sent upstream "
        "(for=the peer;host=the requested host;proto=http|https), extending a trusted proxy's.",
    )
    api_keys: tuple[ApiKeyConsumer, ...] = ()
    api_key_header: Str = "X-API-Key"
    server: ServerConfig | None = None
    metrics: MetricsConfig | None = None
    cors: CorsConfig | None = None
    compression: CompressionConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    health_check: HealthCheckConfig | None = None
    ip_filter: IpFilterConfig | None = None
    max_body_size: NonNegativeInt | None = None
    security_headers: SecurityHeadersConfig = Field(default_factory=SecurityHeadersConfig)

    @model_validator(mode="before")
    @classmethod
    def _jwt_secret_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "jwt_secret" in data:
            data = dict(data)
            secret = data.pop("jwt_secret")
            if data.get("jwt") is None:
                data["jwt"] = {"secret": secret}
        return data
