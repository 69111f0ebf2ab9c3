"""Loading config.json: read, substitute ``${VAR}``, validate everything, collect warnings.

Validation never stops at the first problem: the top level and every route are validated on their
own, then cross-route checks run on what parsed, so one run lists every error in the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kairos.config.model import GatewayConfig, RouteConfig
from kairos.config.problems import ConfigError, Problem, format_path, problems_from_validation_error
from kairos.routing.template import parse_template

MAX_CONFIG_BYTES = 10 * 1024 * 1024
# ${NAME} or ${NAME:-default}; upper-case names only, so lower-case runtime variables such as
# ${client_ip} or ${path.id} (used by transformations) are left alone. $${X} escapes to ${X}.
_ENV_REF = re.compile(r"\$(\$?)\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


@dataclass(slots=True)
class LoadedConfig:
    config: GatewayConfig
    warnings: list[Problem] = field(default_factory=list)
    source: str = "config"


def default_config_text() -> str:
    return resources.files("kairos.config").joinpath("default_config.json").read_text("utf-8")


def load_file(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate a config file; raises ConfigError listing every problem."""
    source = str(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([Problem("(file)", f"too large: {size} bytes (max {MAX_CONFIG_BYTES})")], source)
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError([Problem("(file)", f"cannot read: {exc.strerror or exc}")], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("(file)", f"not UTF-8 text: {exc.reason}")], source) from None
    return load_text(text, source)


def load_text(text: str, source: str = "config") -> LoadedConfig:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [Problem("(file)", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")], source
        ) from None
    return load_data(raw, source)


def load_data(raw: Any, source: str = "config", environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate an already-parsed JSON document (the admin API and tests use this directly)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(root)", "must be a JSON object", raw)], source)
    raw = substitute_env(raw, os.environ if environ is None else environ, errors, ())

    routes_raw = raw.get("routers")
    top_raw = {key: value for key, value in raw.items() if key != "routers"}
    top: GatewayConfig | None = None
    try:
        top = GatewayConfig.model_validate(top_raw)
    except ValidationError as exc:
        errors.extend(problems_from_validation_error(exc))
    if "version" not in raw:
        warnings.append(Problem("version", "missing; kairos-rs requires it (assuming 1)"))

    routes: list[tuple[int, RouteConfig]] = []
    if routes_raw is None:
        errors.append(Problem("routers", "is required (an array of routes; it may be empty)"))
    elif not isinstance(routes_raw, list):
        errors.append(Problem("routers", "must be an array", routes_raw))
    else:
        for index, route_raw in enumerate(routes_raw):
            try:
                route = RouteConfig.model_validate(route_raw)
            except ValidationError as exc:
                errors.extend(problems_from_validation_error(exc, ("routers", index)))
                continue
            errors.extend(check_route(route, ("routers", index)))
            routes.append((index, route))
        if not routes_raw:
            warnings.append(Problem("routers", "is empty: every request will get 404 route_not_found"))

    if top is not None:
        errors.extend(_cross_checks(top, routes))
        warnings.extend(unknown_keys(top, ()))
    for index, route in routes:
        warnings.extend(unknown_keys(route, ("routers", index)))
    warnings.extend(route_overlaps(routes))

    if errors:
        raise ConfigError(errors, source)
    assert top is not None
    config = top.model_copy(update={"routers": tuple(route for _, route in routes)})
    return LoadedConfig(config, warnings, source)


def substitute_env(value: Any, environ: Mapping[str, str], errors: list[Problem], path: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            escaped, name, default = match.groups()
            if escaped:
                return match.group(0)[1:]
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            errors.append(Problem(format_path(path), f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(replace, value)
    if isinstance(value, dict):
        return {key: substitute_env(item, environ, errors, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute_env(item, environ, errors, (*path, index)) for index, item in enumerate(value)]
    return value


_SCHEMES = {
    "http": ("http", "https"),
    "websocket": ("ws", "wss", "http", "https"),
    "ftp": ("ftp", "ftps", "http", "https"),
    "dns": ("", "udp", "tcp", "dns"),
}


def check_route(route: RouteConfig, prefix: tuple[Any, ...]) -> list[Problem]:
    """Rules that need more than one field of a route."""
    problems: list[Problem] = []
    external = set(parse_template(route.external_path).param_names)
    for name in parse_template(route.internal_path).param_names:
        if name not in external:
            problems.append(
                Problem(
                    format_path((*prefix, "internal_path")),
                    f"uses {{{name}}}, which external_path does not define",
                    route.internal_path,
                )
            )
    allowed = _SCHEMES[route.protocol]
    legacy = route.host is not None and "backends" not in route.model_fields_set
    for index, backend in enumerate(route.upstreams):
        where = (*prefix, "host") if legacy else (*prefix, "backends", index, "host")
        if backend.scheme not in allowed:
            wanted = " or ".join(f"{s}://" if s else "a bare IP/hostname" for s in allowed)
            problems.append(
                Problem(format_path(where), f"a {route.protocol} route's backend must use {wanted}", backend.host)
            )
    policy = route.ai_policy
    if policy is not None and policy.fallback_backend_index is not None:
        if policy.fallback_backend_index >= len(route.upstreams):
            problems.append(
                Problem(
                    format_path((*prefix, "ai_policy", "fallback_backend_index")),
                    f"must be less than the number of backends ({len(route.upstreams)})",
                    policy.fallback_backend_index,
                )
            )
    return problems


def _cross_checks(top: GatewayConfig, routes: list[tuple[int, RouteConfig]]) -> list[Problem]:
    problems: list[Problem] = []
    for index, route in routes:
        if not route.auth_required:
            continue
        if route.auth in ("any", "jwt") and top.jwt is None and (route.auth == "jwt" or not top.api_keys):
            problems.append(
                Problem(
                    format_path(("routers", index, "auth_required")),
                    "is true but the config has no `jwt` section"
                    + ("" if route.auth == "jwt" else " and no `api_keys`"),
                )
            )
        if route.auth == "api_key" and not top.api_keys:
            problems.append(Problem(format_path(("routers", index, "auth")), "is 'api_key' but `api_keys` is empty"))
    return problems


def route_overlaps(routes: list[tuple[int, RouteConfig]]) -> list[Problem]:
    """Warn about routes that can never (fully) be reached: same shape and overlapping methods.

    With literal-before-parameter precedence, only a route of the *same shape* (same literals, any
    parameter names) defined earlier can take a request away from a later route.
    """
    warnings: list[Problem] = []
    first_by_shape: dict[tuple[str, ...], list[tuple[int, RouteConfig]]] = {}
    for index, route in routes:
        shape = (route.protocol == "websocket", *parse_template(route.external_path).shape)
        earlier = first_by_shape.setdefault(shape, [])  # type: ignore[arg-type]
        claimed: set[str] = set()
        for earlier_index, earlier_route in earlier:
            overlap = set(route.methods) & set(earlier_route.methods) - claimed
            if not overlap:
                continue
            claimed |= overlap
            what = "duplicates" if earlier_route.external_path == route.external_path else "has the same shape as"
            warnings.append(
                Problem(
                    format_path(("routers", index, "external_path")),
                    f"{what} routers[{earlier_index}] ({earlier_route.external_path}); "
                    f"methods {', '.join(sorted(overlap))} always go to routers[{earlier_index}]",
                    route.external_path,
                )
            )
        if claimed >= set(route.methods):
            warnings.append(
                Problem(format_path(("routers", index)), "is shadowed: no request can ever reach it")
            )
        earlier.append((index, route))
    return warnings


def unknown_keys(model: BaseModel, path: tuple[Any, ...]) -> Iterator[Problem]:
    """Keys the gateway does not know; ``_comment``-style keys (leading underscore) are notes."""
    for key in model.model_extra or {}:
        if not key.startswith("_"):
            yield Problem(format_path((*path, key)), "unknown key, ignored")
    for name in type(model).model_fields:
        yield from _unknown_in(getattr(model, name), (*path, name))


def _unknown_in(value: Any, path: tuple[Any, ...]) -> Iterator[Problem]:
    if isinstance(value, BaseModel):
        yield from unknown_keys(value, path)
    elif isinstance(value, tuple | list):
        for index, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield from unknown_keys(item, (*path, index))


def client_networks(config: GatewayConfig) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies)
