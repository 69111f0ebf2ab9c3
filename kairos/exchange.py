"""The per-request contract between middlewares (``scope["kairos"]``).

Middlewares never import each other; what one decides and another needs travels here. A field
is added only when two concerns must share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import Scope

    from kairos.routing.backend import Backend
    from kairos.routing.route import Route

SCOPE_KEY = "kairos"


@dataclass(slots=True)
class Exchange:
    request_id: str
    client_ip: str
    started: float  # time.perf_counter() when the gateway saw the request
    route: Route | None = None
    params: dict[str, str] = field(default_factory=dict)
    identity: Any = None  # verified claims / API-key consumer, set by auth
    preferred_backend: int | None = None  # set by AI routing
    ai_outcome: str | None = None  # AI routing's outcome, e.g. "chosen" (AI routing -> access log)
    backend: Backend | None = None  # set by the balancer, per attempt
    attempt: int = 0  # set by retry: 0 for the first try
    tried: list[Backend] = field(default_factory=list)  # backends earlier attempts used (retry -> balancer)
    deadline: float | None = None  # time.monotonic() by which every attempt must be done (retry -> proxy)
    try_timeout: float | None = None  # seconds for one attempt, within the deadline (retry -> proxy)
    # Why the proxy answered this attempt itself: "connect" (nothing was sent upstream), "timeout",
    # "error" (reset, bad response); None when the upstream answered (proxy -> retry, breaker).
    upstream_failure: str | None = None
    # The upstream path and query a path rewrite produced, e.g. "/v2/items?x=1" (transform -> proxy);
    # None: the route's internal_path and the request's query, as usual.
    upstream_target: str | None = None
    # Seconds from sending the upstream request to its response head, last attempt (proxy -> metrics).
    upstream_seconds: float | None = None
    # Seconds spent waiting on others, every attempt: the client's request body, upstream heads,
    # retry backoff (proxy, retry -> metrics: the gateway's own time is the rest).
    waited: float = 0.0


def get_exchange(scope: Scope) -> Exchange:
    exchange: Exchange = scope[SCOPE_KEY]
    return exchange
