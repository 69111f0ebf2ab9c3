"""``/routes``: list, get, create, update, delete and validate routes — applied live, saved atomically.

Same paths, status codes and wrapper as kairos-rs (reference §2.4): ``{"success", "message",
"route"?, "routes"?}``, 201 on create, 404 "Route not found: <path>", 409 "Route already exists:
<path>", 400 for validation (here with *every* problem, as ``errors``, each with its path inside
the route: ``backends[0].port: must be between 1 and 65535``) and 500 "Failed to save
configuration: ...". Unlike kairos-rs, a change is live when the answer arrives (the message says
which config generation runs it) instead of "Restart required".

How a change is made
    The running config *as written in the file* (``Gateway.config_document``: before ``${VAR}``
    substitution, unknown keys kept) is deep-copied, the route is edited in the copy, and the
    whole copy goes through the loader (so cross-route rules apply: ``auth_required`` needs a
    ``jwt`` section, duplicates are reported) and then ``Gateway.change``, which saves it (temp
    file, fsync, rename, ``.bak``) and applies it. A document that fails validation or cannot be
    saved changes nothing. Edits are serialised by one lock so two admin calls never lose each
    other's change. (A file reload landing between our copy and our save is overwritten by the
    save; the reload lock in ``Gateway.change`` keeps the file and the running config consistent.)

Which route a URL names
    ``/routes/{external_path without the leading /}`` (kairos-rs's convention:
    ``/api/routes/cats/%7Bid%7D`` is ``/cats/{id}``). Kairos keys routes by protocol + methods +
    external_path, so several routes may share an external_path (``GET /users`` and ``POST /users``
    as two routes). When more than one route has the path, narrow it down with query parameters:
    ``?method=POST`` (routes whose methods include it), ``?protocol=websocket``, or ``?index=N``
    (the route's position in ``routers``). A selector that still leaves several routes is a 409
    that lists them (``routes``) and says how to pick; none is a 404.

What is returned
    Routes exactly as written in the document (unknown keys and ``${VAR}`` references kept) with
    secrets replaced by ``"***"`` (kairos/admin/redact.py). A PUT whose body carries ``"***"`` where
    the running route has a secret keeps the running secret.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kairos.admin.redact import redact, restore
from kairos.admin.responses import BadRequest, answer, read_json
from kairos.admin.shadow import admin_shadow_warning
from kairos.api_models import RouteAnswer, RouteList, RoutesReplaced, RouteValidation
from kairos.config import ConfigError, GatewayConfig, LoadedConfig, Problem, load_data
from kairos.config.model import HTTP_METHODS
from kairos.config.problems import StaleConfig
from kairos.config_store import ConfigStoreUnavailable

if TYPE_CHECKING:
    from kairos.gateway import Gateway

PROTOCOLS = ("http", "websocket", "ftp", "dns")


class Failure(Exception):
    """A kairos-rs-shaped failure: ``{"success": false, "message", ...extra}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or _KINDS.get(status, "bad_request")
        self.extra = extra

    def response(self) -> JSONResponse:
        """kairos-rs's ``success``/``message`` plus the gateway's ``error``/``type``, so a client of
        either shape reads it."""
        body = {"success": False, "message": self.message, "error": self.message, "type": self.kind}
        return JSONResponse({**body, **self.extra}, status_code=self.status)


_KINDS = {
    400: "bad_request",
    404: "route_not_found",
    409: "conflict",
    413: "payload_too_large",
    500: "internal",
    503: "unavailable",
}


def dump_config(config: GatewayConfig) -> dict[str, Any]:
    """A config given as an object has no document: rebuild one the loader accepts again."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return plain(config.model_dump(mode="python", exclude_none=True)) or {}


def read_document(gateway: Gateway) -> dict[str, Any]:
    """The running config as written, for reading only (no copy: ~30 ms saved per read with
    1,000 routes). The document is never edited in place: changes go through running_document's
    copy and replace it whole, so this one stays as it was while it is read."""
    document = gateway.config_document
    if isinstance(document, dict):
        return document
    return running_document(gateway)


def running_document(gateway: Gateway) -> dict[str, Any]:
    """A deep copy of the running config as written (safe to edit)."""
    document = gateway.config_document
    if isinstance(document, dict):
        return copy.deepcopy(document)
    if gateway.config is None:
        raise Failure(503, "The gateway has not loaded its configuration yet")
    return dump_config(gateway.config)


def _routers_read(document: dict[str, Any]) -> list[Any]:
    """``routers`` of a document being read (routers_of would add a missing one to it)."""
    routers = document.get("routers")
    return routers if isinstance(routers, list) else []


def routers_of(document: dict[str, Any]) -> list[Any]:
    routers = document.get("routers")
    if not isinstance(routers, list):
        routers = document["routers"] = []
    return routers


def _methods(route: Any) -> set[str]:
    methods = route.get("methods") if isinstance(route, dict) else None
    if not isinstance(methods, list):
        return set()
    return {method.upper() for method in methods if isinstance(method, str)}


def _is_websocket(route: Any) -> bool:
    protocol = route.get("protocol") if isinstance(route, dict) else None
    return isinstance(protocol, str) and protocol.strip().lower() == "websocket"


def describe(index: int, route: Any) -> str:
    methods = ",".join(sorted(_methods(route))) or "?"
    kind = " (websocket)" if _is_websocket(route) else ""
    return (
        f"routers[{index}] {methods} {route.get('external_path') if isinstance(route, dict) else '?'}{kind}"
    )


def select(routers: list[Any], path: str, query: dict[str, str]) -> int:
    """The index of the one route ``path`` + selectors name (see the module docstring)."""
    method = query.get("method")
    protocol = query.get("protocol")
    index_text = query.get("index")
    if method is not None and method.upper() not in HTTP_METHODS:
        raise BadRequest(
            f"query parameter `method`: must be one of {', '.join(HTTP_METHODS)} (got {method!r})"
        )
    if protocol is not None and protocol.lower() not in PROTOCOLS:
        raise BadRequest(
            f"query parameter `protocol`: must be one of {', '.join(PROTOCOLS)} (got {protocol!r})"
        )
    wanted_index: int | None = None
    if index_text is not None:
        try:
            wanted_index = int(index_text)
        except ValueError:
            raise BadRequest(f"query parameter `index`: must be an integer (got {index_text!r})") from None
    candidates = [
        index
        for index, route in enumerate(routers)
        if isinstance(route, dict)
        and route.get("external_path") == path
        and (method is None or method.upper() in _methods(route))
        and (protocol is None or (route.get("protocol") or "http").lower() == protocol.lower())
        and (wanted_index is None or index == wanted_index)
    ]
    if not candidates:
        narrowed = [
            f"{name}={value}" for name, value in query.items() if name in ("method", "protocol", "index")
        ]
        raise Failure(404, f"Route not found: {path}" + (f" ({', '.join(narrowed)})" if narrowed else ""))
    if len(candidates) > 1:
        raise Failure(
            409,
            f"Route {path} is ambiguous: {len(candidates)} routes have this external_path "
            f"({'; '.join(describe(i, routers[i]) for i in candidates)}). "
            "Pick one with ?method=<METHOD>, ?protocol=<protocol> or ?index=<position in routers>.",
            routes=[redact(routers[i]) for i in candidates],
            indexes=candidates,
        )
    return candidates[0]


def _refuse_clash(routers: list[Any], index: int, name: object, advice: str) -> None:
    """409 when the route now at ``index`` takes methods another route with its path already takes."""
    clash = conflicts(routers, routers[index], skip=index)
    if clash:
        raise Failure(
            409,
            f"Route already exists: {name} "
            f"({'; '.join(describe(i, routers[i]) for i in clash)} takes the same methods{advice})",
        )


def conflicts(routers: list[Any], route: dict[str, Any], skip: int | None = None) -> list[int]:
    """Routes a new/updated route would duplicate: same external_path, same kind (WebSocket or
    not) and a method in common — the second could never be reached for those methods."""
    methods = _methods(route)
    return [
        index
        for index, other in enumerate(routers)
        if index != skip
        and isinstance(other, dict)
        and other.get("external_path") == route.get("external_path")
        and _is_websocket(other) == _is_websocket(route)
        and methods & _methods(other)
    ]


def relative(problem: Problem, index: int) -> str:
    """A problem about ``routers[index]`` named by its path inside the route."""
    prefix = f"routers[{index}]"
    path = problem.path
    if path == prefix:
        path = "(route)"
    elif path.startswith(prefix + "."):
        path = path[len(prefix) + 1 :]
    elif path.startswith(prefix + "["):
        path = path[len(prefix) :]
    return str(dataclasses.replace(problem, path=path))


def route_warnings(loaded: LoadedConfig, index: int, route: Any, prefix: str) -> list[str]:
    mine = f"routers[{index}]"
    found = [
        relative(warning, index)
        for warning in loaded.warnings
        if warning.path == mine or warning.path.startswith((mine + ".", mine + "["))
    ]
    shadow = admin_shadow_warning(route.get("external_path") if isinstance(route, dict) else None, prefix)
    if shadow is not None:
        found.append(shadow)
    return found


def check_document(document: dict[str, Any], index: int | None) -> LoadedConfig:
    """Validate a whole edited document; a failure lists every problem, those of the edited route
    by their path inside it."""
    try:
        return load_data(document, "(admin edit)")
    except ConfigError as exc:
        problems = [relative(p, index) if index is not None else str(p) for p in exc.problems]
        raise Failure(400, "Route validation failed: " + "; ".join(problems), errors=problems) from None


class RoutesApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = asyncio.Lock()

    @property
    def prefix(self) -> str:
        return self.gateway.settings.admin_prefix

    def endpoints(self) -> list[BaseRoute]:
        # One Route per path, dispatching on the method, so a 405 lists every method in `Allow`.
        return [
            Route("/routes", self.collection, methods=["GET", "POST", "PUT"]),
            Route("/routes/validate", self.validate, methods=["POST"]),
            Route("/routes/{path:path}", self.item, methods=["GET", "PUT", "DELETE"]),
        ]

    async def collection(self, request: Request) -> Response:
        handlers = {"POST": self._create, "PUT": self._replace}
        return await _guarded(handlers.get(request.method, self._list), request)

    async def item(self, request: Request) -> Response:
        handlers = {"PUT": self._update, "DELETE": self._delete}
        return await _guarded(handlers.get(request.method, self._get), request)

    # -- reading -------------------------------------------------------------------------------

    async def _list(self, request: Request) -> Response:
        routers = _routers_read(read_document(self.gateway))
        return answer(
            RouteList(
                success=True,
                message=f"Found {len(routers)} routes",
                routes=[redact(route) for route in routers],
                generation=self.gateway.generation,
            )
        )

    async def _get(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        routers = _routers_read(read_document(self.gateway))
        index = select(routers, path, dict(request.query_params))
        return answer(
            RouteAnswer(success=True, message="Route found", route=redact(routers[index]), index=index)
        )

    # -- changing ------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        route = await read_json(request)
        if not isinstance(route, dict):
            raise BadRequest("request body must be a JSON object: the route")
        async with self._lock:
            based_on = self.gateway.generation
            document = running_document(self.gateway)
            routers = routers_of(document)
            routers.append(route)
            index = len(routers) - 1
            check_document(document, index)
            _refuse_clash(
                routers, index, route.get("external_path"), "; update it with PUT, or use other methods"
            )
            loaded = await self._save(document, index, based_on)
        return self._changed(201, "Route created successfully", route, index, loaded)

    async def _update(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        sent = await read_json(request)
        if not isinstance(sent, dict):
            raise BadRequest("request body must be a JSON object: the route")
        if sent.get("external_path") != path:
            raise Failure(
                400,
                "Route external_path must match URL parameter "
                f"(URL names {path}, body has {sent.get('external_path')!r})",
            )
        async with self._lock:
            based_on = self.gateway.generation
            document = running_document(self.gateway)
            routers = routers_of(document)
            index = select(routers, path, dict(request.query_params))
            route = restore(sent, routers[index])
            routers[index] = route
            check_document(document, index)
            _refuse_clash(routers, index, path, "")
            loaded = await self._save(document, index, based_on)
        return self._changed(200, "Route updated successfully", route, index, loaded)

    async def _delete(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        async with self._lock:
            based_on = self.gateway.generation
            document = running_document(self.gateway)
            routers = routers_of(document)
            index = select(routers, path, dict(request.query_params))
            route = routers.pop(index)
            check_document(document, None)
            loaded = await self._save(document, None, based_on)
        return self._changed(200, "Route deleted successfully", route, index, loaded, warn=False)

    async def _replace(self, request: Request) -> Response:
        """``PUT /routes``: the whole route list at once, all or nothing (``kairos apply``).

        Body ``{"routes": [...], "generation"?: N}``: with ``generation`` the change is refused
        (409) unless that generation is still running, so an apply computed from one state never
        lands on another. ``?dry_run=true`` validates and reports without applying. A route sent
        back with ``"***"`` secrets keeps the running ones (matched by path, methods, protocol)."""
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("routes"), list):
            raise BadRequest('request body must be {"routes": [...]}: a JSON object with the route list')
        expected = body.get("generation")
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
            raise BadRequest(f"generation: must be an integer (got {expected!r})")
        dry_run = request.query_params.get("dry_run", "").lower() in ("1", "true", "yes", "on")
        async with self._lock:
            based_on = self.gateway.generation
            if expected is not None and expected != based_on:
                raise Failure(
                    409,
                    f"The config changed since generation {expected}: generation {based_on} is running now; "
                    "read it again and resend",
                )
            document = running_document(self.gateway)
            running = routers_of(document)
            sent = [_restore_route(route, running) for route in body["routes"]]
            document["routers"] = sent
            for index, route in enumerate(sent):
                if not isinstance(route, dict):
                    raise Failure(400, f"Route validation failed: routers[{index}]: must be an object")
                _refuse_clash(sent, index, route.get("external_path"), "")
            loaded = check_document(document, None)
            warnings = [str(warning) for warning in loaded.warnings]
            if dry_run:
                return answer(
                    RoutesReplaced(
                        success=True,
                        message=f"Dry run: {len(sent)} routes would apply on generation {based_on}",
                        dry_run=True,
                        generation=based_on,
                        routes=len(sent),
                        warnings=warnings,
                    )
                )
            await self._save(document, None, based_on)
        return answer(
            RoutesReplaced(
                success=True,
                message=f"Routes replaced ({len(sent)} routes). {applied_note(self.gateway)}",
                dry_run=False,
                generation=self.gateway.generation,
                routes=len(sent),
                warnings=warnings,
            )
        )

    async def _save(self, document: dict[str, Any], index: int | None, based_on: int) -> LoadedConfig:
        try:
            return await self.gateway.change(document, "admin", based_on)
        except StaleConfig as exc:  # a file reload, a SIGHUP or another replica landed first
            raise Failure(409, str(exc)) from None
        except ConfigStoreUnavailable as exc:  # the replicas could not be told: nothing changed
            raise Failure(503, f"The config store cannot be reached, nothing was changed: {exc}") from None
        except ConfigError as exc:  # checked before, but the environment (${VAR}) may have moved
            problems = [relative(p, index) if index is not None else str(p) for p in exc.problems]
            raise Failure(400, "Route validation failed: " + "; ".join(problems), errors=problems) from None
        except OSError as exc:
            raise Failure(
                500,
                f"Failed to save configuration: {exc.strerror or exc} "
                f"({exc.filename or self.gateway.config_file})",
            ) from None

    def _changed(
        self, status: int, what: str, route: Any, index: int, loaded: LoadedConfig, warn: bool = True
    ) -> Response:
        return answer(
            RouteAnswer(
                success=True,
                message=f"{what}. {applied_note(self.gateway)}",
                route=redact(route),
                index=index,
                generation=self.gateway.generation,
                warnings=route_warnings(loaded, index, route, self.prefix) if warn else [],
            ),
            status,
        )

    # -- validate ------------------------------------------------------------------------------

    async def validate(self, request: Request) -> Response:
        return await _guarded(self._validate, request)

    async def _validate(self, request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or "route" not in body:
            return _invalid('body must be {"route": {...}}: a JSON object with the route under "route"')
        route = body["route"]
        if not isinstance(route, dict):
            return _invalid("route: must be an object")
        document = running_document(self.gateway)
        routers = routers_of(document)
        routers.append(route)
        index = len(routers) - 1
        try:
            loaded = check_document(document, index)
        except Failure as failure:
            errors = failure.extra.get("errors", [failure.message])
            return answer(RouteValidation(valid=False, error="; ".join(errors), errors=errors, warnings=[]))
        return answer(RouteValidation(valid=True, warnings=route_warnings(loaded, index, route, self.prefix)))


def _invalid(message: str) -> Response:
    return answer(RouteValidation(valid=False, error=message, errors=[message], warnings=[]))


def _restore_route(sent: Any, running: list[Any]) -> Any:
    """A route of a whole-list PUT with its ``"***"`` secrets put back from the running route that
    has the same path, methods and kind (none: sent as is, so a mask stays a mask and fails)."""
    if not isinstance(sent, dict):
        return sent
    for route in running:
        if (
            isinstance(route, dict)
            and route.get("external_path") == sent.get("external_path")
            and _methods(route) == _methods(sent)
            and _is_websocket(route) == _is_websocket(sent)
        ):
            return restore(sent, route)
    return sent


def applied_note(gateway: Gateway) -> str:
    where = gateway.config_file
    if where is None:
        return (
            f"Applied live (generation {gateway.generation}); in memory only: the config was given "
            "as an object, so there is no file to save it to."
        )
    return f"Applied live (generation {gateway.generation}) and saved to {Path(where)}."


async def _guarded(handler: Any, request: Request) -> Response:
    try:
        response: Response = await handler(request)
    except Failure as failure:
        return failure.response()
    except BadRequest as bad:
        return Failure(bad.status, bad.message, bad.kind).response()
    return response
