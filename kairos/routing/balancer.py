"""Load-balancing strategies (``load_balancing_strategy``).

Each strategy picks one backend from the candidates it is given; which backends are candidates
(healthy, circuit not open) is decided outside, so strategies stay pure and easy to test. State is
per route and lives as long as the route snapshot.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Protocol

from kairos.routing.backend import Backend


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend: ...


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class SmoothWeighted:
    """nginx's smooth weighted round robin: exact proportions per cycle, interleaved (5,1,1 gives
    a a b a c a a, never a a a a a b c)."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend:
        current = self._current
        total = 0
        best: Backend | None = None
        best_weight = 0
        for backend in candidates:
            weight = current.get(backend.index, 0) + backend.weight
            current[backend.index] = weight
            total += backend.weight
            if best is None or weight > best_weight:
                best, best_weight = backend, weight
        assert best is not None
        current[best.index] = best_weight - total
        return best


class LeastConnections:
    """Fewest in-flight requests (counted by the balancer middleware); ties go round robin among the
    tied backends, so equal backends share load evenly instead of the first one taking everything
    (rotating a start index over *all* backends would give one of two tied backends twice the share
    of the other when a third is busy)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        least = min(backend.state.in_flight for backend in candidates)
        tied = [backend for backend in candidates if backend.state.in_flight == least]
        chosen = tied[self._next % len(tied)]
        self._next += 1
        return chosen


class WeightedRandom:
    __slots__ = ("_random",)

    def __init__(self) -> None:
        self._random = random.Random()

    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        return self._random.choices(candidates, weights=[b.weight for b in candidates])[0]


class ConsistentIpHash:
    """Weighted rendezvous (highest-random-weight) hashing on the client IP.

    Adding or removing one of n backends moves only the clients that now score highest on it
    (~1/n), and every worker process agrees because the hash is deterministic (not Python's
    per-process ``hash``).
    """

    __slots__ = ()

    def pick(self, candidates: Sequence[Backend], client_ip: str) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        best = candidates[0]
        best_score = -math.inf
        for backend in candidates:
            digest = hashlib.blake2b(f"{client_ip}|{backend.key}".encode(), digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # in (0, 1)
            score = -backend.weight / math.log(unit)
            if score > best_score:
                best, best_score = backend, score
        return best


_STRATEGIES: dict[
    str, type[RoundRobin | SmoothWeighted | LeastConnections | WeightedRandom | ConsistentIpHash]
] = {
    "round_robin": RoundRobin,
    "weighted": SmoothWeighted,
    "least_connections": LeastConnections,
    "random": WeightedRandom,
    "ip_hash": ConsistentIpHash,
}


def make_balancer(strategy: str) -> Balancer:
    return _STRATEGIES[strategy]()
