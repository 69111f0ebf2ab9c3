"""Every admin endpoint as a ``Call``: what to send and how to read the answer, with no I/O.

The sync and async clients (kairos/client/client.py) differ only in how they send a request, so
each endpoint is described once here and both run the same ``Call``. This is the shape of the
sans-I/O libraries (h11, wsproto): the protocol once, the transports thin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from kairos.api_models import (
    Backends,
    ConfigStatus,
    Explanation,
    HealthStatus,
    LlmAnalytics,
    MetricPoint,
    MetricsSummary,
    MetricWindow,
    PurgeResult,
    ReadyStatus,
    RouteAnswer,
    RouteList,
    RoutesReplaced,
    RouteValidation,
)
from kairos.client.errors import UnexpectedAnswer
from kairos.client.metrics import MetricsSnapshot
from kairos.config.model import RouteConfig

RouteInput = RouteConfig | Mapping[str, Any]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
V = TypeVar("V")

# The admin API's history intervals (GET /metrics/history?interval=...).
INTERVALS = ("one_minute", "five_minutes", "one_hour", "one_day")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP exchange with the gateway. ``admin``: ``path`` is under the admin prefix.
    ``accept``: statuses that are answers, not errors (``/ready`` answers 503 while loading)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    admin: bool = True
    params: Mapping[str, str] | None = None
    json: Any = None
    accept: tuple[int, ...] = (200,)

    @property
    def idempotent(self) -> bool:
        """Only reads are retried: a write is never sent twice."""
        return self.method in ("GET", "HEAD")


@functools.cache
def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    """The parser of one answer model, built once per model (a TypeAdapter costs ~0.1 ms)."""
    return _adapter(TypeAdapter(model), f"a {model.__name__}")


def _adapter(adapter: TypeAdapter[V], what: str) -> Callable[[httpx.Response], V]:
    def parse(response: httpx.Response) -> V:
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            raise UnexpectedAnswer(
                f"{response.request.url.path} answered a body that is not {what}: {exc.errors()[0]['msg']}"
            ) from None

    return parse


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise UnexpectedAnswer(f"{response.request.url.path} answered {type(body).__name__}, not an object")
    return body


def route_model(document: Mapping[str, Any]) -> RouteConfig:
    """A route as the admin API shows it, as the config model. A route whose document keeps a
    ``${VAR}`` where a number belongs cannot validate away from the gateway's environment: it is
    returned as written, unvalidated, rather than refused."""
    try:
        return RouteConfig.model_validate(dict(document))
    except ValidationError:
        return RouteConfig.model_construct(**dict(document))


def route_document(route: RouteInput) -> dict[str, Any]:
    """What the admin API takes for a route: the document, from a model or a mapping. Secrets of
    a model go as their values: a route read from the admin API holds ``"***"`` there, which the
    gateway restores to the running secret (pydantic's own JSON dump would send ``"**********"``,
    which it would store)."""
    if isinstance(route, RouteConfig):
        plain = _revealed(route.model_dump(mode="python", exclude_defaults=True, by_alias=True))
        document: dict[str, Any] = to_jsonable_python(plain)
        document.update(
            external_path=route.external_path, internal_path=route.internal_path, methods=list(route.methods)
        )
        return document
    return dict(route)


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(item) for item in value]
    return value


def route_path(external_path: str) -> str:
    """The admin URL of a route named by its ``external_path`` (leading slash included)."""
    if not external_path.startswith("/"):
        raise ValueError(
            f"a route is named by its external_path, which starts with '/' (got {external_path!r})"
        )
    return "/routes/" + quote(external_path[1:], safe="/")


def selectors(method: str | None, protocol: str | None, index: int | None) -> dict[str, str]:
    """Query parameters that pick one of several routes sharing an external_path."""
    chosen = {"method": method, "protocol": protocol, "index": None if index is None else str(index)}
    return {key: value for key, value in chosen.items() if value is not None}


# -- the endpoints -----------------------------------------------------------------------------


def health() -> Call[HealthStatus]:
    return Call("GET", "/health", _model(HealthStatus), admin=False)


def ready() -> Call[ReadyStatus]:
    return Call("GET", "/ready", _model(ReadyStatus), admin=False, accept=(200, 503))


def metrics(prefix: str | None) -> Call[MetricsSnapshot]:
    """The gateway filters by ``prefix`` (``/metrics?prefix=``); the client filters again, for a
    gateway that ignores the parameter (several workers, an older version)."""
    params = {"prefix": prefix} if prefix else None
    return Call(
        "GET",
        "/metrics",
        lambda response: MetricsSnapshot.parse(response.text, prefix),
        admin=False,
        params=params,
    )


def metrics_summary(top: int) -> Call[MetricsSummary]:
    return Call("GET", "/metrics/summary", _model(MetricsSummary), params={"top": str(top)})


def llm_analytics(
    group_by: str,
    since: datetime | None,
    until: datetime | None,
    consumer: str | None,
    model: str | None,
    limit: int,
) -> Call[LlmAnalytics]:
    params = {"group_by": group_by, "limit": str(limit)}
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            params[name] = value.isoformat()
    for name, text in (("consumer", consumer), ("model", model)):
        if text is not None:
            params[name] = text
    return Call("GET", "/analytics/llm", _model(LlmAnalytics), params=params)


_POINTS = TypeAdapter(list[MetricPoint])
_WINDOWS = TypeAdapter(list[MetricWindow])
_NAMES = TypeAdapter(list[str])


def metric_names() -> Call[list[str]]:
    return Call("GET", "/metrics/list", _adapter(_NAMES, "a list of names"))


def _window(start: datetime | None, end: datetime | None) -> dict[str, str]:
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=1)
    return {"start": _rfc3339(start), "end": _rfc3339(end)}


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def metrics_history(name: str, start: datetime | None, end: datetime | None) -> Call[list[MetricPoint]]:
    return Call(
        "GET",
        "/metrics/history",
        _adapter(_POINTS, "metric points"),
        params={"name": name, **_window(start, end)},
    )


def metrics_windows(
    name: str, interval: str, start: datetime | None, end: datetime | None
) -> Call[list[MetricWindow]]:
    if interval not in INTERVALS:
        raise ValueError(f"interval: must be one of {', '.join(INTERVALS)} (got {interval!r})")
    params = {"name": name, "interval": interval, **_window(start, end)}
    return Call("GET", "/metrics/history", _adapter(_WINDOWS, "metric windows"), params=params)


def _routes(response: httpx.Response) -> list[RouteConfig]:
    return [route_model(document) for document in _model(RouteList)(response).routes]


def routes_list() -> Call[list[RouteConfig]]:
    return Call("GET", "/routes", _routes)


def routes_answers() -> Call[RouteList]:
    return Call("GET", "/routes", _model(RouteList))


def route_get(path: str, method: str | None, protocol: str | None, index: int | None) -> Call[RouteAnswer]:
    return Call("GET", route_path(path), _model(RouteAnswer), params=selectors(method, protocol, index))


def route_create(route: RouteInput) -> Call[RouteAnswer]:
    return Call("POST", "/routes", _model(RouteAnswer), json=route_document(route), accept=(201,))


def route_update(
    route: RouteInput, method: str | None, protocol: str | None, index: int | None
) -> Call[RouteAnswer]:
    document = route_document(route)
    path = document.get("external_path")
    if not isinstance(path, str):
        raise ValueError("the route has no external_path: it names the route to update")
    params = selectors(method, protocol, index)
    return Call("PUT", route_path(path), _model(RouteAnswer), params=params, json=document)


def route_delete(path: str, method: str | None, protocol: str | None, index: int | None) -> Call[RouteAnswer]:
    return Call("DELETE", route_path(path), _model(RouteAnswer), params=selectors(method, protocol, index))


def route_validate(route: RouteInput) -> Call[RouteValidation]:
    return Call("POST", "/routes/validate", _model(RouteValidation), json={"route": route_document(route)})


def routes_replace(
    routes: Sequence[RouteInput], generation: int | None, dry_run: bool
) -> Call[RoutesReplaced]:
    body: dict[str, Any] = {"routes": [route_document(route) for route in routes]}
    if generation is not None:
        body["generation"] = generation
    params = {"dry_run": "true"} if dry_run else None
    return Call("PUT", "/routes", _model(RoutesReplaced), params=params, json=body)


def config_get() -> Call[dict[str, Any]]:
    return Call("GET", "/config", _json_object)


def config_status() -> Call[ConfigStatus]:
    return Call("GET", "/config/status", _model(ConfigStatus))


def config_reload() -> Call[ConfigStatus]:
    return Call("POST", "/config/reload", _model(ConfigStatus))


def explain(method: str, path: str, headers: Mapping[str, str] | None) -> Call[Explanation]:
    params = {"method": method.upper(), "path": path}
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    if "host" in lowered:
        params["host"] = lowered["host"]
    if lowered.get("upgrade", "").lower() == "websocket":
        params["websocket"] = "true"
    return Call("GET", "/explain", _model(Explanation), params=params)


def backends() -> Call[Backends]:
    return Call("GET", "/backends", _model(Backends))


def cache_purge(route: str | None, key_prefix: str | None) -> Call[PurgeResult]:
    body = {key: value for key, value in (("route", route), ("key_prefix", key_prefix)) if value is not None}
    return Call("POST", "/cache/purge", _model(PurgeResult), json=body)
