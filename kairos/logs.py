"""Logging setup that works under any ASGI server and in every worker process.

Worker processes do not inherit a parent's ``basicConfig``, so the gateway configures its own
``kairos`` logger at startup, once, unless the host application already configured it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_LEVELS = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
}


def level_name(setting: str) -> str:
    """``KAIROS_LOG_LEVEL``/``RUST_LOG`` value -> logging level; ``RUST_LOG`` style
    ``kairos=debug,other=info`` takes the first directive's level."""
    first = setting.split(",")[0].split("=")[-1].strip().lower()
    return _LEVELS.get(first, "INFO")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    logger = logging.getLogger("kairos")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level_name(level))
    logger.propagate = False
