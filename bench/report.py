"""Turning measurements into the markdown report (stdout, bench/results/latest.md and a dated copy).

Ratios are computed within a round (both numbers measured minutes apart on the same noisy machine)
and only then summarised by the median across rounds, which cancels most of the drift a shared
machine has between rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from dashboard import DashboardResults
from dashboard import headline as dashboard_headline
from dashboard import report_lines as dashboard_lines
from dns_bench import DnsResults
from dns_bench import headline_lines as dns_headline
from dns_bench import report_lines as dns_lines
from ftp import FtpResults
from ftp import headline_lines as ftp_headline
from ftp import report_lines as ftp_lines
from llm_bench import LlmResults
from llm_bench import headline_lines as llm_headline
from llm_bench import report_lines as llm_lines
from load import WrkResult
from policies import PolicyResults, report_lines
from route_match import TableResult
from workers import WorkersResults
from workers import headline_lines as workers_headline
from workers import report_lines as workers_lines

CASES: tuple[tuple[str, int], ...] = (("small", 1), ("small", 50), ("16k", 1), ("16k", 50))
"""(body, connections) in the order each SUT is measured."""

THROUGHPUT_GOAL = 0.75  # Kairos req/s at c=50 as a fraction of the bare aiohttp proxy's
ADDED_P50_GOAL_MS = 0.35  # Kairos p50 minus direct p50 at c=1
ROUTE_RATIO_GOAL = 1.5  # ns/match at 10,000 routes over 10 routes


@dataclass(frozen=True, slots=True)
class Measurement:
    """One (round, SUT, body, connections) cell; ``result`` is None when it failed (see ``error``)."""

    round: int
    sut: str
    body: str
    connections: int
    result: WrkResult | None = None
    cpu_us: float | None = None  # SUT CPU time per completed request; None for direct
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Headline:
    label: str
    per_round: list[float]
    goal: str
    met: Callable[[float], bool]
    unit: str

    @property
    def median(self) -> float | None:
        return statistics.median(self.per_round) if self.per_round else None

    def line(self) -> str:
        value = self.median
        if value is None:
            return f"- {self.label}: n/a (a needed SUT failed; goal {self.goal})"
        verdict = "met" if self.met(value) else "NOT met"
        rounds = ", ".join(self._fmt(sample) for sample in self.per_round)
        return f"- **{self.label}: {self._fmt(value)}** (goal {self.goal}: {verdict}; per round: {rounds})"

    def _fmt(self, value: float) -> str:
        return f"{value * 100:.1f}%" if self.unit == "%" else f"{value:.3f} ms"


Combine = Callable[[Measurement, Measurement], float | None]


def per_round(
    measurements: list[Measurement],
    rounds: int,
    body: str,
    conns: int,
    combine: Combine,
    sut: str,
    other: str,
) -> list[float]:
    """``combine(sut's result, other's result)`` for each round where both succeeded without errors
    (and ``combine`` has what it needs, i.e. does not return None)."""
    cells = {(m.round, m.sut): m for m in measurements if (m.body, m.connections) == (body, conns)}
    values = []
    for round_no in range(1, rounds + 1):
        a, b = cells.get((round_no, sut)), cells.get((round_no, other))
        if a is None or b is None or a.result is None or b.result is None:
            continue
        if a.result.errors or b.result.errors:
            continue
        value = combine(a, b)
        if value is not None:
            values.append(value)
    return values


def rps_ratio(a: Measurement, b: Measurement) -> float | None:
    return a.result.rps / b.result.rps if a.result and b.result else None


def cpu_ratio(a: Measurement, b: Measurement) -> float | None:
    """Throughput ratio implied by CPU per request: what a saturated, otherwise idle core would give."""
    return b.cpu_us / a.cpu_us if a.cpu_us and b.cpu_us else None


def added_p50(a: Measurement, b: Measurement) -> float | None:
    return a.result.p50_ms - b.result.p50_ms if a.result and b.result else None


def headlines(measurements: list[Measurement], rounds: int) -> list[Headline]:
    def at_least(goal: float) -> Callable[[float], bool]:
        return lambda value: value >= goal

    def at_most(goal: float) -> Callable[[float], bool]:
        return lambda value: value <= goal

    def throughput(label: str, body: str, combine: Combine) -> Headline:
        values = per_round(measurements, rounds, body, 50, combine, "kairos", "bare-aiohttp")
        return Headline(label, values, f"≥ {THROUGHPUT_GOAL:.0%}", at_least(THROUGHPUT_GOAL), "%")

    def latency(label: str, body: str, sut: str = "kairos") -> Headline:
        values = per_round(measurements, rounds, body, 1, added_p50, sut, "direct")
        return Headline(label, values, f"≤ {ADDED_P50_GOAL_MS} ms", at_most(ADDED_P50_GOAL_MS), "ms")

    return [
        throughput("Kairos vs bare aiohttp proxy at c=50 (small)", "small", rps_ratio),
        latency("Kairos added p50 at c=1 over direct", "small"),
        throughput(
            "(noise-robust) Kairos vs bare by SUT CPU per request at c=50 (small)", "small", cpu_ratio
        ),
        throughput("Kairos vs bare aiohttp proxy at c=50 (16k)", "16k", rps_ratio),
        latency("Kairos added p50 at c=1 over direct (16k)", "16k"),
        latency("(reference) bare aiohttp added p50 at c=1 over direct (small)", "small", "bare-aiohttp"),
    ]


def _median(values: list[float], fmt: str) -> str:
    return format(statistics.median(values), fmt) if values else "-"


def summary_table(measurements: list[Measurement], suts: list[str], rounds: int) -> list[str]:
    lines = [
        "| SUT | body | conns | req/s | p50 ms | p99 ms | SUT CPU µs/req | req/s vs bare | ok rounds |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for sut in suts:
        for body, conns in CASES:
            cells = [m for m in measurements if (m.sut, m.body, m.connections) == (sut, body, conns)]
            good = [m for m in cells if m.result is not None and m.result.errors == 0]
            ratios = (
                []
                if sut == "direct"
                else per_round(measurements, rounds, body, conns, rps_ratio, sut, "bare-aiohttp")
            )
            ok = f"{len(good)}/{len(cells)}"
            if not good:
                reason = next((m.error for m in cells if m.error), "errors in every round")
                lines.append(f"| {sut} | {body} | {conns} | FAILED | | | | | {ok}: {_short(reason)} |")
                continue
            lines.append(
                f"| {sut} | {body} | {conns} "
                f"| {_median([m.result.rps for m in good if m.result], ',.0f')} "
                f"| {_median([m.result.p50_ms for m in good if m.result], '.3f')} "
                f"| {_median([m.result.p99_ms for m in good if m.result], '.3f')} "
                f"| {_median([m.cpu_us for m in good if m.cpu_us is not None], '.0f')} "
                f"| {_median([r * 100 for r in ratios], '.0f')}{'%' if ratios else ''} | {ok} |"
            )
    return lines


def raw_table(measurements: list[Measurement]) -> list[str]:
    lines = [
        "| round | SUT | body | conns | req/s | p50 ms | p99 ms | CPU µs/req | requests | errors |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in sorted(measurements, key=lambda m: (m.round, m.sut, m.body, m.connections)):
        r = m.result
        if r is None:
            lines.append(
                f"| {m.round} | {m.sut} | {m.body} | {m.connections} | FAILED: {_short(m.error)} |||||||"
            )
            continue
        cpu = f"{m.cpu_us:.0f}" if m.cpu_us is not None else "-"
        lines.append(
            f"| {m.round} | {m.sut} | {m.body} | {m.connections} | {r.rps:,.0f} | {r.p50_ms:.3f} "
            f"| {r.p99_ms:.3f} | {cpu} | {r.requests} | {r.errors} |"
        )
    return lines


def route_lines(results: list[TableResult] | None, error: str | None) -> list[str]:
    if not results:
        return [f"Route-matching benchmark FAILED: {_short(error)}"]
    kinds = list(results[0].ns_per_match)
    lines = [
        "| routes | build s | " + " | ".join(f"{kind} ns/match" for kind in kinds) + " |",
        "|--:|--:|" + "--:|" * len(kinds),
    ]
    for result in results:
        timings = " | ".join(f"{result.ns_per_match[kind]:.0f}" for kind in kinds)
        lines.append(f"| {result.routes:,} | {result.build_seconds:.2f} | {timings} |")
    ratio = results[-1].ns_per_match["mixed"] / results[0].ns_per_match["mixed"]
    verdict = "met" if ratio <= ROUTE_RATIO_GOAL else "NOT met"
    lines += [
        "",
        f"- **Route match, {results[-1].routes:,} vs {results[0].routes} routes (mixed paths): "
        f"{ratio:.2f}x** "
        f"(goal ≤ {ROUTE_RATIO_GOAL}x: {verdict})",
    ]
    return lines


def _short(text: str | None) -> str:
    return (text or "unknown error").replace("|", "/").replace("\n", " ")[:120]


def render(
    *,
    title: str,
    machine: list[str],
    method: list[str],
    suts: list[tuple[str, str]],
    measurements: list[Measurement],
    rounds: int,
    route_results: list[TableResult] | None,
    route_error: str | None,
    policies: PolicyResults | None = None,
    dashboard: DashboardResults | None = None,
    ftp: FtpResults | None = None,
    dns: DnsResults | None = None,
    workers: WorkersResults | None = None,
    llm: LlmResults | None = None,
) -> str:
    lines = [f"# {title}", "", "## Headline", ""]
    lines += [headline.line() for headline in headlines(measurements, rounds)]
    if dashboard is not None:
        lines.append(dashboard_headline(dashboard))
    if ftp is not None:
        lines += ftp_headline(ftp)
    if dns is not None:
        lines += dns_headline(dns)
    if workers is not None:
        lines += workers_headline(workers)
    if llm is not None:
        lines += llm_headline(llm)
    lines += ["", "## Machine", "", *(f"- {item}" for item in machine), "", "## Method", ""]
    lines += [f"- {item}" for item in method]
    lines += ["", "Systems under test:", "", *(f"- `{name}`: {description}" for name, description in suts)]
    lines += ["", f"## HTTP results (median of {rounds} round(s))", ""]
    lines += summary_table(measurements, [name for name, _ in suts], rounds)
    if policies is not None:
        lines += ["", "## Policy cost (JWT, rate limits; c=50, 100-byte body)", ""]
        lines += report_lines(policies)
    lines += ["", "## Route matching (RouteTable.match, median of repeats)", ""]
    lines += route_lines(route_results, route_error)
    if dashboard is not None:
        lines += ["", f"## Dashboard pages ({dashboard.routes:,} routes)", ""]
        lines += dashboard_lines(dashboard)
    if ftp is not None:
        lines += ["", "## FTP transfers (through Kairos vs direct)", ""]
        lines += ftp_lines(ftp)
    if dns is not None:
        lines += ["", "## DNS forwarding (dnsperf; Kairos vs dnsmasq and dnsdist)", ""]
        lines += dns_lines(dns)
    if workers is not None:
        lines += ["", "## Kairos `--workers 2` vs nginx with 2 workers (both CPUs)", ""]
        lines += workers_lines(workers)
    if llm is not None:
        lines += ["", "## LLM routes (Kairos vs LiteLLM Proxy, same fake provider)", ""]
        lines += llm_lines(llm)
    lines += [
        "",
        "<details><summary>Per-round raw numbers</summary>",
        "",
        *raw_table(measurements),
        "",
        "</details>",
    ]
    return "\n".join(lines) + "\n"
