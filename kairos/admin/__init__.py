"""The admin API: route and config management, reload, explain, metrics history and streams.

Served by the same ASGI app under ``KAIROS_ADMIN_PREFIX`` (default ``/api``) plus the kairos-rs
WebSocket streams ``/ws/metrics`` and ``/ws/admin/metrics``; every endpoint sits behind
``AdminGuard``.

The admin API owns only its own sections under the prefix (``/api/routes…``, ``/api/config…``,
``/api/metrics…``, …), as kairos-rs does: ``/api/users`` and every other path under ``/api`` stay
free for the operator's routes, which is where most APIs live.
"""

from __future__ import annotations

# kairos-rs's stream paths, kept as they are (not moved by KAIROS_ADMIN_PREFIX).
STREAM_PATHS = ("/ws/metrics", "/ws/admin/metrics")
# First path segment after the prefix of every admin endpoint (and everything below it).
ADMIN_SECTIONS = frozenset(
    {"routes", "config", "metrics", "explain", "backends", "cache", "analytics", "openapi.json"}
)


def admin_owns(path: str, prefix: str) -> bool:
    """Whether a request path is answered by the admin API (never proxied)."""
    if path in STREAM_PATHS:
        return True
    if not path.startswith(prefix) or path[len(prefix) : len(prefix) + 1] != "/":
        return False
    return path[len(prefix) + 1 :].split("/", 1)[0] in ADMIN_SECTIONS
