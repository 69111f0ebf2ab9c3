"""The config.json model: kairos-rs's format, its documented aliases, and Kairos's additions.

One internal shape, whatever the spelling in the file: the legacy route-level ``host``+``port``
becomes a one-element ``backends``; ``retry_config`` becomes ``retry``; top-level ``jwt_secret``
becomes ``jwt.secret``; README-style rate limits become the PascalCase form.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, Field, SecretStr, Strict, field_validator, model_validator

from kairos.config.ai import AiConfig, AiPolicy
from kairos.config.base import Bool, ConfigModel, Int, NonNegativeInt, PositiveInt, Str
from kairos.config.breaker import BackendCircuitBreakerConfig
from kairos.config.dns import DEFAULT_DNS_TIMEOUT_MS, FLAT_KEYS, DnsConfig
from kairos.config.jwt import JwtConfig
from kairos.config.llm import LlmConfig, reuse_ai_providers
from kairos.config.path_template import PathTemplate, parse_template
from kairos.config.policies import (
    CacheConfig,
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

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE")
Protocol = Literal["http", "websocket", "ftp", "dns", "llm"]
Strategy = Literal["round_robin", "least_connections", "random", "weighted", "ip_hash"]

NO_BACKENDS = "needs `backends` (or the legacy `host` + `port`)"
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
    "ftp": 21,
    "ftps": 990,
    "dns": 53,
    "udp": 53,
    "tcp": 53,
    "tls": 853,
}
# The backend URL schemes each protocol can use ("": a bare IP or host name).
PROTOCOL_SCHEMES = {
    "http": ("http", "https"),
    "websocket": ("ws", "wss", "http", "https"),
    "ftp": ("ftp", "ftps", "http", "https"),
    # dns:// and a bare address: UDP, then TCP for a truncated answer; tls:// DNS-over-TLS; https://
    # DNS-over-HTTPS (the route's internal_path is the upstream's path, `/` meaning /dns-query).
    "dns": ("", "udp", "tcp", "dns", "tls", "https"),
    # llm routes name their providers in their `llm` section; `backends` are not used.
    "llm": ("http", "https"),
}


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError("must be between 1 and 65535")
    return port


class BackendConfig(ConfigModel):
    """One upstream server of a route. Requests are spread over a route's backends by its
    `load_balancing_strategy`; health checks, circuit breakers and outlier ejection act per backend
    (its scheme, host and port), shared by every route that lists it."""

    host: Str = Field(
        min_length=1,
        description="`scheme://hostname` without port or path, e.g. `http://10.0.0.5`; IPv6 addresses in "
        "brackets. The schemes the route's protocol can use: "
        + "; ".join(
            f"`{protocol}`: "
            + ", ".join(f"`{scheme}://`" if scheme else "a bare IP or host name" for scheme in schemes)
            for protocol, schemes in PROTOCOL_SCHEMES.items()
        )
        + ".",
        examples=["http://10.0.0.5"],
    )
    port: Int = Field(
        description="TCP port of the backend, 1-65535.",
        json_schema_extra={"minimum": 1, "maximum": 65535},
    )
    weight: PositiveInt = Field(
        1,
        le=2**32 - 1,
        description="Relative share of the traffic under the `weighted`, `random` and `ip_hash` strategies "
        "(a backend of weight 2 gets twice the requests of one of weight 1); ignored by the others.",
    )
    health_check_path: Str | None = Field(
        None,
        description="Path (starting with `/`) that active health checks probe with `GET` when a "
        "`health_check` block applies to the route. Unset: the backend is never probed.",
    )
    http2: Bool = Field(
        False,
        description="Speak HTTP/2 to this backend (ALPN over TLS, prior knowledge over plain `http`) with "
        "the HTTP/2 engine; `false`: HTTP/1.1.",
    )
    description: Str | None = Field(
        None,
        description="What this backend serves, in words: what AI routing tells the model "
        "(`content_analysis`) or embeds (`semantic`) to choose a backend.",
    )
    examples: tuple[Str, ...] = Field(
        (),
        description="Example requests this backend serves, embedded by the `semantic` AI strategy besides "
        "`description`.",
    )
    tls_ca_file: Str | None = Field(
        None,
        description="PEM bundle of CA certificates to verify an `https`/`wss` backend with (e.g. an "
        "internal CA); the file must be readable at load. Unset: the system's trusted CAs.",
    )
    tls_verify: Bool = Field(
        True,
        description="Verify the backend's TLS certificate and host name; `false` turns verification off "
        "(test setups only).",
    )
    username: Str | None = Field(
        None,
        description="`ftp` routes: the user the gateway logs in as (use `${NAME}`). Unset: `anonymous`. "
        "With the route's `ftp_auth: passthrough` the client's HTTP Basic credentials are used instead.",
    )
    password: SecretStr | None = Field(
        None,
        description="`ftp` routes: the password of `username` (use `${NAME}`). Never shown in logs, "
        "metrics, errors or `/api/config`.",
    )

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
    """Client IP allow and deny lists, top level and per route (a route's block replaces the top-level
    one; `{}` on a route turns filtering off there). `deny` wins; a non-empty `allow` admits only its
    CIDRs. The address checked is the client IP after `trusted_proxies` resolution. Refused requests
    get 403 `forbidden`; `/health`, `/ready` and `/live` are never filtered."""

    allow: tuple[Cidr, ...] = Field(
        (),
        description="IP addresses or CIDRs (IPv4 or IPv6) admitted; when non-empty, every other client is "
        "refused. Empty: every client not denied is admitted.",
    )
    deny: tuple[Cidr, ...] = Field((), description="IP addresses or CIDRs refused, whatever `allow` says.")


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
    """One entry of `routers`: which requests it takes (`external_path`, `methods`, `protocol`), where
    they go (`backends` and `internal_path`) and the policies that apply on the way. Precedence
    between routes does not depend on their order in the file: the most specific path wins, and a
    route whose methods do not include the request's is skipped. Policy blocks (`cors`, `rate_limit`,
    `ip_filter`, ...) that also exist at the top level replace the top-level block on this route."""

    # writeOnly: accepted, never shown back (the running config has them in `dns`); forms skip them.
    input_keys = {
        key: {
            "description": f"`dns` routes: the same as `dns.{key}` (moved there when the config loads).",
            "writeOnly": True,
        }
        for key in FLAT_KEYS
        if key != "cache"  # a field of every route; on a DNS route it is the DNS answer cache
    }

    external_path: Str = Field(
        description="Path template the client requests, starting with `/`: literal segments, `{param}` "
        "segments (one non-empty segment each), mixed segments such as `{name}.json`, and a trailing "
        "catch-all `{*rest}` that takes the rest of the path (prefix routing).",
        examples=["/cats/{id}"],
        json_schema_extra={"pattern": "^/"},
    )
    internal_path: Str = Field(
        description="Path template sent upstream: the parameters of `external_path` are substituted, each "
        "re-encoded as exactly one segment (a catch-all keeps its segments). It may only use parameters "
        "`external_path` defines. The client's query string is forwarded unchanged.",
        examples=["/cats/{id}"],
        json_schema_extra={"pattern": "^/"},
    )
    methods: tuple[Method, ...] = Field(
        description="HTTP methods the route takes, any case, at least one; `HEAD` is allowed wherever `GET` "
        "is. When no route takes a request's method the answer is 405 with `Allow`.",
        json_schema_extra={"items": {"type": "string", "enum": list(HTTP_METHODS)}, "minItems": 1},
    )
    auth_required: Bool = Field(
        False,
        description="Every listed method (and `HEAD` with `GET`) needs valid credentials (see `auth`): 401 "
        "without them, 403 when `required_roles` are missing. Needs a `jwt` section or `api_keys`.",
    )
    protocol: Protocol = Field(
        "http",
        description="`http` proxies requests (an upgrade request is relayed as a WebSocket too); "
        "`websocket` proxies WebSocket upgrades (an HTTP route may share its path); `ftp` serves an HTTP "
        "file API over FTP servers; `dns` forwards DNS queries (the DNS listener, DNS-over-HTTPS on "
        "`external_path`); `llm` serves the OpenAI API over the providers of its `llm` section. Any case.",
    )
    backends: tuple[BackendConfig, ...] | None = Field(
        None,
        description="The upstream servers, at least one. Required unless the legacy `host` (+ `port`) is "
        "given.",
        json_schema_extra={"minItems": 1},
    )
    host: Str | None = Field(
        None,
        description="Legacy kairos-rs single backend: `scheme://hostname`, used when `backends` is absent.",
    )
    port: Int | None = Field(
        None,
        description="Port of the legacy `host`. Unset: the scheme's default ("
        + ", ".join(f"`{scheme}` {port}" for scheme, port in DEFAULT_PORTS.items())
        + "; 80 otherwise).",
        json_schema_extra={"minimum": 1, "maximum": 65535},
    )
    load_balancing_strategy: Strategy = Field(
        "round_robin",
        description="How requests are spread over the backends: `round_robin` in turn; `weighted` smooth "
        "weighted round robin by `weight`; `least_connections` the backend with the fewest requests in "
        "flight; `random` weighted random; `ip_hash` consistent (rendezvous) hashing of the client IP, so a "
        "client keeps its backend. Any case, `-` for `_`.",
    )
    retry: RetryConfig | None = Field(
        None,
        validation_alias=AliasChoices("retry", "retry_config"),
        description="Retries of failed attempts. Unset: no retries, but a route with several backends still "
        "fails over (up to 2 more backends) when a connection cannot be made.",
    )
    request_transformation: RequestTransformation | None = Field(
        None, description="Rules that rewrite the request before it goes upstream. Unset: none."
    )
    response_transformation: ResponseTransformation | None = Field(
        None, description="Rules that rewrite the upstream's response. Unset: none."
    )
    ai_policy: AiPolicy | None = Field(
        None,
        description="Let a model (or measured latency) choose the backend of each request. Unset: normal "
        "balancing.",
    )
    rate_limit: RateLimitConfig | None = Field(
        None,
        description='This route\'s rate limit, replacing the top-level one; `{"enabled": false}` exempts the '
        "route. Unset: the top-level `rate_limit` applies.",
    )
    cache: CacheConfig | None = Field(
        None,
        description="Response cache for this route. Unset: no caching. On a `dns` route: the DNS answer "
        "cache (`dns.cache`).",
    )
    cors: CorsConfig | None = Field(
        None,
        description="CORS policy of this route, replacing the top-level one. Unset: the top-level `cors`.",
    )
    circuit_breaker: BackendCircuitBreakerConfig | None = Field(
        None,
        description="Circuit breaking of this route's backends, replacing the top-level block. Unset: the "
        "top-level `circuit_breaker`; with neither, circuit state is ignored.",
    )
    health_check: HealthCheckConfig | None = Field(
        None,
        description="Active and passive health checks for this route's backends, replacing the top-level "
        "block. Unset: the top-level `health_check`; with neither, health is ignored.",
    )
    ip_filter: IpFilterConfig | None = Field(
        None,
        description="Client IP allow/deny lists, replacing the top-level ones; `{}` turns filtering off. "
        "Unset: the top-level `ip_filter`.",
    )
    max_body_size: NonNegativeInt | None = Field(
        None,
        description="Largest request body in bytes, replacing the top-level limit (413 `payload_too_large` "
        "above it). Unset: the top-level `max_body_size`.",
    )
    security_headers: SecurityHeadersConfig | None = Field(
        None,
        description="Security headers of this route, replacing the top-level setting. Unset: the top-level "
        "`security_headers`.",
    )
    required_roles: tuple[Str, ...] = Field(
        (),
        description="Roles the verified token's `roles` claim (a list or a space-separated string) must all "
        "hold; otherwise 403 `authorization_error`. Applies with `auth_required`.",
    )
    auth: Literal["any", "jwt", "api_key"] = Field(
        "any",
        description="Credentials accepted when `auth_required`: `any` (a valid JWT or API key), `jwt`, or "
        "`api_key`.",
    )
    timeout_ms: NonNegativeInt = Field(
        30000,
        description="One deadline in milliseconds for the whole exchange with the upstream, retries "
        "included: 504 `timeout` before the response starts, an aborted connection after. `0` disables it "
        "(long streams).",
    )
    connect_timeout_ms: PositiveInt = Field(
        5000,
        description="Milliseconds allowed to open a connection to a backend (a WebSocket backend: to answer "
        "the upgrade); past it the attempt fails with 504 `timeout`.",
    )
    rewrite_location: Bool = Field(
        True,
        description="Map `Location`, `Content-Location` and `Refresh` headers that name a backend (its "
        "origin, or a path under `internal_path`) back to the gateway and `external_path`, as nginx's "
        "`proxy_redirect default` does; the result is a relative reference. Redirects to other origins are "
        "left alone.",
    )
    rewrite_cookies: Bool = Field(
        False,
        description="Also map `Set-Cookie` `Path` attributes from `internal_path` to `external_path` and "
        "drop a `Domain` attribute naming a backend host (nginx's `proxy_cookie_path` / "
        "`proxy_cookie_domain`).",
    )
    ftp_auth: Literal["backend", "passthrough"] = Field(
        "backend",
        description="`ftp` routes: whose credentials log in to the FTP server: `backend` (the backend's "
        "`username`/`password`) or `passthrough` (the client's HTTP Basic `Authorization`; without it "
        "the answer is 401 with `WWW-Authenticate: Basic`). Never from a query string.",
    )
    llm: LlmConfig | None = Field(
        None,
        description="`llm` routes (required there): the public models of the OpenAI-compatible API on "
        "`external_path`, their provider targets and fallbacks, and the consumers' limits.",
    )
    dns: DnsConfig | None = Field(
        None,
        description="`dns` routes: zones, answer cache, upstream policy, failover and per-client limits. "
        "The keys may also be written flat on the route (`zones`, `cache`, `policy`, `failover_rcodes`, "
        "`client_rate_limit`). Unset on a DNS route: every zone, the default cache. `timeout_ms` is the "
        f"deadline of one query across its upstreams "
        f"({DEFAULT_DNS_TIMEOUT_MS} ms when unset on a DNS route).",
    )
    allow_dot_segment_params: Bool = Field(
        False,
        description="Let a path parameter whose decoded value holds a `.` or `..` segment (split on `/` or "
        "`\\`, e.g. `..%2F..%2Fadmin`) through. `false`: such a request is refused with 400, so a backend "
        "that decodes `%2F` cannot be walked out of its path.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_dns_keys(cls, data: Any) -> Any:
        """A DNS route's flat `zones`, `cache`, ... go into its `dns` section (one shape to run)."""
        if not isinstance(data, dict):
            return data
        protocol = data.get("protocol")
        if not (isinstance(protocol, str) and protocol.strip().lower() == "dns"):
            return data
        flat = {key: data[key] for key in FLAT_KEYS if key in data}
        if not flat:
            return data
        section = data.get("dns")
        if section is not None and not isinstance(section, dict):
            return data  # the section's own validation names the problem
        data = {key: value for key, value in data.items() if key not in flat}
        data["dns"] = {**flat, **(section or {})}
        return data

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
            if self.protocol == "llm" and self.host is None:
                object.__setattr__(self, "backends", ())  # its providers are in `llm`
                return self
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
    """A named consumer of the API and its keys. A request presents a key in the `api_key_header`
    header; the consumer's name becomes the request's identity (rate limits `PerUser`, cache keys,
    logs). Keys are kept as SHA-256 digests in memory; use `${NAME}` to keep them out of the file."""

    name: Str = Field(min_length=1, description="The consumer's name, the identity of its requests.")
    keys: tuple[Str, ...] = Field(
        min_length=1, description="The consumer's API keys, at least one (several allow rotation)."
    )


class GatewayConfig(ConfigModel):
    """The whole config.json file. Every string value may use `${NAME}` (upper-case) to read the
    environment at load time (`${NAME:-default}` gives a default, `$${NAME}` a literal); keys starting
    with `_` are comments; unknown keys are reported as warnings and ignored."""

    # ``routers`` is validated route by route by the loader so that one bad route does not hide the
    # errors of the next.

    input_required = ("routers",)
    input_keys = {
        "jwt_secret": {
            "type": "string",
            "description": 'kairos-rs\'s shorthand for `{"jwt": {"secret": ...}}`; ignored (with a warning) '
            "when a `jwt` section is present.",
        }
    }

    version: int = Field(
        1,
        ge=0,
        le=255,
        strict=True,
        description="Format version, kept for kairos-rs (which requires it); a missing `version` is a "
        "warning and means 1.",
    )
    jwt: JwtConfig | None = Field(
        None,
        description="How JSON Web Tokens are verified, for routes with `auth_required`. Unset: JWTs are not "
        "accepted.",
    )
    rate_limit: RateLimitConfig | None = Field(
        None,
        description="Rate limit applied to every route (a route's own `rate_limit` replaces it there). "
        "Unset: no global limit.",
    )
    ai: AiConfig | None = Field(
        None,
        description="The AI provider that routes with an `ai_policy` ask. Unset: routes whose strategy "
        "needs a provider are balanced normally (with a warning).",
    )
    routers: tuple[RouteConfig, ...] = Field(
        (),
        description="The routes. Required; may be empty (every request then gets 404 `route_not_found`).",
    )
    trusted_proxies: tuple[Annotated[str, Strict(), AfterValidator(_cidr)], ...] = Field(
        (),
        description="CIDRs of the proxies in front of the gateway: their `X-Forwarded-For` is believed when "
        "finding the client IP, and their `Forwarded`, `X-Real-IP` and similar headers are passed upstream; "
        "from any other peer those headers are replaced or dropped.",
    )
    forwarded_header: Bool = Field(
        False,
        description="Add this hop to an RFC 7239 `Forwarded` header on requests sent upstream "
        "(`for=<peer>;host=<requested host>;proto=http`), extending a trusted proxy's.",
    )
    api_keys: tuple[ApiKeyConsumer, ...] = Field(
        (),
        description="API-key consumers, for routes with `auth_required`. Empty: API keys are not accepted.",
    )
    api_key_header: Str = Field("X-API-Key", description="Request header that carries an API key (any case).")
    server: ServerConfig | None = Field(
        None, description="kairos-rs's server block: accepted and validated, not read by Kairos."
    )
    metrics: MetricsConfig | None = Field(
        None, description="kairos-rs's metrics block: accepted and validated, not read by Kairos."
    )
    cors: CorsConfig | None = Field(
        None, description="CORS policy of every route (a route's `cors` replaces it). Unset: no CORS headers."
    )
    compression: CompressionConfig | None = Field(
        None, description="Response compression. Unset: nothing is compressed."
    )
    circuit_breaker: BackendCircuitBreakerConfig | None = Field(
        None,
        description="Circuit breaking of every route's backends (a route's block replaces it). Unset: off "
        "unless a route has its own.",
    )
    health_check: HealthCheckConfig | None = Field(
        None,
        description="Active health checks, outlier ejection and panic mode for every route (a route's block "
        "replaces it). Unset: off unless a route has its own.",
    )
    ip_filter: IpFilterConfig | None = Field(
        None, description="Client IP allow/deny lists of every route (a route's block replaces them)."
    )
    max_body_size: NonNegativeInt | None = Field(
        None,
        description="Largest request body in bytes (413 `payload_too_large` above it, before the upstream "
        "is contacted; chunked bodies are counted as they stream). Unset: unlimited.",
    )
    security_headers: SecurityHeadersConfig = Field(
        default_factory=SecurityHeadersConfig,
        description="Security headers added to responses (a route's setting replaces it); `true`/`false` is "
        "shorthand for `enabled`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _llm_targets_from_ai(cls, data: Any) -> Any:
        """A whole document validated at once (the loader resolves them itself, route by route)."""
        if not isinstance(data, dict):
            return data
        problems: list[tuple[str, str]] = []
        data = reuse_ai_providers(data, problems)
        if problems:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
        return data

    @model_validator(mode="before")
    @classmethod
    def _jwt_secret_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "jwt_secret" in data:
            data = dict(data)
            secret = data.pop("jwt_secret")
            if data.get("jwt") is None:
                data["jwt"] = {"secret": secret}
        return data
