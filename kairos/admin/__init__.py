"""The admin API: route and config management, reload, explain, metrics history and streams.

Served by the same ASGI app under ``KAIROS_ADMIN_PREFIX`` (default ``/api``) plus the kairos-rs
WebSocket streams ``/ws/metrics`` and ``/ws/admin/metrics``; every endpoint sits behind
``AdminGuard``.
"""
