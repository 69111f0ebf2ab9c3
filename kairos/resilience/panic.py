"""Panic-mode bookkeeping: which routes are in panic now, and how many panic episodes there were.

A route is in panic when none of its backends is available (unhealthy or ejected) and its
``health_check.panic_mode`` (default on) lets the balancer use them all anyway, as Envoy does. An
episode starts with the first such request and ends with the first request that finds an
available backend again; a warning is logged once per episode, not per request. The Gateway owns
one tracker (exported by /metrics as ``kairos_panic_mode_total`` and ``kairos_panic_mode_routes``).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("kairos.balancer")


class PanicTracker:
    __slots__ = ("active", "episodes")

    def __init__(self) -> None:
        self.active: set[str] = set()  # keys of the routes in panic now
        self.episodes = 0

    def enter(self, route_key: str, route_name: str, backends: int) -> None:
        if route_key in self.active:
            return
        self.active.add(route_key)
        self.episodes += 1
        logger.warning(
            "route %s: none of its %d backend(s) is healthy; panic mode sends traffic to all of them",
            route_name,
            backends,
        )

    def leave(self, route_key: str, route_name: str) -> None:
        if route_key in self.active:
            self.active.discard(route_key)
            logger.info("route %s: a healthy backend is back; panic mode over", route_name)
