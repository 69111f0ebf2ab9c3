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


class CacheConfig(ConfigModel):
    """``cache`` per route (kairos/middleware/cache.py). ``max_size`` entries and ``memory_bytes``
    bound the route's in-memory LRU; ``max_bytes`` bounds one stored response (larger ones stream
    through uncached); ``ttl_secs`` applies when the upstream sends no ``max-age``/``s-maxage``
    (0: cache only what the upstream marks fresh). ``storage_uri``: ``memory://`` or a Redis URL
    (default: ``KAIROS_REDIS_URL`` when set, else memory)."""

    enabled: Bool = True
    ttl_secs: NonNegativeInt = 60
    max_size: PositiveInt = 1000
    max_bytes: PositiveInt = 1024 * 1024
    memory_bytes: PositiveInt = 64 * 1024 * 1024
    coalesce: Bool = False
    vary_headers: tuple[Str, ...] = ()
    cache_authenticated: Bool = False
    storage_uri: Str | None = None

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
        if uri is not None and uri.split("://", 1)[0].lower() not in ("memory", "redis", "rediss", "unix"):
            raise ValueError("must be memory://, redis://, rediss:// or unix://")
        return uri


# Algorithms that need a package beyond the standard library, and the modules that provide them.
COMPRESSION_MODULES: dict[str, tuple[str, ...]] = {"brotli": ("brotli", "brotlicffi"), "zstd": ("zstandard",)}


class CompressionConfig(ConfigModel):
    """``compression``, top level (kairos/middleware/compression.py). ``level`` (1-9) is used as is
    by every algorithm (gzip/deflate level, brotli quality, zstd level); ``algorithms`` is the
    server's order of preference; ``content_types`` are media types (``text/*`` allowed), matched
    without parameters. An algorithm whose package is missing is skipped (a warning at load)."""

    enabled: Bool = True
    level: int = Field(6, ge=1, le=9, strict=True)
    min_size: NonNegativeInt = 1024
    content_types: tuple[Str, ...] = (
        "text/plain",
        "text/html",
        "text/css",
        "text/javascript",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/x-yaml",
        "image/svg+xml",
    )
    algorithms: tuple[Literal["gzip", "brotli", "deflate", "zstd"], ...] = Field(("gzip",), min_length=1)

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
    """``cors``, top level and per route (a route's block replaces the global one).

    ``allowed_origins`` may hold ``"*"``; with ``allow_credentials`` the actual origin is echoed
    instead (browsers refuse ``*`` with credentials). ``enabled: false`` on a route turns CORS off there.
    """

    enabled: Bool = True
    allowed_origins: tuple[Str, ...] = ()
    allowed_methods: tuple[Str, ...] = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
    allowed_headers: tuple[Str, ...] = ()
    exposed_headers: tuple[Str, ...] = Field(
        (), validation_alias=AliasChoices("exposed_headers", "expose_headers")
    )
    allow_credentials: Bool = False
    max_age: NonNegativeInt = 600


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
    """``security_headers``, top level and per route; ``true``/``false`` is shorthand for ``enabled``.

    On by default for responses the gateway generates itself (errors, preflights); ``proxied``
    opts in for upstream responses (kairos-rs forced its CSP onto every proxied page). ``headers``
    adds to or overrides the default set; an empty value drops that header.
    """

    enabled: Bool = True
    proxied: Bool = False
    headers: dict[Str, Str] = Field(default_factory=dict)

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
    failure_threshold: PositiveInt = 5
    success_threshold: PositiveInt = 3
    reset_timeout_ms: PositiveInt = 30000
    failure_rate_threshold: Float | None = Field(None, gt=0, le=1)
    window_ms: PositiveInt = 10000
    minimum_requests: PositiveInt = 10
    half_open_max_calls: PositiveInt = 1
    failure_status_codes: tuple[StatusCode, ...] = (500, 502, 503, 504)


class PassiveHealthConfig(ConfigModel):
    """Outlier ejection from live traffic (Envoy's outlier detection): ``consecutive_failures``
    in a row eject a backend for ``base_ejection_ms`` x times ejected (capped at
    ``max_ejection_ms``); at most ``max_ejection_percent`` of a route's backends are ejected."""

    enabled: Bool = True
    consecutive_failures: PositiveInt = 5
    base_ejection_ms: PositiveInt = 30000
    max_ejection_ms: PositiveInt = 300000
    max_ejection_percent: int = Field(50, ge=0, le=100, strict=True)


class HealthCheckConfig(ConfigModel):
    """``health_check``, top level and per route. Active probes go to each backend's
    ``health_check_path``; ``panic_mode`` (default on) sends traffic to every backend when none is
    healthy, as Envoy does, instead of refusing everything."""

    interval_ms: PositiveInt = 10000
    timeout_ms: PositiveInt = 2000
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 3
    expected_statuses: tuple[StatusCode, ...] = ()  # empty: any 2xx or 3xx is healthy
    panic_mode: Bool = True
    passive: PassiveHealthConfig = Field(default_factory=PassiveHealthConfig)


class ServerConfig(ConfigModel):
    """Documented by kairos-rs but never read by it; Kairos reads host/port/workers from here when
    the matching KAIROS_* variable is unset."""

    host: Str | None = None
    port: int | None = Field(None, ge=1, le=65535, strict=True)
    workers: PositiveInt | None = None
    keep_alive: NonNegativeInt | None = None


class MetricsConfig(ConfigModel):
    enabled: Bool = True
    path: Str = Field("/metrics", alias="endpoint")
    enable_per_route_metrics: Bool = True
