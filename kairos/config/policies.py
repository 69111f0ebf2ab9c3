"""Sections that later concerns act on but that must already parse (kairos-rs §11-12 shapes).

Each model is the typed contract for its middleware; keeping them here lets `kairos validate`
check a full config today and warn about misspelt keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kairos.config.base import Bool, ConfigModel, Float, NonNegativeInt, PositiveInt, StatusCode, Str


class CacheConfig(ConfigModel):
    enabled: Bool = True
    ttl_secs: NonNegativeInt = 60
    max_size: PositiveInt = 1000
    max_bytes: PositiveInt = 1024 * 1024
    coalesce: Bool = False
    vary_headers: tuple[Str, ...] = ()
    cache_authenticated: Bool = False
    storage_uri: Str | None = None


class CompressionConfig(ConfigModel):
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


class CorsConfig(ConfigModel):
    enabled: Bool = True
    allowed_origins: tuple[Str, ...] = ()
    allowed_methods: tuple[Str, ...] = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
    allowed_headers: tuple[Str, ...] = ()
    exposed_headers: tuple[Str, ...] = ()
    allow_credentials: Bool = False
    max_age: NonNegativeInt = 600


class CircuitBreakerConfig(ConfigModel):
    failure_threshold: PositiveInt = 5
    success_threshold: PositiveInt = 3
    reset_timeout_ms: PositiveInt = 30000
    failure_rate_threshold: Float | None = Field(None, gt=0, le=1)
    window_ms: PositiveInt = 10000
    minimum_requests: PositiveInt = 10
    half_open_max_calls: PositiveInt = 1
    failure_status_codes: tuple[StatusCode, ...] = (500, 502, 503, 504)


class HealthCheckConfig(ConfigModel):
    interval_ms: PositiveInt = 10000
    timeout_ms: PositiveInt = 2000
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 3


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
