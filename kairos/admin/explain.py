"""``GET /explain`` and ``GET /backends``: what the gateway would do, and how its upstreams are.

``/explain?method=GET&path=/users/42[&host=api.example.com][&websocket=true]`` runs the live
matcher (the same ``RouteTable.match`` the RouteMiddleware calls, on the same snapshot) and
reports, without sending anything anywhere:

- the answer routing would give: the route (index, template, key, protocol, methods), or the
  404 / 405 (with ``Allow``) / 400 reason, or that the admin API itself serves the path;
- why that route: how the path matched (static or by template) and every other route whose
  template also matches the path, with the reason it lost (method, precedence, kind);
- the path parameters and, per backend, the upstream URL the proxy would build (after a
  ``request_transformation.path`` rewrite), with the backend's health, circuit state, outlier
  ejection and in-flight count, and whether the balancer may pick it now;
- the policies that would apply — auth, IP filter, rate limit, body limit, cache, CORS,
  transformations, retry (and whether the method is retried), timeouts, circuit breaker, health
  checks, security headers, AI routing — each saying whether it comes from the route or the
  top level. Values are redacted like everything else the admin API shows.

``host`` takes no part in matching (routes have no host rules); given, it completes the cache key
shown, i.e. the ``key_prefix`` a ``POST /cache/purge`` would take for this URL. Request header and
query rules of transformations are listed, not applied (they may depend on the request).

``/backends`` lists every backend of the running config (by its key ``scheme://host:port``, the
identity health and circuit state are shared by) with the routes using it.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from kairos.admin import ADMIN_SECTIONS, STREAM_PATHS, admin_owns
from kairos.admin.redact import redact
from kairos.admin.responses import answer, error_response
from kairos.api_models import Backends, Explanation
from kairos.cache.policy import url_key
from kairos.config.model import HTTP_METHODS, GatewayConfig
from kairos.gateway import RESERVED_PATHS, Gateway
from kairos.resilience.retry import IDEMPOTENT_METHODS
from kairos.routing.backend import Backend
from kairos.routing.matcher import NoMatch, RouteMatch, RouteTable
from kairos.routing.route import Route, safe_upstream_path

_RAW_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in "?#")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _dump(model: BaseModel | None) -> Any:
    if model is None:
        return None
    return redact(model.model_dump(mode="json", exclude_none=True))


def backend_status(backend: Backend, gateway: Gateway, now: float) -> dict[str, Any]:
    """One backend's live state (shared by every route using it)."""
    state = backend.state
    breaker = state.breaker
    shared = breaker.shared if breaker.shared is not None and breaker.shared.usable() else None
    outlier = state.outlier
    ejected = outlier.ejected(now)
    probe = gateway.health_checker.snapshot().get(backend.key)
    return {
        "key": backend.key,
        "healthy": state.healthy,
        "health_check": _plain(probe),
        "circuit": {
            "state": breaker.state_at(now),
            "consecutive_failures": shared.failures if shared is not None else breaker.failures,
            "times_opened": breaker.opened,
            "retry_after_seconds": round(breaker.retry_after(now), 3),  # 0 unless open (shared or not)
            "blocks_now": breaker.blocks(now),
        },
        "outlier": {
            "ejected": ejected,
            "ejected_for_seconds": round(max(0.0, outlier.ejected_until - now), 3) if ejected else 0.0,
            "consecutive_failures": outlier.consecutive,
            "ejections": outlier.ejections,
        },
        "in_flight": state.in_flight,
        "available": state.available(now),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _source(own: Any, fallback: Any) -> tuple[str, Any]:
    if own is not None:
        return "route", own
    if fallback is not None:
        return "global", fallback
    return "none", None


def _policy(own: BaseModel | None, fallback: BaseModel | None, **extra: Any) -> dict[str, Any]:
    source, config = _source(own, fallback)
    enabled = config is not None and getattr(config, "enabled", True)
    return {"applies": bool(enabled), "source": source, "config": _dump(config), **extra}


def policies(
    route: Route, config: GatewayConfig, method: str, websocket: bool, cache_key: str | None = None
) -> dict[str, Any]:
    """What each concern of the pipeline would do for this route and method (see the docstring).
    ``cache_key``: the key's readable part (``GET host/path?query``) when the host is known."""
    own = route.config
    retry_config = own.retry
    cache_config = own.cache
    cache_applies = (
        cache_config is not None and cache_config.enabled and method in ("GET", "HEAD") and not websocket
    )
    cache_note = None
    if (
        cache_applies
        and own.auth_required
        and cache_config is not None
        and not cache_config.cache_authenticated
    ):
        cache_applies, cache_note = (
            False,
            "the route requires auth and cache_authenticated is false: bypassed",
        )
    retried = retry_config is not None and (method in IDEMPOTENT_METHODS or retry_config.retry_non_idempotent)
    request_rules = own.request_transformation
    response_rules = own.response_transformation
    return {
        "auth": {
            "applies": own.auth_required,
            "accepts": own.auth,
            "required_roles": list(own.required_roles),
            "jwt_configured": config.jwt is not None,
            "api_key_consumers": len(config.api_keys),
            "api_key_header": config.api_key_header,
        },
        "ip_filter": _policy(own.ip_filter, config.ip_filter),
        "rate_limit": _policy(own.rate_limit, config.rate_limit),
        "max_body_size": {
            "source": _source(own.max_body_size, config.max_body_size)[0],
            "bytes": own.max_body_size if own.max_body_size is not None else config.max_body_size,
        },
        "cache": {
            "applies": cache_applies,
            "source": "route" if cache_config is not None else "none",
            "config": _dump(cache_config),
            **({"note": cache_note} if cache_note else {}),
            **(
                {"key": cache_key, "purge_key_prefix": cache_key.removeprefix("GET ")}
                if cache_key is not None and cache_config is not None
                else {}
            ),
        },
        "cors": _policy(own.cors, config.cors),
        "transformations": {
            "request": _dump(request_rules),
            "response": _dump(response_rules),
        },
        "retry": {
            "applies": retried,
            "config": _dump(retry_config),
            **(
                {
                    "note": f"{method} is not idempotent: retried only with retry_non_idempotent "
                    "or an Idempotency-Key header"
                }
                if retry_config is not None and not retried
                else {}
            ),
        },
        "timeouts": {
            "timeout_ms": own.timeout_ms,
            "connect_timeout_ms": own.connect_timeout_ms,
            "per_try_timeout_ms": retry_config.per_try_timeout_ms if retry_config is not None else None,
        },
        "circuit_breaker": _policy(own.circuit_breaker, config.circuit_breaker),
        "health_check": _policy(own.health_check, config.health_check),
        "security_headers": _policy(own.security_headers, config.security_headers),
        "compression": _policy(None, config.compression),
        "load_balancing": {"strategy": own.load_balancing_strategy},
        "ai_routing": _policy(own.ai_policy, None),
    }


def upstream_url(
    route: Route, backend: Backend, params: dict[str, str], query: str, websocket: bool
) -> dict[str, Any]:
    built = route.upstream_path.build(params)
    path, rewritten, note = built, False, None
    rules = route.config.request_transformation
    if rules is not None and rules.path is not None:
        candidate = rules.path.rewrite(built)
        if candidate != built:
            if safe_upstream_path(candidate):
                path, rewritten = candidate, True
            else:
                note = (
                    f"request_transformation.path rewrites it to {candidate!r}, which is refused (502 config)"
                )
    base = backend.ws_base if websocket else backend.http_base
    result: dict[str, Any] = {
        "url": base + path + (f"?{query}" if query else ""),
        "path_rewritten": rewritten,
    }
    if note:
        result["note"] = note
    return result


def _candidates(
    table: RouteTable, chosen: Route | None, method: str, raw_path: str, websocket: bool
) -> list[dict[str, Any]]:
    """Every other route whose template matches the path, and why it did not take the request."""
    found: list[dict[str, Any]] = []
    for route in table.routes:
        if route is chosen:
            continue
        single = RouteTable([route])
        probe = next(iter(route.methods))
        if not isinstance(single.match(probe, raw_path, websocket=route.websocket), RouteMatch):
            continue
        if method not in route.methods:
            reason = f"its methods ({route.allow}) do not include {method}"
        elif chosen is not None and chosen.template.source == route.template.source:
            reason = (
                "same template, earlier in config order"
                if route.index < chosen.index
                else f"same template: routers[{chosen.index}] comes first in config order"
            )
            if route.websocket != chosen.websocket:
                kind = "a WebSocket" if route.websocket else "a plain HTTP"
                reason = f"{kind} route; the request prefers the other kind at the same template"
        elif chosen is not None:
            reason = (
                f"less specific than {chosen.template.source} "
                "(literal segments beat patterns, which beat parameters)"
            )
        else:
            reason = "not chosen"
        found.append({"index": route.index, "external_path": route.name, "key": route.key, "reason": reason})
    return found


def explain(
    gateway: Gateway, method: str, path: str, query: str, host: str | None, websocket: bool
) -> dict[str, Any]:
    prefix = gateway.settings.admin_prefix
    request = {"method": method, "path": path, "query": query, "host": host, "websocket": websocket}
    raw_path = quote(path, safe=_RAW_SAFE) if not path.isascii() or " " in path else path
    if admin_owns(path, prefix):
        return {
            "request": request,
            "matched": False,
            "served_by": "admin",
            "status": None,
            "reason": f"{path} belongs to the admin API ({prefix}/{{{','.join(sorted(ADMIN_SECTIONS))}}} "
            f"and {', '.join(STREAM_PATHS)}): "
            "never proxied, whatever the routes say",
        }
    if path in RESERVED_PATHS:
        return {
            "request": request,
            "matched": False,
            "served_by": "builtin",
            "status": None,
            "reason": f"{path} is a built-in endpoint of the gateway: never proxied",
        }
    table = gateway.table
    config = gateway.config
    result = table.match(method, raw_path, websocket=websocket)
    if isinstance(result, NoMatch):
        if result.bad_path is not None:
            status, kind, reason = 400, "bad_request", f"Bad request path {raw_path}: {result.bad_path}"
        elif result.allow is not None:
            status, kind, reason = (
                405,
                "method_not_allowed",
                f"Method {method} not allowed for path: {raw_path}",
            )
        else:
            status, kind, reason = 404, "route_not_found", f"No route found for path: {raw_path}"
        answer: dict[str, Any] = {
            "request": request,
            "matched": False,
            "served_by": "gateway",
            "status": status,
            "type": kind,
            "reason": reason,
            "candidates": _candidates(table, None, method, raw_path, websocket)
            if result.bad_path is None
            else [],
        }
        if result.allow is not None:
            answer["allow"] = result.allow
        return answer
    route = result.route
    now = time.monotonic()
    how = (
        "static path (exact literal match)"
        if not route.template.param_names and route.template.catch_all is None
        else "template"
    )
    backends = []
    for backend in route.backends:
        backends.append(
            {
                "index": backend.index,
                "weight": backend.weight,
                **upstream_url(route, backend, result.params, query, websocket),
                **backend_status(backend, gateway, now),
            }
        )
    assert config is not None
    return {
        "request": request,
        "matched": True,
        "served_by": "proxy",
        "status": None,
        "route": {
            "index": route.index,
            "external_path": route.config.external_path,
            "internal_path": route.config.internal_path,
            "key": route.key,
            "protocol": route.protocol,
            "methods": sorted(route.config.methods),
            "allow": route.allow,
        },
        "why": f"matched by {how} {route.template.source}; {method} is in its methods"
        + (
            " (HEAD is served wherever GET is)"
            if method == "HEAD" and "HEAD" not in route.config.methods
            else ""
        ),
        "params": result.params,
        "other_matching_routes": _candidates(table, route, method, raw_path, websocket),
        "backends": backends,
        "balancer": route.config.load_balancing_strategy,
        "policies": policies(
            route,
            config,
            method,
            websocket,
            url_key(host.encode("latin-1", "replace"), raw_path, query.encode("latin-1", "replace"))
            if host
            else None,
        ),
        "generation": gateway.generation,
    }


def _flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name)
    if text is None:
        return False
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"query parameter `{name}`: must be true or false (got {text!r})")


class ExplainApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def explain(self, request: Request) -> Response:
        params = request.query_params
        method = params.get("method")
        path = params.get("path")
        if not method:
            return error_response("query parameter `method` is required, e.g. ?method=GET&path=/users/1")
        if method.upper() not in HTTP_METHODS:
            return error_response(
                f"query parameter `method`: must be one of {', '.join(HTTP_METHODS)} (got {method!r})"
            )
        if not path:
            return error_response("query parameter `path` is required, e.g. ?method=GET&path=/users/1")
        if not path.startswith("/"):
            return error_response(f"query parameter `path`: must start with '/' (got {path!r})")
        try:
            websocket = _flag(request, "websocket")
        except ValueError as exc:
            return error_response(str(exc))
        if websocket and method.upper() != "GET":
            return error_response("query parameter `websocket`: a WebSocket upgrade is a GET")
        if self.gateway.config is None:
            return error_response("the gateway has not loaded its configuration yet", 503, "unavailable")
        path, _, query = path.partition("?")
        explained = explain(self.gateway, method.upper(), path, query, params.get("host"), websocket)
        return answer(Explanation.model_validate(explained))

    async def backends(self, request: Request) -> Response:
        now = time.monotonic()
        by_key: dict[str, dict[str, Any]] = {}
        for route in self.gateway.table.routes:
            for backend in route.backends:
                entry = by_key.get(backend.key)
                if entry is None:
                    entry = by_key[backend.key] = {
                        "scheme": backend.scheme,
                        "host": backend.host,
                        "port": backend.port,
                        **backend_status(backend, self.gateway, now),
                        "routes": [],
                    }
                entry["routes"].append(
                    {
                        "index": route.index,
                        "external_path": route.name,
                        "key": route.key,
                        "backend_index": backend.index,
                        "weight": backend.weight,
                        "health_check_path": backend.health_check_path,
                    }
                )
        backends = [by_key[key] for key in sorted(by_key)]
        return answer(
            Backends.model_validate(
                {
                    "success": True,
                    "message": f"Found {len(backends)} backends",
                    "backends": backends,
                    "panic_routes": sorted(self.gateway.panic.active),
                    "generation": self.gateway.generation,
                }
            )
        )
