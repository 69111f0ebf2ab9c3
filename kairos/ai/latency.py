"""Peak-EWMA latency per backend, as Finagle and Linkerd balance: the ``latency_prediction`` strategy.

The balancer keeps no latency per backend, so the AI router keeps its own, fed by the requests of
``latency_prediction`` routes (``Exchange.upstream_seconds`` of the attempt that answered, keyed by
backend identity so it survives reloads). On a sample slower than the current estimate the estimate
jumps to it (the *peak*: one slow answer is believed at once); a faster one is blended in with a
weight that grows with the time since the last sample (``exp(-dt / tau)``), so the estimate adapts
in ~``tau`` seconds whatever the request rate. An attempt that failed (connect error, timeout) counts
as a sample of ``FAILURE_PENALTY`` seconds.

The predicted cost of a backend is its estimate times (its in-flight requests + 1): a fast backend
that is already busy loses to an idle one that is almost as fast. The estimate also decays while a
backend gets no traffic, so a backend that was slow once is tried again later instead of never. A
backend without a sample is tried first, one request at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from kairos.routing.backend import Backend

TAU = 10.0
FAILURE_PENALTY = 5.0
_UNSAMPLED_BUSY = 1e9  # an unsampled backend with a request in flight waits for that sample


class PeakEwma:
    __slots__ = ("_estimates",)

    def __init__(self) -> None:
        self._estimates: dict[str, tuple[float, float]] = {}  # key -> (seconds, when)

    def observe(self, key: str, seconds: float, now: float) -> None:
        previous = self._estimates.get(key)
        if previous is None or seconds >= previous[0]:
            self._estimates[key] = (seconds, now)
            return
        estimate, stamp = previous
        weight = math.exp(-max(0.0, now - stamp) / TAU)
        self._estimates[key] = (estimate * weight + seconds * (1.0 - weight), now)

    def estimate(self, key: str, now: float) -> float | None:
        entry = self._estimates.get(key)
        if entry is None:
            return None
        seconds, stamp = entry
        return seconds * math.exp(-max(0.0, now - stamp) / (TAU * 3))

    def cost(self, backend: Backend, now: float) -> float:
        estimate = self.estimate(backend.key, now)
        in_flight = backend.state.in_flight
        if estimate is None:
            return _UNSAMPLED_BUSY if in_flight else 0.0
        return estimate * (in_flight + 1)

    def pick(self, backends: Sequence[Backend], now: float) -> int:
        best, best_cost = 0, math.inf
        for position, backend in enumerate(backends):
            cost = self.cost(backend, now)
            if cost < best_cost:
                best, best_cost = position, cost
        return best

    def keep_only(self, keys: Iterable[str]) -> None:
        wanted = set(keys)
        for key in [key for key in self._estimates if key not in wanted]:
            del self._estimates[key]

    def snapshot(self, now: float) -> dict[str, float]:
        return {key: value for key in self._estimates if (value := self.estimate(key, now)) is not None}
