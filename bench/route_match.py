"""Route-matching micro-benchmark: does lookup cost stay flat from 10 to 10,000 routes?

The matcher promises cost by path depth, not by route count (a segment trie). This builds both
tables through the real code path (config validation, route compilation, RouteTable) and times
``RouteTable.match`` on the same kinds of paths: static hits, ``{param}`` hits and misses.

Run alone: ``.venv/bin/python bench/route_match.py [--iterations N] [--repeats N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from kairos.config import load_data
from kairos.routing.backend import BackendState
from kairos.routing.matcher import RouteMatch, RouteTable
from kairos.routing.route import compile_route

SIZES = (10, 10_000)
ROUTES_PER_SERVICE = 4
PATHS_PER_KIND = 24
KINDS = ("static", "dynamic", "miss", "mixed")


@dataclass(frozen=True, slots=True)
class TableResult:
    routes: int
    build_seconds: float
    ns_per_match: dict[str, float]  # kind -> median ns per match


def route_configs(count: int) -> list[dict[str, Any]]:
    """``count`` routes shaped like a real API: per service a static health check, a user by id, a
    user's order (two params) and a literal that shadows a param (``/users/me``)."""
    backend = [{"host": "http://127.0.0.1", "port": 9, "weight": 1}]
    shapes = (
        ("/api/v1/service{s}/health", "/health"),
        ("/api/v1/service{s}/users/{{id}}", "/users/{{id}}"),
        ("/api/v1/service{s}/users/{{id}}/orders/{{order_id}}", "/users/{{id}}/orders/{{order_id}}"),
        ("/api/v1/service{s}/users/me", "/me"),
    )
    routes = []
    for index in range(count):
        external, internal = shapes[index % ROUTES_PER_SERVICE]
        service = index // ROUTES_PER_SERVICE
        routes.append(
            {
                "external_path": external.format(s=service),
                "internal_path": internal.format(s=service),
                "methods": ["GET", "POST"],
                "backends": backend,
            }
        )
    return routes


def build_table(count: int) -> tuple[RouteTable, float]:
    """The gateway's own path from a parsed config.json to a RouteTable; returns it and its build time."""
    started = time.perf_counter()
    loaded = load_data({"version": 1, "routers": route_configs(count)}, "(bench)")
    states: dict[str, BackendState] = {}
    table = RouteTable(
        compile_route(index, route, states) for index, route in enumerate(loaded.config.routers)
    )
    return table, time.perf_counter() - started


def sample_paths(count: int, rng: random.Random) -> dict[str, list[str]]:
    """Paths per kind, spread over the whole table so a large table is not only probed at its start."""
    services = max(1, -(-count // ROUTES_PER_SERVICE))
    full = max(1, count // ROUTES_PER_SERVICE)  # services that have all four routes
    picks = [rng.randrange(full) for _ in range(PATHS_PER_KIND)]
    static = [f"/api/v1/service{s}/{rng.choice(('health', 'users/me'))}" for s in picks]
    dynamic = [
        rng.choice(
            (f"/api/v1/service{s}/users/{rng.randrange(10**6)}", f"/api/v1/service{s}/users/u{s}/orders/7")
        )
        for s in picks
    ]
    miss = [
        rng.choice(
            (
                f"/api/v1/service{s}/nothing/here",  # known service, unknown resource
                f"/api/v1/service{services + s}/health",  # unknown service
                f"/api/v1/service{s}/users/42/invoices",  # deeper than any route
                "/static/app.js",  # outside the API
            )
        )
        for s in picks
    ]
    mixed = static + dynamic + miss
    rng.shuffle(mixed)
    return {"static": static, "dynamic": dynamic, "miss": miss, "mixed": mixed}


def check_paths(table: RouteTable, paths: dict[str, list[str]]) -> None:
    """A benchmark of lookups that do not do what their label says would measure the wrong thing."""
    for kind in ("static", "dynamic", "miss"):
        for path in paths[kind]:
            hit = isinstance(table.match("GET", path), RouteMatch)
            if hit != (kind != "miss"):
                raise AssertionError(f"{kind} path {path} {'matched' if hit else 'did not match'}")


def time_matches(table: RouteTable, paths: list[str], iterations: int, repeats: int) -> float:
    """Median over ``repeats`` of ns per ``match`` call, each repeat ``iterations`` calls."""
    workload = (paths * (iterations // len(paths) + 1))[:iterations]
    match = table.match
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for path in workload:
            match("GET", path)
        samples.append((time.perf_counter_ns() - started) / iterations)
    return statistics.median(samples)


def run(iterations: int = 200_000, repeats: int = 5, sizes: tuple[int, ...] = SIZES) -> list[TableResult]:
    results = []
    for size in sizes:
        table, build_seconds = build_table(size)
        paths = sample_paths(size, random.Random(size))
        check_paths(table, paths)
        timings = {kind: time_matches(table, paths[kind], iterations, repeats) for kind in KINDS}
        results.append(TableResult(size, build_seconds, timings))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="match() calls per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="machine-readable output (used by run.py)")
    args = parser.parse_args()
    results = run(args.iterations, args.repeats)
    if args.json:
        print(json.dumps([asdict(result) for result in results]))
        return
    for result in results:
        timings = ", ".join(f"{kind} {ns:.0f} ns" for kind, ns in result.ns_per_match.items())
        print(f"{result.routes:>6} routes (built in {result.build_seconds:.2f}s): {timings}")
    small, large = results[0].ns_per_match["mixed"], results[-1].ns_per_match["mixed"]
    print(
        f"ratio {results[-1].routes}/{results[0].routes} routes (mixed): {large / small:.2f}x (goal <= 1.5x)"
    )


if __name__ == "__main__":
    main()
