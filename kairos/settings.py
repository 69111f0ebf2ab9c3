"""Process settings from the environment (``KAIROS_*``), via pydantic-settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OTEL_INSTALL_HINT = "pip install 'kairos[otel]'"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIROS_", extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    port: int = Field(5900, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    config_path: Path = Path("config.json")
    # Reload the config when its file changes (kairos/reload.py); SIGHUP and POST /api/config/reload
    # work either way.
    config_watch: bool = True
    log_level: str = Field("info", validation_alias=AliasChoices("KAIROS_LOG_LEVEL", "RUST_LOG", "log_level"))
    log_format: Literal["json", "text"] = "text"
    # One access-log line per request on stderr (kairos.access logger, written by a thread); false
    # leaves the AccessLogMiddleware out of the pipeline.
    access_log: bool = False  # ~60 us of CPU per request here: opt in (docs/observability.md)
    admin_token: SecretStr | None = None
    # Where the admin API lives (kairos-rs: /api). The WebSocket streams /ws/metrics and
    # /ws/admin/metrics keep their kairos-rs paths.
    admin_prefix: str = Field("/api", pattern=r"^/[A-Za-z0-9._~\-/]*[A-Za-z0-9._~\-]$")
    # The web dashboard (the top-level `admin` package) served by the gateway at `dashboard_path`,
    # with the admin API's exposure rule: only local clients when no admin token is set.
    dashboard: bool = True
    dashboard_path: str = Field("/admin", pattern=r"^/[A-Za-z0-9._~\-/]*[A-Za-z0-9._~\-]$")
    redis_url: str | None = None
    upstream_max_connections: int = Field(0, ge=0, description="0 = unlimited")
    # HTTP/1.1 engine for backends without "http2": the lean httptools-based engine
    # (kairos/proxy/raw_engine.py, ~2x aiohttp's throughput here, see docs/performance.md) or
    # aiohttp, kept as a tested fallback.
    upstream_engine: Literal["raw", "aiohttp"] = "raw"
    # Idle pooled upstream connections are closed after this long. Below the 5 s that uvicorn and
    # Node close idle keep-alive connections at, so the gateway closes first and rarely reuses a
    # connection the upstream is closing (a POST on such a connection cannot be retried safely).
    upstream_keepalive_seconds: float = Field(4.0, gt=0)
    # Seconds between two samples of /api/metrics/history (kairos-rs: 5). Tests use a fraction.
    metrics_history_interval: float = Field(5.0, gt=0, le=3600)
    # The request head (request line + header lines, as sent) may be at most this many bytes and
    # header fields (Envoy's defaults); larger heads get 431. Enforced by the connection guard under
    # `kairos run` before the app sees the request, and by HeadGuardMiddleware under any server.
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(100, ge=1, le=10_000)
    # `kairos run` only (the connection guard, kairos/server.py): a connection whose request head is
    # not complete this many seconds after it started (or after the previous response, for an idle
    # keep-alive connection) is closed, so slow-header clients cannot hold connections forever.
    header_timeout: float = Field(10.0, gt=0, le=3600)
    # `kairos run` only: connections one worker holds at once; past it a new connection gets a 503
    # and is closed at once (its file descriptor is back immediately). 0 = no cap.
    max_connections: int = Field(10_000, ge=0)
    # `kairos run` only (kairos/server.py, DrainingServer): on SIGTERM or SIGINT, /ready answers 503 at
    # once and everything is still served for `drain_delay` seconds, so a load balancer sees the probe
    # fail and stops sending before the listener closes; then requests in flight get up to
    # `drain_timeout` seconds to finish before they are cut and the lifespan shutdown runs.
    drain_delay: float = Field(5.0, ge=0, le=600)
    drain_timeout: float = Field(30.0, ge=0, le=3600)
    # The DNS listener (kairos/dns/listener.py), UDP and TCP, for "protocol": "dns" routes: off
    # without a port. 53 needs CAP_NET_BIND_SERVICE (or root); 5353 runs unprivileged. Loopback by
    # default: a listener open to the world is an open resolver (a DDoS amplifier) unless the
    # routes' ip_filter and client_rate_limit say otherwise, so exposing it is the operator's choice.
    dns_host: str = "127.0.0.1"
    dns_port: int | None = Field(None, ge=1, le=65535)
    # Config shared by replicas (kairos/config_store.py): the running document and its generation in
    # this Redis; admin changes go there and every replica applies them. Unset: the file only.
    config_store: str | None = None
    # LLM request analytics (kairos/analytics/): SQLite next to the config file by default, or the
    # database this URL names (postgresql://...); KAIROS_ANALYTICS=false writes none.
    analytics: bool = True
    analytics_url: str | None = None
    # OpenTelemetry tracing (kairos/observability/tracing.py, extra `otel`): off (nothing imported, no
    # layer), otlp (OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT) or console; the rest is standard OTEL_*.
    tracing: Literal["off", "otlp", "console"] = "off"

    @model_validator(mode="after")
    def _dashboard_apart(self) -> Settings:
        """The dashboard and the admin API cannot share a path: one would hide the other. Refused
        when KAIROS_DASHBOARD_PATH was set so; with the default path the dashboard steps aside
        (``served_dashboard_path``) so that an existing KAIROS_ADMIN_PREFIX=/admin keeps working."""
        if self.dashboard and "dashboard_path" in self.model_fields_set and self._dashboard_overlaps():
            raise ValueError(
                f"KAIROS_DASHBOARD_PATH={self.dashboard_path} overlaps KAIROS_ADMIN_PREFIX="
                f"{self.admin_prefix}: give the dashboard its own path (or KAIROS_DASHBOARD=false)"
            )
        return self

    def _dashboard_overlaps(self) -> bool:
        dashboard, api = self.dashboard_path.rstrip("/"), self.admin_prefix.rstrip("/")
        return dashboard == api or dashboard.startswith(api + "/") or api.startswith(dashboard + "/")

    @property
    def served_dashboard_path(self) -> str | None:
        """Where the gateway serves the dashboard, or None (off, or its default path is the admin
        API's)."""
        if not self.dashboard or self._dashboard_overlaps():
            return None
        return self.dashboard_path

    @field_validator("tracing")
    @classmethod
    def _tracing_installed(cls, value: str) -> str:
        """Refuse tracing without the extra here, so the operator reads one line naming the
        variable and the fix instead of an ImportError from deep inside the startup."""
        if value != "off":
            from importlib.util import find_spec

            needed = ["opentelemetry.sdk"]
            if value == "otlp":
                needed.append("opentelemetry.exporter.otlp.proto.http")
            for module in needed:
                try:
                    found = find_spec(module) is not None
                except ImportError:  # a parent package is missing
                    found = False
                if not found:
                    raise ValueError(f"tracing {value!r} needs {module} (not installed): {OTEL_INSTALL_HINT}")
        return value


class SettingsError(ValueError):
    """Bad ``KAIROS_*`` environment: one line per variable, named as the operator set it."""


def load_settings() -> Settings:
    """``Settings()`` with errors named by environment variable instead of a pydantic traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        from kairos.config.problems import problems_from_validation_error

        lines = []
        for problem in problems_from_validation_error(exc):
            field = problem.path.split(".")[0].split("[")[0]
            if field.startswith("("):  # a rule across variables: its message names them
                lines.append(problem.message)
                continue
            lines.append(str(problem).replace(problem.path, "KAIROS_" + field.upper(), 1))
        raise SettingsError("invalid environment:\n  " + "\n  ".join(lines)) from None
