"""What access control costs: one Kairos process, one route per policy, requests/s relative to the
plain proxy route measured in the same process and round.

Every route proxies the same 100-byte upstream body. JWT routes get a valid token on every request
(minted here; a client reusing its token is the common case, and Kairos caches verified tokens
until they expire); rate-limited routes have a limit far above what the run can reach, so every
request is fully evaluated and admitted (the 429 path is not what is being measured). Redis runs
on the load CPU like the upstream, so its CPU is not charged to the gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from load import WrkResult, run_wrk
from procs import cpu_seconds, free_port, pinned, start, stop, wait_ready

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
GOAL = 0.85  # JWT HS256 + memory rate limit keep at least 85 % of plain-proxy throughput
CACHE_GOAL = 3.0  # a cache hit serves at least 3x the plain proxy's requests/s
TRANSFORM_GOAL = 0.90  # 5 header rules + 1 path rule cost at most 10 %
AI_GOAL = 0.90  # an AI route whose decision is cached costs at most 10 % (vs the same route without AI)
TWO_BACKENDS = ("two-backends", "ai-cached")
BASELINES = {"ai-cached": "two-backends"}  # goals measured against another route than "plain"
ROOT = Path(__file__).resolve().parent.parent  # the local fake LLM provider runs from tests/servers
# kairos-rs's own example policy shape (PerIP, sliding window), with a quota the run cannot reach.
UNREACHABLE = {"window_type": "SlidingWindow", "requests_per_window": 1_000_000_000, "window_duration": 60}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    route: dict[str, Any]  # extra route keys
    token: str | None = None  # "hs" | "rs"


def scenarios(redis_url: str) -> tuple[Scenario, ...]:
    memory = {**UNREACHABLE, "strategy": "PerIP"}
    shared = {**memory, "storage_uri": redis_url}
    jwt_only = {"auth_required": True, "auth": "jwt"}
    transform = {
        "request_transformation": {
            "headers": [
                {"action": "set", "name": "X-Gateway", "value": "kairos"},
                {"action": "add", "name": "X-Tenant", "value": "bench"},
                {"action": "remove", "name": "X-Debug"},
                {
                    "action": "replace",
                    "name": "User-Agent",
                    "pattern": "^(.*)$",
                    "replacement": "$1 via-kairos",
                },
            ],
            "path": {"pattern": "^/(p/transform|small)$", "replacement": "/small"},  # either path it sees
        },
        "response_transformation": {"headers": [{"action": "set", "name": "X-Served-By", "value": "kairos"}]},
    }
    return (
        Scenario("plain", {}),
        Scenario("cache-hit", {"cache": {"enabled": True, "ttl_secs": 3600}}),
        Scenario("transform", transform),
        Scenario("jwt-hs256", jwt_only, "hs"),
        Scenario("jwt-rs256", jwt_only, "rs"),
        Scenario("ratelimit-memory", {"rate_limit": memory}),
        Scenario("ratelimit-redis", {"rate_limit": shared}),
        Scenario("hs256+ratelimit-memory", {**jwt_only, "rate_limit": memory}, "hs"),
        Scenario("rs256+ratelimit-redis", {**jwt_only, "rate_limit": shared}, "rs"),
        # AI routing (content_analysis) against the local fake provider; wrk repeats one request, so
        # after the first call every decision is a cache hit: the cost of the middleware itself. It
        # has two backends (one leaves nothing to decide), so its baseline is the same two-backend
        # route without AI (two backends alone switch on retry's failover, which costs too).
        Scenario("two-backends", {}),
        Scenario(
            "ai-cached",
            {"ai_policy": {"enabled": True, "strategy": "content_analysis", "cache_ttl_secs": 3600}},
        ),
    )


@dataclass
class PolicyCell:
    round: int
    scenario: str
    result: WrkResult | None = None
    cpu_us: float | None = None
    error: str | None = None


@dataclass
class PolicyResults:
    cells: list[PolicyCell] = field(default_factory=list)
    error: str | None = None
    ai_uncached: list[str] = field(default_factory=list)  # report lines of the uncached AI measurement


def _tokens() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    claims = {"sub": "bench-client", "exp": int(time.time()) + 3600}
    return {
        "hs": jwt.encode(claims, SECRET, algorithm="HS256"),
        "rs": jwt.encode(claims, private, algorithm="RS256"),
        "public": key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    }


def _config(
    upstream_port: int, cases: tuple[Scenario, ...], public_pem: str, llm_port: int
) -> dict[str, Any]:
    backend = {"host": "http://127.0.0.1", "port": upstream_port}
    routes = [
        {"external_path": f"/p/{case.name}", "internal_path": "/small", "methods": ["GET"],
         "backends": [backend, backend] if case.name in TWO_BACKENDS else [backend], **case.route}
        for case in cases
    ]  # fmt: skip
    # The same AI route without a cache: measured apart (one connection), see _ai_uncached.
    uncached = {"enabled": True, "strategy": "content_analysis", "cache_ttl_secs": 0}
    routes.append({"external_path": "/p/ai-uncached", "internal_path": "/small", "methods": ["GET"],
                   "backends": [backend, backend], "ai_policy": uncached})  # fmt: skip
    jwt_config = {"secret": SECRET, "public_key": public_pem, "algorithms": ["HS256", "RS256"]}
    ai = {"provider": "openai", "model": "gpt-4o-mini", "api_key": "sk-bench-not-a-real-key",
          "api_base": f"http://127.0.0.1:{llm_port}/v1"}  # fmt: skip
    return {"version": 1, "jwt": jwt_config, "ai": ai, "routers": routes}


def _start_fake_llm(cpu: int, logs: Path) -> tuple[subprocess.Popen[bytes], int]:
    """tests/servers/fake_llm.py (an OpenAI-compatible server answering {"index": 0} at once), on
    the load CPU like the upstream."""
    port = free_port()
    command = [sys.executable, "-m", "tests.servers.fake_llm", "--port", str(port)]
    process = start(pinned(cpu, command), logs / "fake-llm.log", cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=1):
                return process, port
        except OSError:
            time.sleep(0.1)
    stop(process)
    raise RuntimeError("the fake LLM provider did not start")


def _ai_uncached(base: str, load_cpu: int, logs: Path, duration: float) -> list[str]:
    """An AI decision on every request (no cache), one connection at a time: its latency over the
    plain route's is what AI routing adds per uncached request. The fake provider answers in well
    under a millisecond, so nearly all of it is the gateway's own time (litellm building the call and
    parsing the answer, the prompt, the redaction); the decision histogram gives its mean."""
    raw = logs / "policy-ai-uncached.txt"
    plain = run_wrk(f"{base}/p/plain", 1, duration, load_cpu, raw)
    ai = run_wrk(f"{base}/p/ai-uncached", 1, duration, load_cpu, raw)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    count = total = 0.0
    outcomes: dict[str, float] = {}
    for line in metrics.splitlines():
        if 'route="/p/ai-uncached"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("kairos_ai_decision_duration_seconds_count"):
            count = float(value)
        elif name.startswith("kairos_ai_decision_duration_seconds_sum"):
            total = float(value)
        elif name.startswith("kairos_ai_decisions_total"):
            outcomes[name.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    mean = f"{total / count * 1000:.1f} ms" if count else "n/a"
    shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(outcomes.items())) or "none"
    return [
        f"- **AI route, uncached decision (one connection)**: p50 {ai.p50_ms:.2f} ms vs plain "
        f"{plain.p50_ms:.2f} ms: **+{ai.p50_ms - plain.p50_ms:.2f} ms per request** added by the gateway "
        f"beyond the provider's own (<1 ms) answer; mean decision {mean}; {ai.rps:,.0f} req/s; "
        f"decisions: {shown}",
    ]


def _start_redis(cpu: int, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError("redis-server is not installed (make bench installs it)")
    port = free_port()
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = start(pinned(cpu, command), logs / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ping = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        if ping.stdout.strip() == "PONG":
            return process, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    stop(process)
    raise RuntimeError("redis-server did not answer PING")


def _check(base: str, case: Scenario, headers: list[str]) -> None:
    """Each route must answer 200 with the 100-byte body; rate-limited ones must show their headers."""
    request = urllib.request.Request(f"{base}/p/{case.name}", headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, body, names = answer.status, answer.read(), {name.lower() for name in answer.headers}
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"/p/{case.name} answered {error.code}, expected 200") from None
    if status != 200 or len(body) != 100:
        raise RuntimeError(f"/p/{case.name} answered {status} with {len(body)} bytes, expected 200 and 100")
    if "rate_limit" in case.route and "x-ratelimit-remaining" not in names:
        raise RuntimeError(f"/p/{case.name} lacks rate-limit headers")
    if "cache" in case.route and "x-cache" not in names:
        raise RuntimeError(f"/p/{case.name} lacks X-Cache: is the cache middleware in the pipeline?")
    if "response_transformation" in case.route and "x-served-by" not in names:
        raise RuntimeError(f"/p/{case.name} was not transformed")
    if "ai_policy" in case.route:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        if f'route="/p/{case.name}"' not in metrics or "kairos_ai_decisions_total" not in metrics:
            raise RuntimeError(f"/p/{case.name} made no AI decision: is AI routing in the pipeline?")


def selected(cases: tuple[Scenario, ...], names: frozenset[str] | None) -> tuple[Scenario, ...]:
    """The named scenarios (all when ``names`` is None) plus the baselines their goals and table are
    measured against, in the usual order; ValueError names any unknown one and lists the known."""
    if names is None:
        return cases
    unknown = names - {case.name for case in cases}
    if unknown:
        known = ", ".join(case.name for case in cases)
        raise ValueError(f"unknown policy route(s) {', '.join(sorted(unknown))}; known: {known}")
    wanted = names | {"plain"} | {BASELINES[name] for name in names if name in BASELINES}
    return tuple(case for case in cases if case.name in wanted)


def run_policy_bench(
    upstream: str,
    sut_cpu: int,
    load_cpu: int,
    code: Path,
    logs: Path,
    rounds: int,
    duration: float,
    only: frozenset[str] | None = None,
) -> PolicyResults:
    """``only``: measure just these routes (and their baselines), e.g. to check one change."""
    results = PolicyResults()
    tmp = Path(tempfile.mkdtemp(prefix="kairos-bench-policies-"))
    redis_process = gateway = llm = None
    try:
        redis_process, redis_url = _start_redis(load_cpu, logs)
        llm, llm_port = _start_fake_llm(load_cpu, logs)
        cases = selected(scenarios(redis_url), only)
        tokens = _tokens()
        config = tmp / "config.json"
        upstream_port = int(upstream.rsplit(":", 1)[1])
        config.write_text(json.dumps(_config(upstream_port, cases, tokens["public"], llm_port)))
        env = {**os.environ, "PYTHONPATH": str(code), "KAIROS_CONFIG_PATH": str(config)}
        env["KAIROS_LOG_LEVEL"] = "warning"
        port = free_port()
        # Exactly as an operator runs it: `kairos run` (its server settings and connection guard).
        command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
        gateway = start(pinned(sut_cpu, command), logs / "kairos-policies.log", env, cwd=code)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/ready", gateway, timeout=60)  # litellm's import takes ~5 s
        headers = {case.name: [f"Authorization: Bearer {tokens[case.token]}"] if case.token else []
                   for case in cases}  # fmt: skip
        for case in cases:
            _check(base, case, headers[case.name])
            run_wrk(f"{base}/p/{case.name}", 50, 1.0, load_cpu, headers=headers[case.name])
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(cases)
            for case in cases[shift:] + cases[:shift]:
                cell = PolicyCell(round_no, case.name)
                try:
                    before = cpu_seconds([gateway.pid])
                    raw = logs / f"r{round_no}-policy-{case.name}.txt"
                    result = run_wrk(f"{base}/p/{case.name}", 50, duration, load_cpu, raw, headers[case.name])
                    spent = cpu_seconds([gateway.pid]) - before
                    cell.result = result
                    cell.cpu_us = spent * 1e6 / result.requests if result.requests else None
                except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                    cell.error = str(exc)
                results.cells.append(cell)
                print(f"  policy {describe(cell)}", file=sys.stderr, flush=True)
        if only is None or "ai-cached" in only:
            try:
                results.ai_uncached = _ai_uncached(base, load_cpu, logs, duration)
                print(f"  policy {results.ai_uncached[0]}", file=sys.stderr, flush=True)
            except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                results.ai_uncached = [f"- AI route, uncached decision: FAILED: {exc}"]
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        results.error = str(exc)
    finally:
        if gateway is not None:
            stop(gateway)
        if redis_process is not None:
            stop(redis_process)
        if llm is not None:
            stop(llm)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def describe(cell: PolicyCell) -> str:
    if cell.result is None:
        return f"{cell.scenario}: FAILED: {cell.error}"
    r = cell.result
    cpu = f", {cell.cpu_us:.0f} µs CPU/req" if cell.cpu_us else ""
    errors = f", {r.errors} ERRORS" if r.errors else ""
    return f"{cell.scenario}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.3f} ms{cpu}{errors}"


def ratios(results: PolicyResults, scenario: str, baseline: str = "plain", by: str = "rps") -> list[float]:
    """Per round, the scenario's throughput relative to the baseline's (both error-free): by
    requests/s (``rps``), or by the gateway's own CPU per request (``cpu``: baseline µs / scenario
    µs), which wrk's and the upstream's share of the machine disturb much less."""
    by_key = {(c.round, c.scenario): c for c in results.cells}
    values = []
    for round_no in sorted({c.round for c in results.cells}):
        mine, plain = by_key.get((round_no, scenario)), by_key.get((round_no, baseline))
        if not (mine and plain and mine.result and plain.result) or mine.result.errors or plain.result.errors:
            continue
        if by == "rps":
            values.append(mine.result.rps / plain.result.rps)
        elif mine.cpu_us and plain.cpu_us:
            values.append(plain.cpu_us / mine.cpu_us)
    return values


def report_lines(results: PolicyResults) -> list[str]:
    if results.error and not results.cells:
        return [f"Policy benchmark failed: {results.error}"]
    lines = []
    goals = (
        ("JWT HS256 + memory rate limit", "hs256+ratelimit-memory", GOAL, f"≥ {GOAL:.0%} of plain"),
        ("Cache hit", "cache-hit", CACHE_GOAL, f"≥ {CACHE_GOAL:g}x plain"),
        ("5 header rules + 1 path rule", "transform", TRANSFORM_GOAL, f"≥ {TRANSFORM_GOAL:.0%} of plain"),
        ("AI route, cached decision", "ai-cached", AI_GOAL, f"≥ {AI_GOAL:.0%} of the same route without AI"),
    )
    for label, scenario, target, wording in goals:
        baseline = BASELINES.get(scenario, "plain")
        against = "plain-proxy" if baseline == "plain" else f"`{baseline}` route"
        for by, measure in (("rps", "throughput"), ("cpu", "throughput by gateway CPU per request")):
            per_round = ratios(results, scenario, baseline, by)
            if not per_round:
                continue
            value = statistics.median(per_round)
            verdict = "met" if value >= target else "NOT met"
            rounds = ", ".join(f"{v * 100:.1f}%" for v in per_round)
            lines.append(
                f"- {'**' if by == 'rps' else '(noise-robust) '}{label}: {value * 100:.1f}% of {against} "
                f"{measure}{'**' if by == 'rps' else ''} (goal {wording}: {verdict}; per round: {rounds})"
            )
    lines += results.ai_uncached
    lines.append("")
    lines += [
        "| route policy | req/s (median) | vs plain (median of per-round ratios) | p50 ms | SUT CPU µs/req |",
        "|---|---:|---:|---:|---:|",
    ]
    names = list(dict.fromkeys(c.scenario for c in results.cells))
    for name in names:
        done = [c for c in results.cells if c.scenario == name and c.result and not c.result.errors]
        if not done:
            lines.append(f"| {name} | failed | | | |")
            continue
        rps = statistics.median(c.result.rps for c in done if c.result)
        p50 = statistics.median(c.result.p50_ms for c in done if c.result)
        cpu_values = [c.cpu_us for c in done if c.cpu_us]
        cpu = f"{statistics.median(cpu_values):.0f}" if cpu_values else "n/a"
        share = ratios(results, name)
        ratio = f"{statistics.median(share) * 100:.1f}%" if share else "n/a"
        lines.append(f"| {name} | {rps:,.0f} | {ratio} | {p50:.3f} | {cpu} |")
    if results.error:
        lines += ["", f"(stopped early: {results.error})"]
    return lines
