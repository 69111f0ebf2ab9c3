"""The admin API's answers as pydantic models: one definition for the server and its clients.

The admin endpoints (kairos/admin/, kairos/health.py) build every answer from these models and
``kairos.client`` parses the same JSON back into them, so a field added here reaches the server,
the typed client, the CLI and the dashboard at once. Routes themselves are
``kairos.config.model.RouteConfig``, the model the loader and the admin API validate with.

Rules that keep the wire stable:

- the JSON an endpoint sends is ``model.model_dump(mode="json", exclude_unset=True)`` (see
  ``kairos.admin.responses.answer``): a field the server did not set is not sent, so optional
  parts (``warning``, ``allow``, ``note``) appear only when they say something;
- answers accept unknown keys (``extra="allow"``): a newer gateway may add fields, and an older
  client keeps working (what ``kubectl`` and the Kong Admin API clients do).

Only pydantic and the standard library are imported here: this module sits below both the
gateway and the client (the import contracts in pyproject.toml keep it so).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    """Base of every admin answer: unknown keys are kept, so old clients read new gateways."""

    model_config = ConfigDict(extra="allow")


class Envelope(Answer):
    """kairos-rs's ``{"success", "message"}`` envelope of the route and config answers."""

    success: bool
    message: str


class ErrorBody(Answer):
    """The gateway's error JSON (kairos/errors.py), with the admin API's extras when present."""

    error: str
    type: str
    timestamp: str | None = None
    request_id: str | None = None
    message: str | None = None
    errors: list[str] = Field(default_factory=list, description="Every validation problem, `path: message`.")


# -- health ------------------------------------------------------------------------------------


class HealthStatus(Answer):
    """``GET /health``: the process answers (liveness plus version and uptime)."""

    status: str = Field(description="`healthy`.")
    version: str | None = None
    timestamp: str
    uptime: float | None = Field(None, description="Seconds since the gateway started.")
    admin_prefix: str | None = Field(
        None, description="Where the admin API is mounted (KAIROS_ADMIN_PREFIX): how clients find it."
    )


class ReadyStatus(Answer):
    """``GET /ready``: 200 once a config is loaded and the route table is built, else 503."""

    status: str = Field(description="`ready` or `not_ready`.")
    timestamp: str
    config_generation: int | None = None
    routes: int | None = None


# -- config ------------------------------------------------------------------------------------


class ConfigStatus(Envelope):
    """``GET /config/status`` and ``POST /config/reload``: the running generation and the last
    reload attempt. A failed reload (422) adds ``error``, ``type`` and ``errors``."""

    version: int = Field(description="The config generation now serving (kairos-rs's name).")
    generation: int
    applied_at: str | None = None
    last_attempt_at: str | None = None
    last_trigger: str | None = Field(
        None, description="What started the last attempt: startup, file, signal, api, admin."
    )
    last_result: str | None = None
    last_errors: list[str] = Field(default_factory=list)
    reloads: dict[str, int] = Field(default_factory=dict, description="Reload attempts by result.")
    last_success_at: str | None = None
    config_file: str | None = None
    source: str | None = None
    routes: int = 0
    timestamp: str | None = None
    error: str | None = None
    type: str | None = None
    errors: list[str] = Field(default_factory=list)


# -- routes ------------------------------------------------------------------------------------


class RouteList(Envelope):
    """``GET /routes``: every route as written (secrets as ``"***"``)."""

    routes: list[dict[str, Any]]
    generation: int


class RouteAnswer(Envelope):
    """``GET/POST/PUT/DELETE /routes/...``: the route concerned, its index and, after a change,
    the generation now running it and what the validator warns about."""

    route: dict[str, Any]
    index: int
    generation: int | None = None
    warnings: list[str] = Field(default_factory=list)


class RouteValidation(Answer):
    """``POST /routes/validate``: whether the route would be accepted next to the running ones."""

    valid: bool
    error: str | None = None
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class RoutesReplaced(Envelope):
    """``PUT /routes``: the whole route list replaced at once (or, dry run, checked only)."""

    dry_run: bool = False
    generation: int
    routes: int
    warnings: list[str] = Field(default_factory=list)


# -- backends and explain --------------------------------------------------------------------


class CircuitState(Answer):
    state: str = Field(description="`closed`, `open` or `half_open`.")
    consecutive_failures: int
    times_opened: int
    retry_after_seconds: float
    blocks_now: bool


class OutlierState(Answer):
    ejected: bool
    ejected_for_seconds: float
    consecutive_failures: int
    ejections: int


class BackendState(Answer):
    """One backend's live state, shared by every route that uses it (keyed ``scheme://host:port``)."""

    key: str
    healthy: bool
    health_check: Any = None
    circuit: CircuitState
    outlier: OutlierState
    in_flight: int
    available: bool = Field(description="Whether the balancer may pick it now.")


class BackendUse(Answer):
    """A route that sends traffic to a backend."""

    index: int
    external_path: str
    key: str
    backend_index: int
    weight: int
    health_check_path: str | None = None


class BackendInfo(BackendState):
    scheme: str
    host: str
    port: int
    routes: list[BackendUse] = Field(default_factory=list)


class Backends(Envelope):
    """``GET /backends``."""

    backends: list[BackendInfo]
    panic_routes: list[str] = Field(default_factory=list)
    generation: int


class ExplainRequest(Answer):
    method: str
    path: str
    query: str = ""
    host: str | None = None
    websocket: bool = False


class ExplainedRoute(Answer):
    index: int
    external_path: str
    internal_path: str
    key: str
    protocol: str
    methods: list[str]
    allow: str = Field(description="The Allow header a 405 on this path would carry.")


class Candidate(Answer):
    """Another route whose template matches the path, and why it did not take the request."""

    index: int
    external_path: str
    key: str
    reason: str


class ExplainedBackend(BackendState):
    index: int
    weight: int
    url: str = Field(description="The upstream URL the proxy would send this request to.")
    path_rewritten: bool = False
    note: str | None = None


class Explanation(Answer):
    """``GET /explain``: what the gateway would do with a request, without sending anything."""

    request: ExplainRequest
    matched: bool
    served_by: Literal["proxy", "gateway", "admin", "builtin"]
    status: int | None = Field(None, description="The status the gateway itself would answer (no match).")
    type: str | None = None
    reason: str | None = None
    allow: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    route: ExplainedRoute | None = None
    why: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    other_matching_routes: list[Candidate] = Field(default_factory=list)
    backends: list[ExplainedBackend] = Field(default_factory=list)
    balancer: str | None = None
    policies: dict[str, Any] = Field(
        default_factory=dict, description="Per concern: applies, source, config."
    )
    generation: int | None = None


# -- cache -------------------------------------------------------------------------------------


class PurgeResult(Envelope):
    """``POST /cache/purge``."""

    purged: int
    route: str | None = None
    key_prefix: str | None = None
    seconds: float
    warning: str | None = None


# -- metrics history and streams -------------------------------------------------------------


class MetricValue(Answer):
    type: str = Field(description="`Counter` or `Gauge`.")
    value: float


class MetricPoint(Answer):
    """One sample of ``GET /metrics/history`` without ``interval``."""

    timestamp: str
    value: MetricValue


class MetricWindow(Answer):
    """One window of ``GET /metrics/history?interval=...``."""

    start_time: str
    end_time: str
    count: int
    sum: float
    min: float
    max: float
    avg: float


class RouteSummary(Answer):
    """One route's counts since start and its request-duration histogram (summed over methods)."""

    route: str
    requests: int
    errors: int = Field(description="Answers with a 5xx status.")
    client_errors: int = Field(description="Answers with a 4xx status.")
    buckets: list[int] = Field(
        description="Cumulative counts per bound of `MetricsSummary.bounds`, then +Inf."
    )


class MetricsSummary(Answer):
    """``GET /metrics/summary``: what a dashboard needs from /metrics, computed by the gateway:
    totals, the request-duration histogram over every route, and the busiest routes (``?top=N``).
    A few kilobytes instead of parsing the whole exposition (megabytes with 1,000 routes). Per
    worker process, like the metrics history."""

    timestamp: str
    uptime: float
    requests: int
    errors: int
    client_errors: int
    in_flight: int
    bounds: list[float] = Field(description="Upper bounds (seconds) of the histogram buckets, +Inf left out.")
    buckets: list[int] = Field(description="Cumulative counts over every route: one per bound, then +Inf.")
    routes: list[RouteSummary] = Field(default_factory=list, description="Busiest first.")
    total_routes: int = Field(0, description="Routes with traffic (`routes` may hold fewer).")


class StreamEvent(Answer):
    """One message of ``/ws/metrics``: ``Snapshot`` (every interval), ``TimeSeries`` (on a
    subscription with history), ``Heartbeat`` or ``Error``; fields per type as the server sends."""

    type: str
    timestamp: str | None = None
    requests_total: int | None = None
    requests_success: int | None = None
    requests_error: int | None = None
    active_connections: int | None = None
    avg_response_time: float | None = None
    success_rate: float | None = None
    message: str | None = None
    metric_name: str | None = None
    data_points: list[MetricPoint] | None = None


class LlmAnalyticsRow(Answer):
    """One group of LLM calls (a consumer, a model, a route, a provider or a UTC day)."""

    key: str
    requests: int
    errors: int = Field(description="Calls that ended in an error (a stream cut included).")
    rate_limited: int = 0
    client_cancelled: int = 0
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    avg_latency_ms: float | None = None
    p50_latency_ms: float | None = None
    avg_ttft_ms: float | None = Field(None, description="Streams only: time to the first chunk.")
    cache_hits: int = 0
    fallbacks: int = Field(0, description="Targets given up on before one answered.")


class LlmAnalytics(Answer):
    """``GET /analytics/llm``: the request analytics of LLM routes, aggregated in the database."""

    group_by: str
    since: str | None = None
    until: str | None = None
    backend: str = Field(description="`sqlite` or `postgresql`.")
    written: int = Field(description="Records written since the gateway started.")
    dropped: int = Field(description="Records lost (queue full, database down too long).")
    queue_depth: int
    last_error: str | None = None
    rows: list[LlmAnalyticsRow] = Field(default_factory=list)
