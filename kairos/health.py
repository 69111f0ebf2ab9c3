"""``/health``, ``/ready``, ``/live``: cheap, never proxied, never rate limited."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from kairos.errors import timestamp
from kairos.gateway import Gateway


class HealthEndpoints:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def health(self, request: Request) -> JSONResponse:
        gateway = self._gateway
        return JSONResponse(
            {
                "status": "healthy",
                "version": gateway.version,
                "timestamp": timestamp(),
                "uptime": round(gateway.uptime, 3),
            }
        )

    async def ready(self, request: Request) -> JSONResponse:
        gateway = self._gateway
        if not gateway.ready:
            return JSONResponse({"status": "not_ready", "timestamp": timestamp()}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "timestamp": timestamp(),
                "config_generation": gateway.generation,
                "routes": len(gateway.table),
            }
        )

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "timestamp": timestamp()})
