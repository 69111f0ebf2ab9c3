"""Passive outlier ejection, pure logic (Envoy's consecutive-failure outlier detection).

One ``OutlierDetector`` lives in each ``BackendState``. Live traffic feeds it: a success resets the
count of consecutive failures; ``consecutive_failures`` in a row eject the backend for
``base_ejection_ms`` x the number of times it has been ejected, capped at ``max_ejection_ms``. The
multiplier decays by one for every ``base_ejection_ms`` the backend then spends in service, so a
backend that failed once a week ago is not punished like one that flaps.

An ejection is refused when it would take the share of ejected backends of the route that saw the
failure above ``max_ejection_percent`` (and never the last one: a route always keeps a backend).
The failure count then stays at the threshold, so the next failure tries again. Outcomes seen while
a backend is ejected (panic-mode traffic) change nothing: it returns when its time is up.

It applies only where a ``health_check`` block (route or top level) is configured, with
``passive.enabled`` (the default).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kairos.config.policies import PassiveHealthConfig


class OutlierDetector:
    __slots__ = ("consecutive", "ejected_until", "ejections", "times_ejected")

    def __init__(self) -> None:
        self.consecutive = 0
        self.times_ejected = 0  # the ejection-time multiplier (decays while in service)
        self.ejected_until = 0.0
        self.ejections = 0  # ejections ever (a counter for /metrics)

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def success(self) -> None:
        self.consecutive = 0

    def failure(self, config: PassiveHealthConfig, now: float, peers: Iterable[OutlierDetector]) -> bool:
        """Count a failure; returns True when it ejected the backend. ``peers`` are the detectors
        of the route's backends (this one included), read only when an ejection is due."""
        if now < self.ejected_until:
            return False
        self.consecutive += 1
        if self.consecutive < config.consecutive_failures:
            return False
        if not may_eject(config, peers, now):
            self.consecutive = config.consecutive_failures
            return False
        self.eject(config, now)
        return True

    def eject(self, config: PassiveHealthConfig, now: float) -> float:
        """Take the backend out of service; returns the ejection time in seconds."""
        base = config.base_ejection_ms / 1000
        if self.times_ejected and self.ejected_until:
            in_service = max(0.0, now - self.ejected_until)
            self.times_ejected = max(0, self.times_ejected - int(in_service / base))
        self.times_ejected += 1
        duration = min(base * self.times_ejected, config.max_ejection_ms / 1000)
        self.ejected_until = now + duration
        self.consecutive = 0
        self.ejections += 1
        return duration


def may_eject(config: PassiveHealthConfig, peers: Iterable[OutlierDetector], now: float) -> bool:
    """Whether one more of these backends may be ejected: ejected ones, plus one, stay within
    ``max_ejection_percent`` of them, and at least one backend stays in service."""
    unique = {id(peer): peer for peer in peers}
    count = len(unique)
    allowed = min(count * config.max_ejection_percent // 100, count - 1)
    ejected = sum(1 for peer in unique.values() if peer.ejected(now))
    return ejected + 1 <= allowed
