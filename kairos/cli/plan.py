"""``kairos diff`` and ``kairos apply`` without I/O: compare a config file with the live config,
route by route, and build the route list an apply sends.

A route's identity is what the gateway itself uses to tell routes apart: its ``external_path``,
its methods and whether it is a WebSocket route (two routes may share a path with different
methods). Secrets are not compared: the gateway shows every secret as ``"***"`` and never sends
the value back, so a live ``"***"`` (or a URL whose credentials are masked) equals whatever the
file has there. A rotated secret alone is therefore not a difference; ``kairos reload`` (or a
route update) carries it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MASK = "***"


def route_key(route: Mapping[str, Any]) -> str:
    """``GET,POST /users/{id}`` or ``GET /chat (websocket)``: a route's identity, readable."""
    methods = route.get("methods")
    names = sorted({str(m).upper() for m in methods}) if isinstance(methods, list) else []
    protocol = str(route.get("protocol") or "http").lower()
    kind = f" ({protocol})" if protocol != "http" else ""
    return f"{','.join(names) or '?'} {route.get('external_path')}{kind}"


def keyed(routes: Sequence[Any], where: str) -> dict[str, dict[str, Any]]:
    """Routes by identity. Raises ValueError naming both positions when two routes share one."""
    found: dict[str, dict[str, Any]] = {}
    positions: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            raise ValueError(f"{where}: routers[{index}] is not an object")
        key = route_key(route)
        if key in found:
            raise ValueError(
                f"{where}: routers[{positions[key]}] and routers[{index}] are the same route ({key})"
            )
        found[key] = route
        positions[key] = index
    return found


@dataclass(frozen=True, slots=True)
class Change:
    """One differing key inside a route (or the top-level settings), by its dotted path."""

    path: str
    live: Any
    file: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "live": self.live, "file": self.file}


@dataclass(slots=True)
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[Change]] = field(default_factory=dict)
    settings: list[Change] = field(default_factory=list)  # top-level keys other than routers

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.settings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "different": not self.empty,
            "routes": {
                "added": self.added,
                "removed": self.removed,
                "changed": {key: [c.as_dict() for c in changes] for key, changes in self.changed.items()},
            },
            "settings": [c.as_dict() for c in self.settings],
        }


def compare(live: Any, file: Any, path: str = "") -> Iterator[Change]:
    """Every dotted key path where ``file`` differs from ``live`` (masked live secrets excepted)."""
    if _masked(live):
        return
    if isinstance(live, dict) and isinstance(file, dict):
        for key in sorted(set(live) | set(file), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in file:
                yield Change(where, live[key], None)
            elif key not in live:
                yield Change(where, None, file[key])
            else:
                yield from compare(live[key], file[key], where)
        return
    if isinstance(live, list) and isinstance(file, list) and len(live) == len(file):
        for index, (old, new) in enumerate(zip(live, file, strict=True)):
            yield from compare(old, new, f"{path}[{index}]")
        return
    if live != file:
        yield Change(path or "(value)", live, file)


def _masked(value: Any) -> bool:
    return isinstance(value, str) and MASK in value


def diff_documents(live: Mapping[str, Any], file: Mapping[str, Any]) -> Diff:
    """The file against the live config: routes added, removed and changed, and settings."""
    live_routes = keyed(_routers(live, "the live config"), "the live config")
    file_routes = keyed(_routers(file, "the file"), "the file")
    result = Diff()
    result.added = [key for key in file_routes if key not in live_routes]
    result.removed = [key for key in live_routes if key not in file_routes]
    for key, route in file_routes.items():
        if key in live_routes:
            changes = list(compare(live_routes[key], route))
            if changes:
                result.changed[key] = changes
    live_settings = {k: v for k, v in live.items() if k != "routers"}
    file_settings = {k: v for k, v in file.items() if k != "routers"}
    result.settings = list(compare(live_settings, file_settings))
    return result


def _routers(document: Mapping[str, Any], where: str) -> list[Any]:
    routers = document.get("routers", [])
    if not isinstance(routers, list):
        raise ValueError(f"{where}: routers must be a list")
    return routers


@dataclass(slots=True)
class ApplyPlan:
    """The route list to send, and what it does to the live one."""

    routes: list[dict[str, Any]]
    created: list[str]
    updated: list[str]
    pruned: list[str]
    kept: list[str]  # live routes missing from the file, left alone (no --prune)

    @property
    def changes(self) -> bool:
        return bool(self.created or self.updated or self.pruned)

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "pruned": self.pruned, "kept": self.kept}


def plan_apply(live_routes: Sequence[Any], file: Mapping[str, Any], prune: bool) -> ApplyPlan:
    """Live routes in their order, each replaced by the file's version when the file has it (and
    differs), dropped with ``prune`` when it does not; then the file's new routes in file order."""
    file_routes = keyed(_routers(file, "the file"), "the file")
    live_keyed = keyed(live_routes, "the live config")
    plan = ApplyPlan([], [], [], [], [])
    for key, route in live_keyed.items():
        wanted = file_routes.get(key)
        if wanted is None:
            if prune:
                plan.pruned.append(key)
            else:
                plan.kept.append(key)
                plan.routes.append(route)
        elif any(True for _ in compare(route, wanted)):
            plan.updated.append(key)
            plan.routes.append(wanted)
        else:
            plan.routes.append(route)  # unchanged: sent as shown, the gateway keeps its secrets
    for key, route in file_routes.items():
        if key not in live_keyed:
            plan.created.append(key)
            plan.routes.append(route)
    return plan
