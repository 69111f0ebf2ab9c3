"""Process settings from the environment (``KAIROS_*``), via pydantic-settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIROS_", extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    port: int = Field(5900, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    config_path: Path = Path("config.json")
    log_level: str = Field("info", validation_alias=AliasChoices("KAIROS_LOG_LEVEL", "RUST_LOG", "log_level"))
    log_format: Literal["json", "text"] = "text"
    # One access-log line per request on stderr (kairos.access logger, written by a thread); false
    # leaves the AccessLogMiddleware out of the pipeline.
    access_log: bool = False  # ~60 us of CPU per request here: opt in (see README, Metrics)
    admin_token: SecretStr | None = None
    # Where the admin API lives (kairos-rs: /api). The WebSocket streams /ws/metrics and
    # /ws/admin/metrics keep their kairos-rs paths.
    admin_prefix: str = Field("/api", pattern=r"^/[A-Za-z0-9._~\-/]*[A-Za-z0-9._~\-]$")
    redis_url: str | None = None
    upstream_max_connections: int = Field(0, ge=0, description="0 = unlimited")
    # HTTP/1.1 engine for backends without "http2": the lean httptools-based engine
    # (kairos/proxy/raw_engine.py, ~2x aiohttp's throughput here, see the README's Performance
    # section) or aiohttp, kept as a tested fallback.
    upstream_engine: Literal["raw", "aiohttp"] = "raw"
    # Idle pooled upstream connections are closed after this long. Below the 5 s that uvicorn and
    # Node close idle keep-alive connections at, so the gateway closes first and rarely reuses a
    # connection the upstream is closing (a POST on such a connection cannot be retried safely).
    upstream_keepalive_seconds: float = Field(4.0, gt=0)


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
            lines.append(str(problem).replace(problem.path, "KAIROS_" + field.upper(), 1))
        raise SettingsError("invalid environment:\n  " + "\n  ".join(lines)) from None
