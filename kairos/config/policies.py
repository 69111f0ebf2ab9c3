"""Sections that later concerns act on but that must already parse (kairos-rs §11-12 shapes).

Each model is the typed contract for its middleware; keeping them here lets `kairos validate`
check a full config today and warn about misspelt keys.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from kairos.config.base import (
    HEADER_NAME,
    Bool,
    ConfigModel,
    Float,
    NonNegativeInt,
    PositiveInt,
    StatusCode,
    Str,
)
from kairos.config.storage_uri import check_storage_uri


class CacheConfig(ConfigModel):
    """A shared HTTP cache for one route (RFC 9111 rules: `GET` responses with cacheable statuses,
    never `Set-Cookie`, `no-store`, `private` or `no-cache` ones). Answers carry `X-Cache: HIT`,
    `MISS` or `BYPASS`; stored responses get an `ETag` and `If-None-Match` is answered with 304."""

    enabled: Bool = Field(True, description="`false` turns the cache off for the route.")
    ttl_secs: NonNegativeInt = Field(
        60,
        description="Seconds a response stays fresh when the upstream sends no `s-maxage`, `max-age` or "
        "`Expires`; `0`: cache only what the upstream marks fresh.",
    )
    max_size: PositiveInt = Field(
        1000, description="Entries the route's in-memory store keeps (least recently used go first)."
    )
    max_bytes: PositiveInt = Field(
        1024 * 1024,
        description="Largest response, in bytes, that is stored; a bigger one streams through uncached (at "
        "most this much is held while deciding).",
    )
    memory_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="Bytes (bodies, headers, keys) the route's in-memory store keeps.",
    )
    coalesce: Bool = Field(
        False,
        description="Concurrent misses for one key make one upstream request; the others wait and answer "
        "from it (per gateway process).",
    )
    vary_headers: tuple[Str, ...] = Field(
        (),
        description="Request headers that are part of the cache key, besides those the upstream's `Vary` "
        "names.",
    )
    cache_authenticated: Bool = Field(
        False,
        description="Cache a route with `auth_required`, keyed by the verified identity (two users never "
        "share an entry). `false`: such requests bypass the cache.",
    )
    storage_uri: Str | None = Field(
        None,
        description="`memory://`, or Redis (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`, "
        "`redis+cluster://`) to share one cache between replicas. Unset: `KAIROS_REDIS_URL` when set, "
        "else memory.",
    )

    @field_validator("vary_headers")
    @classmethod
    def _vary_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not HEADER_NAME.match(name):
                raise ValueError(f"not a valid header name: {name!r}")
        return tuple(dict.fromkeys(name.lower() for name in names))

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, uri: str | None) -> str | None:
        return None if uri is None else check_storage_uri(uri, with_limits=False)


# Algorithms that need a package beyond the standard library, and the modules that provide them.
COMPRESSION_MODULES: dict[str, tuple[str, ...]] = {"brotli": ("brotli", "brotlicffi"), "zstd": ("zstandard",)}


class CompressionConfig(ConfigModel):
    """Compression of responses on their way out, negotiated with `Accept-Encoding` (highest q-value
    wins, the order of `algorithms` breaks ties). Left as they are: HEAD responses, 1xx/204/206/304,
    bodies already encoded or ranged, `Cache-Control: no-transform`, `text/event-stream`, other
    media types, and bodies smaller than `min_size`."""

    enabled: Bool = Field(True, description="`false` turns compression off (as does leaving the block out).")
    level: int = Field(
        6,
        ge=1,
        le=9,
        strict=True,
        description="1 (fastest) to 9 (smallest), used as is by every algorithm: gzip/deflate level, brotli "
        "quality, zstd level.",
    )
    min_size: NonNegativeInt = Field(
        1024,
        description="Bodies smaller than this many bytes go out uncompressed; for a streamed body of "
        "unknown length up to this many bytes are held while deciding.",
    )
    content_types: tuple[Str, ...] = Field(
        (
            "text/plain",
            "text/html",
            "text/css",
            "text/javascript",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/x-yaml",
            "image/svg+xml",
        ),
        description="Media types to compress, matched without parameters (`application/json; charset=utf-8` "
        "is `application/json`); `text/*` covers a whole type.",
    )
    algorithms: tuple[Literal["gzip", "brotli", "deflate", "zstd"], ...] = Field(
        ("gzip",),
        min_length=1,
        description="Codings offered, in the server's order of preference: `gzip`, `deflate` (zlib), "
        "`brotli` (`br`, needs the `brotli` package), `zstd` (needs `zstandard`). An algorithm whose "
        "package is missing is skipped with a warning at load.",
    )

    @field_validator("content_types")
    @classmethod
    def _media_types(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        result = []
        for text in types:
            media = text.partition(";")[0].strip().lower()
            kind, slash, sub = media.partition("/")
            if not (slash and HEADER_NAME.match(kind) and (sub == "*" or HEADER_NAME.match(sub))):
                raise ValueError(f"not a media type: {text!r} (type/subtype or type/*)")
            result.append(media)
        return tuple(dict.fromkeys(result))

    @field_validator("algorithms")
    @classmethod
    def _unique(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(names))

    def unavailable_algorithms(self) -> tuple[str, ...]:
        """Configured algorithms none of whose modules is installed (skipped at run time)."""
        return tuple(
            name
            for name in self.algorithms
            if name in COMPRESSION_MODULES
            and not any(importlib.util.find_spec(module) for module in COMPRESSION_MODULES[name])
        )


class CorsConfig(ConfigModel):
    """Cross-origin resource sharing, top level and per route (a route's block replaces the top-level
    one; off unless configured). Preflights are answered by the gateway (200 with the CORS headers,
    or 400 `bad_request` when refused), never proxied; actual responses, the gateway's own errors
    included, get `Access-Control-Allow-Origin` for allowed origins only."""

    enabled: Bool = Field(
        True,
        description="`false` on a route turns CORS off there (preflights then get the route's usual 405 "
        "unless it lists `OPTIONS`).",
    )
    allowed_origins: tuple[Str, ...] = Field(
        (),
        description='Exact origins (`scheme://host[:port]`), or `"*"` for any. Empty: no origin is allowed.',
    )
    allowed_methods: tuple[Str, ...] = Field(
        ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
        description='Methods a preflight may ask for; `"*"` for all.',
    )
    allowed_headers: tuple[Str, ...] = Field(
        (),
        description="Request headers a preflight may ask for besides the CORS-safelisted ones (`Accept`, "
        '`Accept-Language`, `Content-Language`, `Content-Type`), which are always allowed; `["*"]` '
        "reflects whatever is asked. Empty: only the safelisted ones.",
    )
    exposed_headers: tuple[Str, ...] = Field(
        (),
        validation_alias=AliasChoices("exposed_headers", "expose_headers"),
        description="Response headers a browser script may read, sent as `Access-Control-Expose-Headers`.",
    )
    allow_credentials: Bool = Field(
        False,
        description='Send `Access-Control-Allow-Credentials: true`; with `"*"` origins the request\'s '
        "origin is then echoed instead of `*` (browsers refuse `*` with credentials).",
    )
    max_age: NonNegativeInt = Field(600, description="Seconds a browser may cache a preflight's answer.")


# kairos-rs's DefaultHeaders set (reference §3.1), added only where a response lacks the header.
DEFAULT_SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Content-Security-Policy": "default-src 'self'",
}


class SecurityHeadersConfig(ConfigModel):
    """Security headers, top level and per route (a route's setting replaces the top-level one);
    `true`/`false` is shorthand for `{"enabled": true/false}`. A header already on the response is
    never overridden."""

    input_shorthands = ({"type": "boolean", "description": "Shorthand for `enabled`."},)

    enabled: Bool = Field(
        True,
        description="Add the set to the gateway's own responses (errors, preflights). `false`: no security "
        "headers at all.",
    )
    proxied: Bool = Field(
        False,
        description="Also add the set to proxied responses, only the headers the upstream did not send.",
    )
    headers: dict[Str, Str] = Field(
        default_factory=dict,
        description="Headers added to or overriding the default set, by name; an empty value drops that "
        "header from the set. The default set: "
        + ", ".join(f"`{name}: {value}`" for name, value in DEFAULT_SECURITY_HEADERS.items())
        + ".",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.match(name):
                raise ValueError(f"not a valid header name: {name!r}")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} value must not contain CR or LF")
        return headers

    def effective_headers(self) -> dict[str, str]:
        merged = {name.lower(): (name, value) for name, value in DEFAULT_SECURITY_HEADERS.items()}
        for name, value in self.headers.items():
            merged[name.lower()] = (name, value)
        return {name: value for name, value in merged.values() if value}


class CircuitBreakerConfig(ConfigModel):
    """A circuit breaker per backend (scheme, host and port), shared by the routes that use it and kept
    across reloads. A failure is a gateway 502/504 for an attempt, an upstream status in
    `failure_status_codes`, or an upstream that dies mid-body. While a backend's circuit is open the
    balancer skips it; when every backend of a route is open the answer is 503 `circuit_open` with
    `Retry-After`. Top level and per route (a route's block replaces the top-level one)."""

    failure_threshold: PositiveInt = Field(
        5, description="Consecutive failures that open the circuit; a success resets the count."
    )
    success_threshold: PositiveInt = Field(
        3,
        description="Successful probes in the half-open state that close the circuit again; one failed "
        "probe re-opens it for another `reset_timeout_ms`.",
    )
    reset_timeout_ms: PositiveInt = Field(
        30000, description="Milliseconds the circuit stays open before a probe may go through (half-open)."
    )
    failure_rate_threshold: Float | None = Field(
        None,
        gt=0,
        le=1,
        description="Ratio mode instead of the consecutive count: the circuit opens when the share of "
        "failed attempts over `window_ms` reaches this value (0 < x <= 1). Unset: consecutive mode.",
    )
    window_ms: PositiveInt = Field(10000, description="Ratio mode: the sliding window, in milliseconds.")
    minimum_requests: PositiveInt = Field(
        10, description="Ratio mode: attempts needed in the window before the circuit may open."
    )
    half_open_max_calls: PositiveInt = Field(1, description="Probes allowed at the same time when half-open.")
    failure_status_codes: tuple[StatusCode, ...] = Field(
        (500, 502, 503, 504), description="Upstream statuses that count as failures."
    )


class PassiveHealthConfig(ConfigModel):
    """Outlier ejection from live traffic (Envoy's outlier detection), applied where a `health_check`
    block applies: a backend that fails `consecutive_failures` times in a row is taken out of the
    rotation for `base_ejection_ms` times the number of times it was ejected (at most
    `max_ejection_ms`)."""

    enabled: Bool = Field(True, description="`false` turns outlier ejection off.")
    consecutive_failures: PositiveInt = Field(
        5, description="Failures in a row that eject a backend; a success resets the count."
    )
    base_ejection_ms: PositiveInt = Field(
        30000,
        description="Ejection time in milliseconds, multiplied by the times the backend was ejected; the "
        "multiplier drops by one for every `base_ejection_ms` the backend then stays in service.",
    )
    max_ejection_ms: PositiveInt = Field(300000, description="Longest ejection, in milliseconds.")
    max_ejection_percent: int = Field(
        50,
        ge=0,
        le=100,
        strict=True,
        description="Most of a route's backends, in percent, that may be ejected at once; never all of "
        "them, so a single-backend route never ejects.",
    )


class HealthCheckConfig(ConfigModel):
    """Health of a route's backends, top level and per route (a route's block replaces the top-level
    one; `{}` turns checks on with the defaults). Active probes (`GET` on each backend's
    `health_check_path`; a backend without one is never probed) take a failing backend out of the
    rotation; every backend starts healthy."""

    interval_ms: PositiveInt = Field(10000, description="Milliseconds between two probes of a backend.")
    timeout_ms: PositiveInt = Field(
        2000,
        description="Milliseconds a whole probe (connect, request, status and headers) may take before it "
        "fails.",
    )
    healthy_threshold: PositiveInt = Field(
        2, description="Consecutive passed probes that bring an unhealthy backend back."
    )
    unhealthy_threshold: PositiveInt = Field(
        3, description="Consecutive failed probes that take a backend out of the rotation."
    )
    expected_statuses: tuple[StatusCode, ...] = Field(
        (),
        description="Statuses that pass a probe. Empty: any 2xx or 3xx (redirects are not followed).",
    )
    panic_mode: Bool = Field(
        True,
        description="When none of a route's backends is available (unhealthy or ejected), send traffic to "
        "all of them except those with an open circuit, as Envoy does. `false`: answer 503 "
        "`upstream_unavailable`.",
    )
    passive: PassiveHealthConfig = Field(
        default_factory=PassiveHealthConfig, description="Outlier ejection from live traffic."
    )


class ServerConfig(ConfigModel):
    """kairos-rs's `server` block (documented by kairos-rs but never read by it). Kairos accepts and
    validates it, and does not read it either: the server is configured with `kairos run`'s options and
    the `KAIROS_HOST`, `KAIROS_PORT` and `KAIROS_WORKERS` variables."""

    host: Str | None = Field(None, description="Bind address (not read).")
    port: int | None = Field(None, ge=1, le=65535, strict=True, description="Bind port (not read).")
    workers: PositiveInt | None = Field(None, description="Worker processes (not read).")
    keep_alive: NonNegativeInt | None = Field(None, description="Keep-alive seconds (not read).")


class MetricsConfig(ConfigModel):
    """kairos-rs's `metrics` block: accepted and validated, not read by Kairos, which always serves
    Prometheus metrics at `/metrics`, per route."""

    enabled: Bool = Field(True, description="Not read: `/metrics` is always served.")
    path: Str = Field("/metrics", alias="endpoint", description="Not read: the path is always `/metrics`.")
    enable_per_route_metrics: Bool = Field(True, description="Not read: metrics are always per route.")
