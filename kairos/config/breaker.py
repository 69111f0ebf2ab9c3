"""The `circuit_breaker` block of routes and of the top level: the shared options plus `shared`.

A model of its own (rather than a field of ``CircuitBreakerConfig``, which ``ai.circuit_breaker``
also uses) because only backend breakers can be shared through Redis: an AI provider's breaker stays
per replica, and its schema should not offer a key that would do nothing there.
"""

from __future__ import annotations

from pydantic import Field

from kairos.config.base import Bool
from kairos.config.policies import CircuitBreakerConfig


class BackendCircuitBreakerConfig(CircuitBreakerConfig):
    """A circuit breaker per backend (scheme, host and port), shared by the routes that use it and kept
    across reloads. A failure is a gateway 502/504 for an attempt, an upstream status in
    `failure_status_codes`, or an upstream that dies mid-body. While a backend's circuit is open the
    balancer skips it; when every backend of a route is open the answer is 503 `circuit_open` with
    `Retry-After`. Top level and per route (a route's block replaces the top-level one)."""

    shared: Bool = Field(
        False,
        description="Keep the state of these backends' breakers in Redis (`KAIROS_REDIS_URL`), so every "
        "replica sees it: when one replica opens a circuit the others stop sending within 250 ms, and "
        "`half_open_max_calls` probes run in total, not per replica. Each replica caches the state for "
        "250 ms; failures (and successes while failures are counted) cost one Redis call each. Without "
        "`KAIROS_REDIS_URL` (a warning at load) and while Redis is unreachable, each replica's own "
        "breaker decides. A backend used by several routes is shared when one of them says so. Not on "
        "`dns` or `llm` routes.",
    )
