"""Backends: the upstream servers a route sends to, and the runtime state they share.

A ``Backend`` is immutable and compiled with its route (kairos/routing/route.py); its
``BackendState`` (in-flight count, health, outlier ejection, circuit) is shared by every route that
uses the same scheme+host+port and carried across reloads by the gateway's registry. Kept apart
from routes so the balancers (kairos/routing/balancer.py), which pick among backends, need nothing
of routes, and routes can import the balancers.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from kairos.resilience.breaker import CircuitBreaker
from kairos.resilience.outlier import OutlierDetector


@dataclass(slots=True, eq=False)
class BackendState:
    """Runtime facts about one upstream server, shared across routes and config reloads.

    ``healthy`` is set by active health checks, ``outlier`` by passive outlier ejection and
    ``breaker`` by the circuit breaker, each from the traffic of every route using the backend.
    """

    key: str
    in_flight: int = 0
    healthy: bool = True
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outlier: OutlierDetector = field(default_factory=OutlierDetector)

    def available(self, now: float) -> bool:
        """Healthy, not ejected, and its circuit lets a call through (``now``: time.monotonic())."""
        return self.healthy and not self.outlier.ejected(now) and not self.breaker.blocks(now)


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    index: int
    key: str  # scheme://host:port — the identity that state is shared by
    scheme: str
    host: str
    port: int
    weight: int
    http2: bool
    health_check_path: str | None
    http_base: str  # e.g. http://10.0.0.5:8080 (ws backends mapped to http for plain requests)
    ws_base: str  # e.g. ws://10.0.0.5:8080
    state: BackendState
    ssl: ssl.SSLContext | None = None  # custom upstream TLS (tls_ca_file / tls_verify), else default


def backend_key(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{host}:{port}"
