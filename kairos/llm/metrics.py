"""The LLM families of /metrics: OpenTelemetry's GenAI semantic-convention names where they exist
(dots become underscores, the unit a suffix, as the OpenTelemetry-to-Prometheus mapping does), the
gateway's own for the rest.

- ``gen_ai_client_token_usage_total{gen_ai_request_model,gen_ai_provider_name,gen_ai_token_type}``:
  tokens by type (``input``, ``output``), from the provider's usage (streams included: usage is
  always asked for);
- ``gen_ai_client_operation_duration_seconds{gen_ai_request_model,gen_ai_provider_name}``: request in
  to last byte out;
- ``gen_ai_server_time_to_first_token_seconds{...}``: streams, request in to first chunk out;
- ``kairos_llm_requests_total{route,model,provider,outcome}``, ``kairos_llm_cost_usd_total{model,
  provider}``, ``kairos_llm_fallbacks_total{route,model}``, ``kairos_llm_limited_total{model,reason}``;
- ``kairos_llm_analytics_records_total{result}`` (written, dropped) and
  ``kairos_llm_analytics_queue_depth``: whether the analytics database keeps up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from kairos.llm.service import LlmService
from kairos.observability.requests import Histogram

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
_GENAI = ["gen_ai_request_model", "gen_ai_provider_name"]


def _counts(family: CounterMetricFamily, counts: Mapping[Any, float]) -> None:
    for labels, count in sorted(counts.items()):
        family.add_metric(list(labels), count)


def _histograms(family: HistogramMetricFamily, histograms: Mapping[Any, Histogram]) -> None:
    for labels, histogram in sorted(histograms.items()):
        family.add_metric(list(labels), histogram.cumulative(), histogram.sum)


def llm_families(service: LlmService) -> Iterator[Family]:
    stats = service.stats
    tokens = CounterMetricFamily(
        "gen_ai_client_token_usage",
        "Tokens used, by model, provider and type",
        labels=[*_GENAI, "gen_ai_token_type"],
    )
    _counts(tokens, stats.tokens)
    yield tokens
    duration = HistogramMetricFamily(
        "gen_ai_client_operation_duration_seconds", "LLM calls: request in to last byte out", labels=_GENAI
    )
    _histograms(duration, stats.durations)
    yield duration
    ttft = HistogramMetricFamily(
        "gen_ai_server_time_to_first_token_seconds", "Streams: request in to first chunk out", labels=_GENAI
    )
    _histograms(ttft, stats.ttft)
    yield ttft
    requests = CounterMetricFamily(
        "kairos_llm_requests",
        "LLM calls by route, public model, provider and outcome",
        labels=["route", "model", "provider", "outcome"],
    )
    _counts(requests, stats.requests)
    yield requests
    cost = CounterMetricFamily(
        "kairos_llm_cost_usd", "Spend in USD (litellm's prices or the route's)", labels=["model", "provider"]
    )
    _counts(cost, stats.cost)
    yield cost
    fallbacks = CounterMetricFamily(
        "kairos_llm_fallbacks", "Targets given up on before one answered", labels=["route", "model"]
    )
    _counts(fallbacks, stats.fallbacks)
    yield fallbacks
    limited = CounterMetricFamily(
        "kairos_llm_limited",
        "Requests refused by the route's token, request or spend limits",
        labels=["model", "reason"],
    )
    _counts(limited, stats.limited)
    yield limited
    analytics = service.analytics
    if analytics is not None:
        snapshot = analytics.stats
        records = CounterMetricFamily(
            "kairos_llm_analytics_records", "Analytics records written or dropped", labels=["result"]
        )
        records.add_metric(["written"], snapshot.written)
        records.add_metric(["dropped"], snapshot.dropped)
        yield records
        yield GaugeMetricFamily(
            "kairos_llm_analytics_queue_depth",
            "Analytics records waiting for the database",
            value=snapshot.queue_depth,
        )
