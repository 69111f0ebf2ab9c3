"""Assembles the admin API: the REST endpoints under the prefix and the WebSocket streams, all
behind one ``AdminGuard``. Each concern's endpoints live in their own module."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp

from kairos.admin import STREAM_PATHS, admin_owns, analytics_api, config_api, metrics_api
from kairos.admin.guard import AdminGuard
from kairos.admin.responses import AdminErrors

if TYPE_CHECKING:
    from kairos.gateway import Gateway

logger = logging.getLogger("kairos.admin")

__all__ = ["STREAM_PATHS", "AdminApi"]


class AdminApi:
    """``rest`` serves the paths under ``prefix`` (mounted there), ``streams`` the WebSocket
    paths; ``owns(path)`` says which paths are the admin API's."""

    def __init__(self, gateway: Gateway) -> None:
        self.prefix = gateway.settings.admin_prefix
        settings = gateway.settings
        self.dashboard = settings.served_dashboard_path
        self._gateway = gateway
        self._yields: tuple[object, bool] = (None, False)  # (route table, a route claims the path)
        token = gateway.settings.admin_token
        rest: list[BaseRoute] = [
            *config_api.endpoints(gateway),
            *metrics_api.endpoints(gateway),
            *analytics_api.endpoints(gateway),
        ]
        # AdminErrors: unknown paths, wrong methods and handler exceptions answer JSON, not text.
        self.guard = AdminGuard(AdminErrors(Router(routes=rest)), token)
        self.rest: ASGIApp = self.guard
        self.streams: ASGIApp = AdminGuard(Router(routes=metrics_api.stream_endpoints(gateway)), token)

    def owns(self, path: str) -> bool:
        """The admin API's paths, and the dashboard's when the gateway serves it."""
        if self.dashboard is not None and _under(path, self.dashboard):
            return not self.dashboard_yields()
        return admin_owns(path, self.prefix)

    def dashboard_yields(self) -> bool:
        """Whether a route of the running config has a path under the dashboard's (literally:
        ``/admin``, ``/admin/{*rest}``; a root catch-all does not count): then the route serves
        those requests and the dashboard is not served there, so turning the dashboard on never
        takes an existing API away. Checked once per route table, logged when it happens."""
        table = self._gateway.table
        seen, yields = self._yields
        if seen is table:
            return yields
        assert self.dashboard is not None
        claims = [route.name for route in table.routes if _under(route.name, self.dashboard)]
        if claims:
            logger.warning(
                "dashboard not served at %s: route(s) %s take that path (KAIROS_DASHBOARD_PATH moves it)",
                self.dashboard,
                ", ".join(claims[:5]),
            )
        self._yields = (table, bool(claims))
        return bool(claims)

    def log_exposure(self) -> None:
        if self.guard.token_required:
            logger.info("admin API at %s/ (token required)", self.prefix)
        else:
            logger.warning(
                "admin API at %s/ answers only loopback clients: KAIROS_ADMIN_TOKEN is not set", self.prefix
            )


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
