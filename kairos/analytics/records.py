"""What one LLM call leaves behind (``LlmCallRecord``) and what the store says about itself
(``AnalyticsStats``).

Plain frozen dataclasses with no SQLAlchemy import, so the endpoint can build records without
loading the database stack; ``kairos.analytics.store`` turns them into rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# The values the endpoint writes in ``outcome`` and ``cache`` (not enforced: an unknown value is
# stored as given, so a new outcome needs no migration).
OUTCOMES = ("ok", "error", "client_cancelled", "rate_limited", "stream_error")
CACHE_STATES = ("hit", "miss", "off")
# The outcomes ``aggregate`` counts as "errors": the call failed on the gateway's or the provider's
# side. A refusal by the rate limiter and a client that hung up are counted apart
# ("rate_limited", "client_cancelled"), so an error rate is not inflated by either.
ERROR_OUTCOMES = ("error", "stream_error")


@dataclass(frozen=True, slots=True)
class LlmCallRecord:
    """One OpenAI-compatible call as the gateway saw it; the store keeps it as one row."""

    time: datetime  # UTC, when the call started (a naive datetime is taken as UTC)
    request_id: str
    consumer: str  # the gateway identity (API key consumer name, JWT subject) or "anonymous"
    route: str  # the route's external_path
    model: str  # the public model name the client asked for
    provider: str  # litellm provider of the target that answered ("" if none)
    target_model: str  # the provider's model name that answered ("" if none)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float  # request in to last byte out
    ttft_ms: float | None  # time to first token (streams), None otherwise
    outcome: str  # one of OUTCOMES
    status: int  # HTTP status sent to the client
    cache: str  # one of CACHE_STATES
    fallbacks: int  # targets tried before the one that answered
    stream: bool


@dataclass(frozen=True, slots=True)
class AnalyticsStats:
    """A snapshot of the store's counters (``AnalyticsStore.stats``).

    Every ``record()`` call ends up in exactly one of ``written``, ``dropped`` or (for now)
    ``queue_depth``, so ``recorded == written + dropped + queue_depth`` whenever the event loop
    is between two steps of the writer."""

    recorded: int  # record() calls
    written: int  # rows committed to the database
    # refused (queue full, store stopped), evicted after a failed batch, invalid, unwritten at stop()
    dropped: int
    failed_batches: int  # INSERTs that failed (their records are kept and retried)
    queue_depth: int  # records waiting to be written, the batch being written included
    last_error: str | None  # the latest failure ("OperationalError: ..."), kept after recovery
    backend: str  # "sqlite" or "postgresql"
    written_batches: int = 0  # committed INSERTs: written / written_batches is the batch size achieved
    failing: bool = False  # the latest write attempt failed (the database is down, full or slow)
