"""Build routes and route tables through the real code path: config dict -> load_data -> compile_route."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kairos.config import load_data
from kairos.config.model import RouteConfig
from kairos.routing.backend import BackendState
from kairos.routing.matcher import RouteTable
from kairos.routing.route import Route, compile_route


def router(
    external: str,
    internal: str | None = None,
    methods: Sequence[str] = ("GET",),
    ports: Sequence[int] = (9,),
    weights: Sequence[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    weights = weights or [1] * len(ports)
    return {
        "external_path": external,
        "internal_path": internal or external,
        "methods": list(methods),
        "backends": [
            {"host": "http://127.0.0.1", "port": port, "weight": weight}
            for port, weight in zip(ports, weights, strict=True)
        ],
        **extra,
    }


def route_configs(routers: Iterable[dict[str, Any]]) -> tuple[RouteConfig, ...]:
    return load_data({"version": 1, "routers": list(routers)}).config.routers


def compile_all(configs: Iterable[RouteConfig], states: dict[str, BackendState] | None = None) -> list[Route]:
    states = {} if states is None else states
    return [compile_route(index, config, states) for index, config in enumerate(configs)]


def build_table(routers: Iterable[dict[str, Any]]) -> RouteTable:
    return RouteTable(compile_all(route_configs(routers)))


def single_route(**kwargs: Any) -> Route:
    external = kwargs.pop("external", "/x")
    return compile_all(route_configs([router(external, **kwargs)]))[0]
