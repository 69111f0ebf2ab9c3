"""Small builders for config documents, and helpers to load them with a fixed environment."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config import ConfigError, LoadedConfig, load_data

SECRET = "a-test-secret-that-is-long-enough-0123456789"


def backend(host: str = "http://10.0.0.5", port: int | str = 8080, **extra: Any) -> dict[str, Any]:
    return {"host": host, "port": port, **extra}


def route(external: str = "/api/items", internal: str = "/items", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"external_path": external, "internal_path": internal, "methods": ["GET"]}
    if "host" not in extra:
        doc["backends"] = [backend()]
    doc.update(extra)
    return doc


def config(*routes: object, **top: Any) -> dict[str, Any]:
    return {"version": 1, "routers": list(routes), **top}


def load(raw: Any, environ: dict[str, str] | None = None) -> LoadedConfig:
    return load_data(raw, "test.json", environ=environ or {})


def errors(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    """Every error line for an invalid document (fails the test if the document loads)."""
    with pytest.raises(ConfigError) as caught:
        load(raw, environ)
    return [str(problem) for problem in caught.value.problems]


def warnings(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    return [str(problem) for problem in load(raw, environ).warnings]
