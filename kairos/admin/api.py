"""Assembles the admin API: the REST endpoints under the prefix and the WebSocket streams, all
behind one ``AdminGuard``. Each concern's endpoints live in their own module."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp

from kairos.admin import config_api, metrics_api
from kairos.admin.guard import AdminGuard

if TYPE_CHECKING:
    from kairos.gateway import Gateway

logger = logging.getLogger("kairos.admin")

# kairos-rs's stream paths, kept as they are (not moved by KAIROS_ADMIN_PREFIX).
STREAM_PATHS = ("/ws/metrics", "/ws/admin/metrics")


class AdminApi:
    """``rest`` serves the paths under ``prefix`` (mounted there), ``streams`` the WebSocket
    paths; ``owns(path)`` says which paths are the admin API's."""

    def __init__(self, gateway: Gateway) -> None:
        self.prefix = gateway.settings.admin_prefix
        token = gateway.settings.admin_token
        rest: list[BaseRoute] = [*config_api.endpoints(gateway), *metrics_api.endpoints(gateway)]
        self.guard = AdminGuard(Router(routes=rest), token)
        self.rest: ASGIApp = self.guard
        self.streams: ASGIApp = AdminGuard(Router(routes=metrics_api.stream_endpoints(gateway)), token)

    def owns(self, path: str) -> bool:
        return path in STREAM_PATHS or path == self.prefix or path.startswith(self.prefix + "/")

    def log_exposure(self) -> None:
        if self.guard.token_required:
            logger.info("admin API at %s/ (token required)", self.prefix)
        else:
            logger.warning(
                "admin API at %s/ answers only loopback clients: KAIROS_ADMIN_TOKEN is not set", self.prefix
            )
