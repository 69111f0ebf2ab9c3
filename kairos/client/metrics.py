"""``/metrics`` read back: the exposition parsed by prometheus-client's own text parser, and the
per-route figures an operator asks for (requests, error rate, p50/p99).

Quantiles come from the ``kairos_request_duration_seconds`` buckets with PromQL's
``histogram_quantile`` rule (linear interpolation inside the bucket that holds the rank; the
``+Inf`` bucket answers the highest finite bound), so ``kairos metrics`` and a Grafana panel over
the same scrape agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REQUESTS = "kairos_requests_total"
DURATION_BUCKET = "kairos_request_duration_seconds_bucket"


@dataclass(frozen=True, slots=True)
class RouteFigures:
    """One route's totals since the gateway started."""

    route: str
    requests: int
    errors: int  # answers with status 5xx
    client_errors: int  # 4xx
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every sample of one scrape, plus helpers over them."""

    samples: tuple[Sample, ...]
    text: str = field(repr=False)

    @classmethod
    def parse(cls, text: str, prefix: str | None = None) -> MetricsSnapshot:
        """``prefix``: keep only the families whose name starts with it, dropping the other lines
        before the (pure-Python, ~25 µs a sample) parser sees them."""
        if prefix:
            lines = text.splitlines(keepends=True)
            text = "".join(line for line in lines if _family_of(line).startswith(prefix))
        samples = tuple(
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        )
        return cls(samples, text)

    def value(self, name: str, **labels: str) -> float | None:
        """The first sample named ``name`` whose labels include ``labels``."""
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return None

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample named ``name`` whose labels include ``labels``."""
        return sum(
            float(sample.value)
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def routes(self) -> list[RouteFigures]:
        """Per route template: requests, 5xx and 4xx counts, p50 and p99 in milliseconds."""
        counts: dict[str, list[int]] = {}
        for sample in self.samples:
            if sample.name != REQUESTS:
                continue
            route = sample.labels.get("route", "")
            entry = counts.setdefault(route, [0, 0, 0])
            count = int(sample.value)
            code = sample.labels.get("code", "")
            entry[0] += count
            if code.startswith("5"):
                entry[1] += count
            elif code.startswith("4"):
                entry[2] += count
        buckets: dict[str, dict[float, float]] = {}
        for sample in self.samples:
            if sample.name != DURATION_BUCKET:
                continue
            per_route = buckets.setdefault(sample.labels.get("route", ""), {})
            bound = float(sample.labels["le"])
            per_route[bound] = per_route.get(bound, 0.0) + float(sample.value)  # summed over methods
        figures = []
        for route in sorted(set(counts) | set(buckets)):
            total, errors, client_errors = counts.get(route, [0, 0, 0])
            cumulative = sorted(buckets.get(route, {}).items())
            figures.append(
                RouteFigures(
                    route=route,
                    requests=total,
                    errors=errors,
                    client_errors=client_errors,
                    p50_ms=_ms(histogram_quantile(0.5, cumulative)),
                    p99_ms=_ms(histogram_quantile(0.99, cumulative)),
                )
            )
        return figures


def _family_of(line: str) -> str:
    """The metric name a line of the exposition is about (``# HELP name ...`` lines included)."""
    if line.startswith("#"):
        parts = line.split(" ", 3)
        return parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


def histogram_quantile(quantile: float, cumulative: Iterable[tuple[float, float]]) -> float | None:
    """PromQL's ``histogram_quantile`` over ``(upper bound, cumulative count)`` pairs sorted by
    bound and ending with ``+Inf``; ``None`` with no observations."""
    pairs = list(cumulative)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = quantile * pairs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bound, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
