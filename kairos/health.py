"""``/health``, ``/ready``, ``/live``: cheap, never proxied, never rate limited."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from kairos.admin.responses import answer
from kairos.api_models import HealthStatus, ReadyStatus
from kairos.errors import timestamp
from kairos.gateway import Gateway


class HealthEndpoints:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def health(self, request: Request) -> JSONResponse:
        gateway = self._gateway
        return answer(
            HealthStatus(
                status="healthy",
                version=gateway.version,
                timestamp=timestamp(),
                uptime=round(gateway.uptime, 3),
                admin_prefix=gateway.settings.admin_prefix,
            )
        )

    async def ready(self, request: Request) -> JSONResponse:
        gateway = self._gateway
        if not gateway.ready:
            return answer(ReadyStatus(status="not_ready", timestamp=timestamp()), 503)
        return answer(
            ReadyStatus(
                status="ready",
                timestamp=timestamp(),
                config_generation=gateway.generation,
                routes=len(gateway.table),
            )
        )

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "timestamp": timestamp()})
