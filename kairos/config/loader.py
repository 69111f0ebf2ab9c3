"""Loading config.json: read, substitute ``${VAR}``, validate everything, collect warnings.

Validation never stops at the first problem: the top level and every route are validated on their
own, then cross-route checks run on what parsed, so one run lists every error in the file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError

from kairos.config.ai import PROVIDER_STRATEGIES, AiConfig
from kairos.config.llm import reuse_ai_providers
from kairos.config.model import NO_BACKENDS, PROTOCOL_SCHEMES, GatewayConfig, RouteConfig
from kairos.config.path_template import parse_template
from kairos.config.problems import (
    ConfigError,
    Problem,
    format_path,
    is_union_tag,
    problems_from_validation_error,
)
from kairos.config.transform import check_transformations

MAX_CONFIG_BYTES = 10 * 1024 * 1024
# ${NAME} or ${NAME:-default}; upper-case names only, so lower-case runtime variables such as
# ${client_ip} or ${path.id} (used by transformations) are left alone. $${X} escapes to ${X}.
# ${env.NAME} (any case, the transformations' spelling) is the same reference; $${env.X} is left
# as written for the transformation templates, which read it as the literal text ${env.X}.
_ENV_REF = re.compile(r"\$(\$?)\{(env\.[A-Za-z_][A-Za-z0-9_]*|[A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


@dataclass(slots=True)
class LoadedConfig:
    config: GatewayConfig
    warnings: list[Problem] = field(default_factory=list)
    source: str = "config"
    # The parsed JSON as written, before ${VAR} substitution: what the admin API edits and writes
    # back (so unknown keys and ${SECRET} references survive a rewrite). None for an object input.
    document: Any = None
    # sha256 of the file's bytes: a reload of an unchanged file (say, the watcher seeing the admin
    # API's own write) is skipped.
    digest: str = ""


def default_config_text() -> str:
    return resources.files("kairos.config").joinpath("default_config.json").read_text("utf-8")


def load_file(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate a config file; raises ConfigError listing every problem."""
    source = str(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [Problem("(file)", f"too large: {size} bytes (max {MAX_CONFIG_BYTES})")], source
            )
        data = Path(path).read_bytes()
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) is not an error
    except OSError as exc:
        raise ConfigError([Problem("(file)", f"cannot read: {exc.strerror or exc}")], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("(file)", f"not UTF-8 text: {exc.reason}")], source) from None
    loaded = load_text(text, source)
    loaded.digest = hashlib.sha256(data).hexdigest()
    return loaded


def load_text(text: str, source: str = "config") -> LoadedConfig:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [Problem("(file)", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")], source
        ) from None
    except RecursionError:
        raise ConfigError([Problem("(file)", "invalid JSON: nested too deeply")], source) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError([Problem("(file)", f"invalid JSON: {exc}")], source) from None
    return load_data(raw, source)


MAX_DEPTH = 64  # a config is a few levels deep; 64 leaves room and keeps every walk far from recursion limits


def document_problems(raw: Any) -> list[Problem]:
    """What no config can hold, found before anything walks the document recursively: nesting
    deeper than ``MAX_DEPTH`` (a recursion bomb for every walker after this one) and strings or keys
    with unpaired surrogates (``"\\ud800"`` escapes: valid JSON, but not text, so nothing could
    print, encode or match them). Iterative, so it is safe on any document."""
    problems: list[Problem] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(raw, ())]
    while stack and len(problems) < 20:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            problems.append(
                Problem(format_path(path[:MAX_DEPTH]), f"nested more than {MAX_DEPTH} levels deep")
            )
            continue
        if isinstance(value, str):
            if not _is_text(value):
                problems.append(
                    Problem(format_path(path), "contains an unpaired surrogate escape (\\ud800-\\udfff)")
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _is_text(key):
                    problems.append(Problem(format_path(path), "has a key with an unpaired surrogate escape"))
                    continue
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
    return problems


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_data(raw: Any, source: str = "config", environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate an already-parsed JSON document (the admin API and tests use this directly)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(root)", "must be a JSON object", raw)], source)
    unusable = document_problems(raw)
    if unusable:
        raise ConfigError(unusable, source)
    unset_env: list[Problem] = []
    document = raw
    raw = substitute_env(raw, os.environ if environ is None else environ, unset_env, ())
    unresolved: list[tuple[str, str]] = []
    raw = reuse_ai_providers(raw, unresolved)  # LLM targets that name a provider of the `ai` block
    errors.extend(Problem(path, message) for path, message in unresolved)

    routes_raw = raw.get("routers")
    top_raw = {key: value for key, value in raw.items() if key != "routers"}
    top: GatewayConfig | None = None
    # What parsed of an invalid section (its bad values pruned): used only for the checks that
    # need a model (unknown keys, cross-field and cross-route rules), never returned.
    salvaged_top: GatewayConfig | None = None
    try:
        top = GatewayConfig.model_validate(top_raw)
    except ValidationError as exc:
        errors.extend(_where_written(problems_from_validation_error(exc), raw))
        top_salvage = salvage(GatewayConfig, top_raw, exc, ())
        salvaged_top = top_salvage.model
        errors.extend(_where_written(top_salvage.problems, raw))
    if "jwt_secret" in raw and raw.get("jwt") is not None:
        warnings.append(Problem("jwt_secret", "ignored: the `jwt` section is used instead"))
    if "version" not in raw:
        warnings.append(Problem("version", "missing; kairos-rs requires it (assuming 1)"))

    routes: list[tuple[int, RouteConfig]] = []
    checked: list[tuple[int, RouteConfig]] = []  # the valid routes and what parsed of invalid ones
    pruned: list[str] = []  # where invalid values were cut out: no cross-route finding may be about them
    if routes_raw is None:
        errors.append(Problem("routers", "is required (an array of routes; it may be empty)"))
    elif not isinstance(routes_raw, list):
        errors.append(Problem("routers", "must be an array", routes_raw))
    else:
        for index, route_raw in enumerate(routes_raw):
            salvaged: Salvaged[RouteConfig] | None = None
            try:
                route = RouteConfig.model_validate(route_raw)
            except ValidationError as exc:
                found = problems_from_validation_error(exc, ("routers", index))
                here = format_path(("routers", index))
                if _lacks_backends(route_raw) and not any(problem.path == here for problem in found):
                    # pydantic skips the whole-route rule when a field failed; report it anyway.
                    found.append(Problem(here, NO_BACKENDS))
                errors.extend(found)
                salvaged = salvage(RouteConfig, route_raw, exc, ("routers", index), _ROUTE_STAND_INS)
                errors.extend(salvaged.problems)
                if salvaged.model is None:
                    continue
            checking = salvaged.model if salvaged is not None and salvaged.model is not None else route
            found = check_route(checking, ("routers", index))
            found_too, noticed = check_transformations(
                checking.request_transformation,
                checking.response_transformation,
                parse_template(checking.external_path).param_names,
                ("routers", index),
            )
            found += found_too
            errors.extend(salvaged.unaffected(found) if salvaged is not None else found)
            warnings.extend(noticed)
            checked.append((index, checking))
            if salvaged is None:
                routes.append((index, route))
            else:
                pruned.extend(salvaged.pruned)
        if not routes_raw:
            warnings.append(Problem("routers", "is empty: every request will get 404 route_not_found"))

    warnings.extend(unknown_keys(GatewayConfig, top_raw, ()))
    top_seen = top or salvaged_top
    if top_seen is not None and top_seen.compression is not None:
        for name in top_seen.compression.unavailable_algorithms():
            warnings.append(Problem("compression.algorithms", f"{name}: its package is not installed"))
    # Run even when the top level failed (say `version` is wrong): what matters is whether the file
    # has the sections at all.
    has_jwt = top.jwt is not None if top is not None else bool(raw.get("jwt") or raw.get("jwt_secret"))
    has_api_keys = bool(top.api_keys if top is not None else raw.get("api_keys"))
    errors.extend(_outside(_cross_checks(has_jwt, has_api_keys, checked), pruned))
    ai_errors, ai_warnings = check_ai_routes(
        top_seen.ai if top_seen is not None else None, bool(raw.get("ai")), checked
    )
    errors.extend(_outside(ai_errors, pruned))
    warnings.extend(_outside(ai_warnings, pruned))
    if isinstance(routes_raw, list):
        for index, route_raw in enumerate(routes_raw):
            warnings.extend(unknown_keys(RouteConfig, route_raw, ("routers", index)))
    warnings.extend(_outside(route_overlaps(checked), pruned))

    # A value whose ${VAR} is unset is reported once; what the empty string then failed as (not a
    # path, not a URL) would only be noise.
    unset = {problem.path for problem in unset_env}
    errors = unset_env + [problem for problem in errors if problem.path not in unset]
    if errors:
        raise ConfigError(errors, source, warnings)
    assert top is not None
    config = top.model_copy(update={"routers": tuple(route for _, route in routes)})
    return LoadedConfig(config, warnings, source, document)


Model = TypeVar("Model", bound=BaseModel)
_SALVAGE_ROUNDS = 6
# What stands in for a route section that had to be cut out whole, so the rest of the route can
# still be checked (a route cannot be built without a backend). Nothing is reported about it.
_ROUTE_STAND_INS: dict[str, Any] = {"backends": [{"host": "http://salvaged.invalid", "port": 80}]}


@dataclass(slots=True)
class Salvaged(Generic[Model]):
    model: Model | None
    problems: list[Problem]  # found by a later round, not caused by the pruning
    pruned: list[str]  # the formatted paths cut out

    def unaffected(self, problems: list[Problem]) -> list[Problem]:
        return _outside(problems, self.pruned)


def _outside(problems: list[Problem], pruned: list[str]) -> list[Problem]:
    """The problems that are not about a value that was cut out (those would be artifacts)."""
    if not pruned:
        return problems
    return [
        problem
        for problem in problems
        if not any(problem.path == cut or problem.path.startswith((cut + ".", cut + "[")) for cut in pruned)
    ]


def salvage(
    model: type[Model],
    raw: Any,
    error: ValidationError,
    prefix: tuple[Any, ...],
    stand_ins: dict[str, Any] | None = None,
) -> Salvaged[Model]:
    """What parsed of an invalid section, so the checks that need a model still run in this pass.

    pydantic stops a model at its first failing field: the section's cross-field rules and the
    rules across routes would otherwise wait for the next run. The values pydantic refused are
    pruned (a required key that cannot be pruned takes its enclosing value with it; a top-level key
    in ``stand_ins`` is then replaced by a neutral stand-in) and the rest validated again, a few
    rounds at most. Errors a later round finds that pruning did not cause are returned too.
    """
    data = copy.deepcopy(raw)
    cut_out: list[tuple[Any, ...]] = []
    later: list[Problem] = []
    for _ in range(_SALVAGE_ROUNDS):
        items = error.errors(include_url=False)
        if cut_out:
            fresh = [
                item
                for item in items
                if item["type"] != "missing" and not any(_related(_plain(item["loc"]), c) for c in cut_out)
            ]
            if fresh:
                later.extend(problems_from_validation_error(_only(error, fresh, model), prefix))
        cuts = {_prune_point(data, _plain(item["loc"])) for item in items}
        ordered = sorted((cut for cut in cuts if cut), key=lambda cut: (len(cut), str(cut)), reverse=True)
        if not ordered or not isinstance(data, dict):
            break
        for cut in ordered:
            _prune(data, cut)
        cut_out.extend(ordered)
        for key, stand_in in (stand_ins or {}).items():
            if key not in data and any(cut[0] == key for cut in cut_out):
                data[key] = copy.deepcopy(stand_in)
        try:
            built = model.model_validate(data)
        except ValidationError as exc:
            error = exc
            continue
        return Salvaged(built, later, _formatted(prefix, cut_out))
    return Salvaged(None, later, _formatted(prefix, cut_out))


def _formatted(prefix: tuple[Any, ...], cuts: list[tuple[Any, ...]]) -> list[str]:
    return [format_path((*prefix, *cut)) for cut in cuts]


def _plain(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic location without the union-member and validator tags it adds between keys."""
    return tuple(part for part in loc if not is_union_tag(part))


def _related(loc: tuple[Any, ...], cut: tuple[Any, ...]) -> bool:
    shorter = min(len(loc), len(cut))
    return loc[:shorter] == cut[:shorter]


def _prune_point(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The deepest location along ``loc`` that exists in ``data`` (a missing key's parent)."""
    node = data
    reached: list[Any] = []
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            reached.append(part)
            node = node[part]
        else:
            break
    return tuple(reached)


def _prune(data: Any, cut: tuple[Any, ...]) -> None:
    node = data
    for part in cut[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return  # already gone with an enclosing cut
    with contextlib.suppress(KeyError, IndexError, TypeError):
        del node[cut[-1]]


def _only(error: ValidationError, items: list[Any], model: type[BaseModel]) -> ValidationError:
    """A ValidationError holding only ``items`` (rebuilt so the usual formatting applies)."""
    line_errors = [
        {"type": item["type"], "loc": item["loc"], "input": item.get("input"), "ctx": item.get("ctx", {})}
        for item in items
    ]
    return ValidationError.from_exception_data(model.__name__, line_errors)  # type: ignore[arg-type]


def _lacks_backends(route_raw: Any) -> bool:
    return isinstance(route_raw, dict) and route_raw.get("backends") is None and route_raw.get("host") is None


def _where_written(problems: list[Problem], raw: dict[str, Any]) -> list[Problem]:
    """Errors about the top-level ``jwt_secret`` alias name the key the file has, not ``jwt.secret``."""
    if "jwt_secret" not in raw or raw.get("jwt") is not None:
        return problems
    return [Problem("jwt_secret", p.message) if p.path == "jwt.secret" else p for p in problems]


def substitute_env(
    value: Any, environ: Mapping[str, str], errors: list[Problem], path: tuple[Any, ...]
) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            escaped, name, default = match.groups()
            if escaped:
                return match.group(0) if name.startswith("env.") else match.group(0)[1:]
            name = name.removeprefix("env.")
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            errors.append(Problem(format_path(path), f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(replace, value)
    if isinstance(value, dict):
        # `_comment`-style keys are notes for people: never substituted (nor reported).
        return {
            key: item if str(key).startswith("_") else substitute_env(item, environ, errors, (*path, key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(item, environ, errors, (*path, index)) for index, item in enumerate(value)]
    return value


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
    allowed = PROTOCOL_SCHEMES[route.protocol]
    wanted = " or ".join(f"{s}://" if s else "a bare IP/hostname" for s in allowed)
    legacy = route.host is not None and "backends" not in route.model_fields_set
    for index, backend in enumerate(route.upstreams):
        where = (*prefix, "host") if legacy else (*prefix, "backends", index, "host")
        if backend.scheme not in allowed:
            problems.append(
                Problem(
                    format_path(where), f"must use {wanted} for protocol {route.protocol!r}", backend.host
                )
            )
    if route.protocol == "llm" and route.llm is None:
        problems.append(Problem(format_path((*prefix, "llm")), "is required on an `llm` route (its models)"))
    for section in ("dns", "llm"):  # a protocol's own section on another protocol's route
        if getattr(route, section) is not None and route.protocol != section:
            message = f"applies to `{section}` routes only (this one is {route.protocol!r})"
            problems.append(Problem(format_path((*prefix, section)), message))
    fallback = route.ai_policy.fallback_backend_index if route.ai_policy is not None else None
    if fallback is not None and fallback >= len(route.upstreams):
        problems.append(
            Problem(
                format_path((*prefix, "ai_policy", "fallback_backend_index")),
                f"must be less than the number of backends ({len(route.upstreams)})",
                fallback,
            )
        )
    return problems


def _cross_checks(has_jwt: bool, has_api_keys: bool, routes: list[tuple[int, RouteConfig]]) -> list[Problem]:
    problems: list[Problem] = []
    for index, route in routes:
        if not route.auth_required:
            continue
        if route.auth in ("any", "jwt") and not has_jwt and (route.auth == "jwt" or not has_api_keys):
            problems.append(
                Problem(
                    format_path(("routers", index, "auth_required")),
                    "is true but the config has no `jwt` section"
                    + ("" if route.auth == "jwt" else " and no `api_keys`"),
                )
            )
        if route.auth == "api_key" and not has_api_keys:
            problems.append(
                Problem(format_path(("routers", index, "auth")), "is 'api_key' but `api_keys` is empty")
            )
    return problems


def check_ai_routes(
    ai: AiConfig | None, ai_given: bool, routes: list[tuple[int, RouteConfig]]
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) across ``ai`` and the routes' ``ai_policy``.

    A strategy that calls a provider without an ``ai`` section is a warning, not an error: kairos-rs
    accepts such files (and silently routes normally); Kairos routes normally too, but says so.
    ``semantic`` (a Kairos strategy) needs something to compare requests with on every backend."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for index, route in routes:
        policy = route.ai_policy
        if policy is None or not policy.enabled:
            continue
        kind = policy.strategy.kind
        if kind in PROVIDER_STRATEGIES and ai is None and not ai_given:
            warnings.append(
                Problem(
                    format_path(("routers", index, "ai_policy", "strategy")),
                    f"{kind!r} calls an AI provider but the config has no top-level `ai` section: "
                    "the route is balanced without AI routing",
                )
            )
        if kind == "semantic":
            for position, backend in enumerate(route.upstreams):
                if not backend.description and not backend.examples:
                    errors.append(
                        Problem(
                            format_path(("routers", index, "backends", position)),
                            "needs a `description` or `examples` for the 'semantic' AI strategy",
                        )
                    )
    return errors, warnings


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
            what = (
                "duplicates"
                if earlier_route.external_path == route.external_path
                else "has the same shape as"
            )
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


def unknown_keys(model: type[BaseModel], data: Any, path: tuple[Any, ...]) -> Iterator[Problem]:
    """Keys of the document ``model`` does not know; ``_comment``-style keys (leading underscore)
    are notes. Walks the document as written against the schema, so a section that failed
    validation still has its typos reported in the same run (``wieght`` beside a bad ``port``).

    The model's own ``before`` validators run first: they are where the aliases that rename keys
    live (README-style rate limits, the top-level ``jwt_secret``), so the walk reads the same names
    the model does, from one place."""
    for decorator in model.__pydantic_decorators__.model_validators.values():
        if decorator.info.mode == "before":
            try:
                data = decorator.func(data)
            except Exception:  # a shape the validator refuses is reported by validation itself
                return
    if not isinstance(data, dict):
        return
    fields = _input_names(model)
    for key, value in data.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        annotation = fields.get(key, _UNKNOWN)
        if annotation is _UNKNOWN:
            yield Problem(format_path((*path, key)), "unknown key, ignored")
            continue
        yield from _unknown_in(annotation, value, (*path, key))


_UNKNOWN = object()


def _input_names(model: type[BaseModel]) -> dict[str, Any]:
    """Every key a model reads (field names and their aliases) -> the field's annotation."""
    names: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        names[name] = info.annotation
        if info.alias:
            names[info.alias] = info.annotation
        alias = info.validation_alias
        if isinstance(alias, str):
            names[alias] = info.annotation
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice] = info.annotation
    return names


def _unknown_in(annotation: Any, value: Any, path: tuple[Any, ...]) -> Iterator[Problem]:
    """Descend into ``value`` where the schema says it holds models (directly, in an array, or as
    one member of a union: the member whose keys fit the value best)."""
    models = _models_in(annotation)
    if not models:
        return
    if isinstance(value, dict):
        mapped = _mapped_values(annotation)
        if mapped is not None:  # `dict[str, Model]`: the keys are names the user chose, not fields
            model = mapped if isinstance(mapped, type) and issubclass(mapped, BaseModel) else None
            for key, item in value.items():
                if not isinstance(key, str) or key.startswith("_"):
                    continue
                if model is not None:  # its before-validators see the value whole (a list shorthand)
                    yield from unknown_keys(model, item, (*path, key))
                else:
                    yield from _unknown_in(mapped, item, (*path, key))
            return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unknown_in(annotation, item, (*path, index))
        return
    if isinstance(value, dict):
        keys = set(value)
        best = max(models, key=lambda model: len(keys & set(_input_names(model))))
        yield from unknown_keys(best, value, path)
    elif isinstance(value, str | bool):  # shorthands a before-validator expands (`true`, a name)
        yield from unknown_keys(models[0], value, path)


def _mapped_values(annotation: Any) -> Any:
    """The value annotation when ``annotation`` is a mapping (``dict[str, X]``, ``Mapping[str, X]``,
    also inside ``Annotated`` or a union with ``None``), else None. A union that also holds a model
    (``dict[str, X] | Model``) is the model's: a dict there is more likely the model's fields."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _mapped_values(get_args(annotation)[0])
    if origin is dict or origin is Mapping or origin is MutableMapping:
        arguments = get_args(annotation)
        return arguments[1] if len(arguments) == 2 else Any
    if origin is Union or origin is UnionType:
        members = [member for member in get_args(annotation) if member is not type(None)]
        if any(isinstance(member, type) and issubclass(member, BaseModel) for member in members):
            return None
        for member in members:
            found = _mapped_values(member)
            if found is not None:
                return found
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in get_args(annotation):
        for model in _models_in(argument):
            if model not in found:
                found.append(model)
    return found


def client_networks(config: GatewayConfig) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies)
