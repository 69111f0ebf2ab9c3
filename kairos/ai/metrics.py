"""The AI routing families of /metrics, read from the router's plain counters at scrape time.

- ``kairos_ai_decisions_total{route,outcome}`` and ``kairos_ai_decision_duration_seconds{route}``
  (every decision, cached ones included: the histogram shows what AI routing adds per request);
- ``kairos_ai_shadow_decisions_total{route,agreed}``: shadow mode, whether the AI's choice was the
  backend the balancer used (what to look at before trusting a route to it);
- per provider (``provider`` label = ``provider/model``, never a key):
  ``kairos_ai_provider_calls_total{provider,result}`` (success, error, timeout, circuit_open),
  ``kairos_ai_tokens_total{provider,kind}`` (prompt, completion, as litellm reports them),
  ``kairos_ai_cost_usd_total{provider}`` (litellm's price list; 0 for unpriced local models) and
  ``kairos_ai_provider_circuit_state{provider,state}``;
- ``kairos_ai_cache_entries`` (this replica's memory), ``kairos_ai_cache_store_errors_total`` (the
  shared cache's Redis calls that failed: decisions were then cached per replica),
  ``kairos_ai_context_memo_hits_total`` (requests that reused the
  redacted context of an identical earlier one: no redaction, no fingerprinting) and
  ``kairos_ai_backend_latency_seconds{backend}`` (the peak-EWMA estimates of latency_prediction
  routes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from kairos.ai.router import AiRouter
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


def ai_families(router: AiRouter) -> Iterator[Family]:
    stats = router.stats
    decisions = CounterMetricFamily(
        "kairos_ai_decisions",
        "AI routing decisions by route and outcome (chosen, cached, fallback_timeout, fallback_error, "
        "fallback_invalid, fallback_busy, fallback_circuit_open, shadow)",
        labels=["route", "outcome"],
    )
    for (route, outcome), count in sorted(stats.decisions.items()):
        decisions.add_metric([route, outcome], count)
    yield decisions
    duration = HistogramMetricFamily(
        "kairos_ai_decision_duration_seconds",
        "Time an AI routing decision took (cache hits included)",
        labels=["route"],
    )
    for route, histogram in sorted(stats.durations.items()):
        duration.add_metric([route], histogram.cumulative(), histogram.sum)
    yield duration
    shadow = CounterMetricFamily(
        "kairos_ai_shadow_decisions",
        "Shadow-mode decisions by whether the AI's choice was the backend actually used",
        labels=["route", "agreed"],
    )
    for (route, agreed), count in sorted(stats.shadow.items()):
        shadow.add_metric([route, agreed], count)
    yield shadow
    calls = CounterMetricFamily(
        "kairos_ai_provider_calls", "AI provider calls by result", labels=["provider", "result"]
    )
    tokens = CounterMetricFamily(
        "kairos_ai_tokens",
        "Tokens AI routing used, as the provider reported them",
        labels=["provider", "kind"],
    )
    cost = CounterMetricFamily(
        "kairos_ai_cost_usd",
        "What AI routing cost, by litellm's price list (0 if unpriced)",
        labels=["provider"],
    )
    circuit = GaugeMetricFamily(
        "kairos_ai_provider_circuit_state",
        "AI provider circuit breaker: 1 on the current state label",
        labels=["provider", "state"],
    )
    now = time.monotonic()
    seen: dict[str, list[int | float]] = {}
    for provider in sorted(router.providers.values(), key=lambda p: p.label):
        # Two providers may share a label (another base URL or key): their numbers are summed.
        totals = seen.setdefault(provider.label, [0, 0, 0.0])
        totals[0] += provider.usage.prompt_tokens
        totals[1] += provider.usage.completion_tokens
        totals[2] += provider.usage.cost
    by_result: dict[tuple[str, str], int] = {}
    states: dict[str, str] = {}
    for provider in router.providers.values():
        for result, count in provider.calls.items():
            by_result[(provider.label, result)] = by_result.get((provider.label, result), 0) + count
        state = provider.breaker.state_at(now)
        if states.get(provider.label) in (None, CLOSED):
            states[provider.label] = state
    for (label, result), count in sorted(by_result.items()):
        calls.add_metric([label, result], count)
    yield calls
    for label, (prompt, completion, spent) in sorted(seen.items()):
        tokens.add_metric([label, "prompt"], prompt)
        tokens.add_metric([label, "completion"], completion)
        cost.add_metric([label], spent)
    yield tokens
    yield cost
    for label, state in sorted(states.items()):
        for name in (CLOSED, OPEN, HALF_OPEN):
            circuit.add_metric([label, name], 1 if state == name else 0)
    yield circuit
    yield GaugeMetricFamily("kairos_ai_cache_entries", "AI routing decisions cached", value=len(router.cache))
    yield CounterMetricFamily(
        "kairos_ai_cache_store_errors",
        "AI decision-cache lookups and writes the shared store (Redis) could not do",
        value=router.shared.failures if router.shared is not None else 0,
    )
    yield CounterMetricFamily(
        "kairos_ai_context_memo_hits",
        "Requests whose redacted AI context was reused from an identical earlier request",
        value=router.contexts.hits,
    )
    latency = GaugeMetricFamily(
        "kairos_ai_backend_latency_seconds",
        "Peak-EWMA latency estimate per backend (latency_prediction routes)",
        labels=["backend"],
    )
    for backend, seconds in sorted(router.latency.snapshot(now).items()):
        latency.add_metric([backend], seconds)
    yield latency
