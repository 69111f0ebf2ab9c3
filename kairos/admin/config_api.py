"""The admin REST endpoints under ``KAIROS_ADMIN_PREFIX`` (default ``/api``), except the metric
history ones (kairos/admin/metrics_api.py).

- ``/routes*`` — route CRUD and validation (kairos/admin/routes_api.py);
- ``GET /config`` — the running config as written, every secret shown as ``"***"``
  (kairos-rs returned ``jwt.secret`` in clear);
- ``POST /config/reload`` / ``GET /config/status`` — kairos-rs's unmounted reload API, mounted:
  ``{"success", "message", "version", "timestamp"}`` plus the gateway's reload status
  (generation, last attempt, result, errors, counts);
- ``GET /explain``, ``GET /backends`` — kairos/admin/explain.py;
- ``POST /cache/purge`` — drop cached responses of a route and/or a key prefix;
- ``GET /openapi.json`` — the OpenAPI 3 document of all of the above (kairos/admin/openapi.py).

Answers are JSON, errors included (kairos/admin/responses.py renders what the router itself
would answer in plain text).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kairos.admin import openapi
from kairos.admin.explain import ExplainApi
from kairos.admin.redact import redact
from kairos.admin.responses import BadRequest, answer, error_response, read_json
from kairos.admin.routes_api import RoutesApi, dump_config
from kairos.api_models import ConfigStatus, PurgeResult
from kairos.cache.redis_store import CacheUnavailable
from kairos.errors import timestamp

if TYPE_CHECKING:
    from kairos.gateway import Gateway

_PURGE_KEYS = ("route", "key_prefix")


class ConfigApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def config(self, request: Request) -> Response:
        gateway = self.gateway
        document = gateway.config_document
        if not isinstance(document, dict):
            if gateway.config is None:
                return error_response("the gateway has not loaded its configuration yet", 503, "unavailable")
            document = dump_config(gateway.config)
        return JSONResponse(redact(document))

    def _status(self, success: bool, message: str, **extra: Any) -> ConfigStatus:
        gateway = self.gateway
        status = gateway.reload_status
        return ConfigStatus(
            success=success,
            message=message,
            version=status.generation,
            **status.as_dict(),
            config_file=str(gateway.config_file) if gateway.config_file is not None else None,
            source=gateway.config_source,
            routes=len(gateway.table),
            **extra,
        )

    async def status(self, request: Request) -> Response:
        applied = self.gateway.reload_status.as_dict()["applied_at"]
        return answer(self._status(True, "Current configuration status", timestamp=applied or timestamp()))

    async def reload(self, request: Request) -> Response:
        gateway = self.gateway
        if gateway.config_file is None:
            return answer(
                self._status(
                    False,
                    "Nothing to reload: the config was given as an object, not a file",
                    error="no config file",
                    type="conflict",
                    timestamp=timestamp(),
                ),
                409,
            )
        reloaded = await gateway.reload("api", force=True)
        status = gateway.reload_status
        if reloaded:
            return answer(
                self._status(
                    True,
                    f"Configuration reloaded successfully (generation {status.generation})",
                    timestamp=timestamp(),
                )
            )
        errors = list(status.last_errors)
        message = f"Configuration reload failed, still serving generation {status.generation}: " + "; ".join(
            errors
        )
        return answer(
            self._status(False, message, error=message, type="config", errors=errors, timestamp=timestamp()),
            422,
        )

    async def purge(self, request: Request) -> Response:
        try:
            body = await read_json(request) if await _has_body(request) else {}
        except BadRequest as bad:
            return error_response(bad.message, bad.status, bad.kind)
        if not isinstance(body, dict):
            return error_response('request body must be a JSON object: {"route"?: ..., "key_prefix"?: ...}')
        unknown = sorted(set(body) - set(_PURGE_KEYS))
        if unknown:
            return error_response(
                f"unknown key(s) {', '.join(unknown)}: the body takes only {' and '.join(_PURGE_KEYS)}"
            )
        for key in _PURGE_KEYS:
            if body.get(key) is not None and not isinstance(body[key], str):
                return error_response(f"{key}: must be a string or null")
        route, key_prefix = body.get("route"), body.get("key_prefix")
        started = time.perf_counter()
        try:
            purged = await self.gateway.cache.purge(route=route, key_prefix=key_prefix)
        except CacheUnavailable as exc:
            return error_response(f"the cache store is unreachable: {exc}", 503, "unavailable")
        result = PurgeResult(
            success=True,
            message=f"Purged {purged} cached responses",
            purged=purged,
            route=route,
            key_prefix=key_prefix,
            seconds=round(time.perf_counter() - started, 6),
        )
        if route is not None and not any(
            live.name == route or live.key == route for live in self.gateway.table.routes
        ):
            result.warning = f"no route of the running config has the template or key {route!r}"
        return answer(result)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi.document(self.gateway.settings.admin_prefix, self.gateway.version))


async def _has_body(request: Request) -> bool:
    """Whether the request announces a body (an empty POST purges everything)."""
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def endpoints(gateway: Gateway) -> list[BaseRoute]:
    config = ConfigApi(gateway)
    explain = ExplainApi(gateway)
    return [
        *RoutesApi(gateway).endpoints(),
        Route("/config", config.config, methods=["GET"]),
        Route("/config/status", config.status, methods=["GET"]),
        Route("/config/reload", config.reload, methods=["POST"]),
        Route("/explain", explain.explain, methods=["GET"]),
        Route("/backends", explain.backends, methods=["GET"]),
        Route("/cache/purge", config.purge, methods=["POST"]),
        Route("/openapi.json", config.openapi, methods=["GET"]),
    ]
