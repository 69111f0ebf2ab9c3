"""``make bench``: Kairos against a bare aiohttp proxy, asgiproxy and nginx, plus route matching, the
dashboard's pages and FTP transfers through Kairos against the same transfers direct.

Why it is built this way (a 2-core, noisy machine):

- every SUT runs on CPU 0 alone; wrk, the upstream nginx and this script share CPU 1, so a SUT
  never competes with its own load generator;
- the SUTs are interleaved: each round starts, warms up, measures and stops every SUT in turn
  (order rotated per round), so slow drift of the machine hits all SUTs alike;
- goals are ratios computed within a round and reported as the median across rounds;
- SUT CPU time per request (from /proc) is reported next to throughput: it is the number that
  does not depend on how busy the neighbours were.

Usage: ``bench/run.py [--quick] [--rounds N] [--duration S]`` (``make bench BENCH_ARGS=--quick``);
``--policies NAMES``, ``--dashboard``, ``--ftp``, ``--dns``, ``--workers`` or ``--llm`` run only that part
and print its report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from dashboard import ROUTES as DASHBOARD_ROUTES
from dashboard import DashboardResults
from dashboard import report_lines as dashboard_lines
from dns_bench import DnsResults
from dns_bench import report_lines as dns_lines
from ftp import FtpResults
from ftp import report_lines as ftp_lines
from llm_bench import LlmResults
from llm_bench import report_lines as llm_lines
from load import run_wrk
from policies import PolicyResults, report_lines, run_policy_bench, scenarios, selected
from procs import cpus, pinned
from report import CASES, Measurement, render
from route_match import TableResult
from suts import SUTS, Context, Running, Sut, snapshot_kairos, start_upstream, verify
from workers import WorkersResults
from workers import report_lines as workers_lines

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TOOLS = (("wrk", "wrk"), ("nginx", "nginx"))  # (command, Debian package)
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    policy_rounds: int  # more than `rounds`: a policy's cost is a few % of a request, within the noise
    duration: float
    warmup: float
    sut_cpu: int
    load_cpu: int
    raw_dir: Path
    code: Path  # the kairos snapshot every Python process imports
    route_iterations: int
    route_repeats: int
    dashboard_samples: int  # timed requests per dashboard page and deployment
    ftp_rounds: int  # interleaved rounds of the FTP transfers (bench/ftp.py)
    dns_rounds: int  # interleaved rounds of the DNS part (bench/dns_bench.py)
    workers_rounds: int  # interleaved rounds of Kairos --workers 2 vs nginx 2 workers (bench/workers.py)
    llm_rounds: int  # interleaved rounds of the LLM part (bench/llm_bench.py)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Kairos benchmark harness")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s measurements")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 5; 2 with --quick)")
    parser.add_argument(
        "--policies",
        metavar="NAMES",
        help="only the policy routes NAMES (comma-separated, e.g. transform,cache-hit) and their "
        "baselines, --rounds rounds (default 5); prints the report, keeps latest.md",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="only the dashboard pages with 1,000 routes (1-2 min: a page over the goal is sampled for "
        "up to 10 s); prints the report, keeps latest.md",
    )
    parser.add_argument(
        "--ftp",
        action="store_true",
        help="only the FTP transfers (100 MB each way and a 1,000-entry listing, through Kairos and "
        "direct; --rounds rounds, default 5, under a minute); prints the report, keeps latest.md",
    )
    parser.add_argument(
        "--dns",
        action="store_true",
        help="only the DNS part (dnsperf against dnsmasq, dnsdist, Kairos cached and uncached; --rounds "
        "rounds, default 5, about 3 min); prints the report, keeps latest.md",
    )
    parser.add_argument(
        "--workers",
        action="store_true",
        help="only Kairos `kairos run --workers 2` against nginx with 2 workers, both on both CPUs "
        "(--rounds rounds, default 5, about 5 min); prints the report, keeps latest.md",
    )
    parser.add_argument(
        "--llm",
        action="store_true",
        help="only the LLM routes against LiteLLM Proxy (bench/llm_bench.py: chat completions, streamed and "
        "not, time to first token; --rounds rounds, default 5, about 15 min); prints the report, keeps "
        "latest.md",
    )
    args = parser.parse_args()
    parts = (args.dashboard, args.policies, args.ftp, args.dns, args.workers, args.llm)
    if sum(bool(part) for part in parts) > 1:
        parser.error(
            "--dashboard, --policies, --ftp, --dns, --workers and --llm each run one part alone: pick one"
        )
    args.only = None
    if args.policies:
        args.only = frozenset(name.strip() for name in args.policies.split(",") if name.strip())
        try:
            selected(scenarios(""), args.only)
        except ValueError as exc:
            parser.error(f"--policies: {exc}")
    if (args.only is not None or args.ftp or args.dns or args.workers or args.llm) and args.rounds is None:
        args.rounds = 5
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    if not (1 <= args.rounds <= 20 and 0.5 <= args.duration <= 120):
        parser.error("--rounds must be 1..20 and --duration 0.5..120 (every load loop stays bounded)")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- tools -----------------------------------------------------------------------------------------


def ensure_tools() -> None:
    """Install wrk and nginx from Debian if missing. Package postinst scripts must not start the
    system nginx (it would take port 80 and outlive us), hence a temporary policy-rc.d."""
    missing = [package for command, package in TOOLS if shutil.which(command, path=SBIN_PATH) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench needs {' and '.join(missing)}: install them (apt-get install {' '.join(missing)})")
    log(f"installing {', '.join(missing)} with apt-get")
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        # apt's chatter goes to stderr: stdout carries only the report.
        for command in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *missing]):
            subprocess.run(["apt-get", *command], check=True, env=env, timeout=600, stdout=sys.stderr)
    finally:
        if created:
            policy.unlink()


# -- measuring -------------------------------------------------------------------------------------


def measure_case(running: Running, round_no: int, body: str, conns: int, settings: Settings) -> Measurement:
    """One wrk run with the SUT's CPU time read just before and after it."""
    cell = Measurement(round_no, running.name, body, conns)
    if not running.alive():
        return replace(cell, error="SUT process exited")
    raw = settings.raw_dir / f"r{round_no}-{running.name}.txt"
    try:
        before = running.cpu()
        result = run_wrk(f"{running.base_url}/{body}", conns, settings.duration, settings.load_cpu, raw)
        after = running.cpu()
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        return replace(cell, error=str(exc))
    cpu_us = None
    if before is not None and after is not None and result.requests:
        cpu_us = (after - before) * 1e6 / result.requests
    return replace(cell, result=result, cpu_us=cpu_us)


def measure_sut(sut: Sut, round_no: int, upstream: str, settings: Settings) -> list[Measurement]:
    """Start, verify, warm up (discarded), measure every case, stop; a failure fails this SUT's round."""
    running: Running | None = None
    try:
        try:
            running = sut.start(Context(upstream, settings.sut_cpu, settings.raw_dir, settings.code))
            verify(running)
            run_wrk(f"{running.base_url}/small", 50, settings.warmup, settings.load_cpu)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            log(f"  {sut.name}: FAILED to start: {exc}")
            return [Measurement(round_no, sut.name, body, conns, error=str(exc)) for body, conns in CASES]
        cells = []
        for body, conns in CASES:
            cell = measure_case(running, round_no, body, conns, settings)
            log(f"  {describe(cell)}")
            cells.append(cell)
        return cells
    finally:
        if running is not None:
            running.stop()


def describe(cell: Measurement) -> str:
    where = f"{cell.sut} {cell.body} c={cell.connections}:"
    if cell.result is None:
        return f"{where} FAILED: {cell.error}"
    r = cell.result
    cpu = f", {cell.cpu_us:.0f} µs CPU/req" if cell.cpu_us is not None else ""
    errors = f", {r.errors} ERRORS" if r.errors else ""
    return f"{where} {r.rps:,.0f} req/s, p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms{cpu}{errors}"


def run_rounds(settings: Settings) -> tuple[list[Measurement], PolicyResults]:
    upstream = start_upstream(settings.load_cpu)
    measurements: list[Measurement] = []
    try:
        for round_no in range(1, settings.rounds + 1):
            shift = (round_no - 1) % len(SUTS)
            order = SUTS[shift:] + SUTS[:shift]
            log(f"round {round_no}/{settings.rounds}: {', '.join(sut.name for sut in order)}")
            for sut in order:
                measurements += measure_sut(sut, round_no, upstream.base_url, settings)
        log(f"policy cost: {settings.policy_rounds} round(s) x {len(scenarios(''))} routes in one process")
        policies = run_policy_bench(
            upstream.base_url,
            settings.sut_cpu,
            settings.load_cpu,
            settings.code,
            settings.raw_dir,
            settings.policy_rounds,
            settings.duration,
        )
    finally:
        upstream.stop()
    return measurements, policies


def policies_only(settings: Settings, only: frozenset[str]) -> str:
    """A reduced policy run (``--policies``): the routes asked for and their baselines, nothing else."""
    snapshot = snapshot_kairos(settings.code)
    upstream = start_upstream(settings.load_cpu)
    try:
        results = run_policy_bench(
            upstream.base_url,
            settings.sut_cpu,
            settings.load_cpu,
            settings.code,
            settings.raw_dir,
            settings.rounds,
            settings.duration,
            only,
        )
    finally:
        upstream.stop()
    head = (
        f"Policy routes only ({', '.join(sorted(only))} and baselines), {settings.rounds} rounds x "
        f"{settings.duration:g} s, c=50; kairos code: {snapshot}"
    )
    return "\n".join([head, "", *report_lines(results)])


def dashboard_only(settings: Settings) -> str:
    """The dashboard pages alone (``--dashboard``): one gateway with 1,000 routes, nothing else."""
    snapshot = snapshot_kairos(settings.code)
    results = run_dashboard_bench(settings)
    head = (
        f"Dashboard pages only, {results.routes:,} routes, {settings.dashboard_samples} requests per page; "
        f"kairos code: {snapshot}"
    )
    return "\n".join([head, "", *dashboard_lines(results)])


def run_route_bench(settings: Settings) -> tuple[list[TableResult] | None, str | None]:
    """In a child pinned to the (now idle) SUT CPU, so the timing is not shared with this script."""
    command = [sys.executable, str(BENCH / "route_match.py"), "--json"]
    command += ["--iterations", str(settings.route_iterations), "--repeats", str(settings.route_repeats)]
    env = {**os.environ, "PYTHONPATH": str(settings.code)}
    try:
        done = subprocess.run(
            pinned(settings.sut_cpu, command),
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            cwd=settings.code,
            env=env,
        )
        return [TableResult(**item) for item in json.loads(done.stdout)], None
    except subprocess.CalledProcessError as exc:
        return None, exc.stderr.strip()[-300:]
    except (subprocess.TimeoutExpired, ValueError, TypeError) as exc:
        return None, str(exc)


def run_dashboard_bench(settings: Settings) -> DashboardResults:
    """The dashboard pages (bench/dashboard.py): the child starts the gateway and the standalone
    dashboard on the SUT CPU and stops them by PID."""
    failed = DashboardResults(DASHBOARD_ROUTES, settings.dashboard_samples)
    extra = ["--samples", str(settings.dashboard_samples)]
    return run_part(
        "dashboard.py", extra, settings, DashboardResults.from_json, failed, timeout=600, cwd=settings.code
    )


P = TypeVar("P")


def run_part(
    script: str,
    extra: list[str],
    settings: Settings,
    parse: Callable[[Any], P],
    failed: P,
    timeout: float = 1200,
    cwd: Path | None = None,
) -> P:
    """A self-contained part (bench/ftp.py, bench/dns_bench.py) in a child on the load CPU: it is the
    client's side, starts its servers (the SUT pinned to the SUT CPU) and stops them by PID; its
    progress goes to our stderr, its ``--json`` result to ``parse``. Stopped with SIGTERM, never
    SIGKILL first, so its ``finally`` stops those servers. ``failed`` (with ``errors``) otherwise."""
    command = [sys.executable, str(BENCH / script), "--json", *extra]
    command += ["--code", str(settings.code), "--logs", str(settings.raw_dir)]
    command += ["--sut-cpu", str(settings.sut_cpu), "--load-cpu", str(settings.load_cpu)]
    env = {**os.environ, "PYTHONPATH": str(settings.code)}
    errors: dict[str, str] = getattr(failed, "errors")  # noqa: B009  (every results class has it)
    child = subprocess.Popen(
        pinned(settings.load_cpu, command),
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd or BENCH.parent,
        env=env,
    )
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        errors["setup"] = f"bench/{script} did not finish within {timeout:.0f} s"
        return failed
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    if child.returncode != 0:
        errors["setup"] = f"bench/{script} exited with code {child.returncode} (see its stderr)"
        return failed
    try:
        return parse(json.loads(out))
    except (ValueError, TypeError, KeyError) as exc:
        errors["setup"] = f"unreadable output of bench/{script}: {exc}"
        return failed


def run_ftp_bench(settings: Settings) -> FtpResults:
    failed = FtpResults(0, 0, settings.ftp_rounds, 0, 0)
    return run_part("ftp.py", ["--rounds", str(settings.ftp_rounds)], settings, FtpResults.from_json, failed)


def run_dns_bench(settings: Settings) -> DnsResults:
    failed = DnsResults(settings.dns_rounds, 0, 0, 0, 0, 0, 0, 0)
    extra = ["--rounds", str(settings.dns_rounds)]
    return run_part("dns_bench.py", extra, settings, DnsResults.from_json, failed)


def run_workers_bench(settings: Settings) -> WorkersResults:
    """Kairos ``--workers 2`` against nginx with 2 workers (bench/workers.py), both SUTs on both CPUs."""
    failed = WorkersResults(settings.workers_rounds, settings.duration)
    extra = ["--rounds", str(settings.workers_rounds), "--duration", f"{settings.duration:g}"]
    return run_part("workers.py", extra, settings, WorkersResults.from_json, failed)


def workers_only(settings: Settings) -> str:
    """The workers part alone (``--workers``): Kairos with 2 workers, nginx with 2, Kairos with 1."""
    snapshot = snapshot_kairos(settings.code)
    results = run_workers_bench(settings)
    head = (
        f"Kairos --workers 2 vs nginx with 2 workers only, {settings.workers_rounds} rounds x "
        f"{settings.duration:g} s; kairos code: {snapshot}"
    )
    return "\n".join([head, "", *workers_lines(results)])


def run_llm_bench(settings: Settings) -> LlmResults:
    """The LLM routes against LiteLLM Proxy (bench/llm_bench.py): it installs LiteLLM Proxy in its own
    venv once, starts the fake provider (load CPU) and the gateways (SUT CPU), stops them by PID."""
    failed = LlmResults(settings.llm_rounds)
    extra = ["--rounds", str(settings.llm_rounds), "--duration", f"{max(settings.duration, 1.0):g}"]
    return run_part("llm_bench.py", extra, settings, LlmResults.from_json, failed, timeout=1800)


def llm_only(settings: Settings) -> str:
    """The LLM part alone (``--llm``): Kairos (direct and litellm transports, analytics on) and LiteLLM
    Proxy in front of the same fake provider."""
    snapshot = snapshot_kairos(settings.code)
    results = run_llm_bench(settings)
    head = f"LLM routes against LiteLLM Proxy only, {settings.llm_rounds} rounds; kairos code: {snapshot}"
    return "\n".join([head, "", *llm_lines(results)])


def dns_only(settings: Settings) -> str:
    """The DNS part alone (``--dns``): dnsperf against dnsmasq, dnsdist and Kairos (cached, uncached)."""
    snapshot = snapshot_kairos(settings.code)
    results = run_dns_bench(settings)
    head = f"DNS forwarding only, {settings.dns_rounds} rounds; kairos code: {snapshot}"
    return "\n".join([head, "", *dns_lines(results)])


def ftp_only(settings: Settings) -> str:
    """The FTP transfers alone (``--ftp``): one Kairos, one pyftpdlib server, curl, nothing else."""
    snapshot = snapshot_kairos(settings.code)
    results = run_ftp_bench(settings)
    head = f"FTP transfers only, {settings.ftp_rounds} rounds; kairos code: {snapshot}"
    return "\n".join([head, "", *ftp_lines(results)])


# -- report ----------------------------------------------------------------------------------------


def machine_info() -> list[str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = []
    for command in (["wrk", "--version"], ["nginx", "-v"]):
        path = shutil.which(command[0], path=SBIN_PATH)
        if path:
            out = subprocess.run(
                [path, *command[1:]], capture_output=True, text=True, timeout=10, check=False
            )
            versions.append((out.stdout + out.stderr).strip().splitlines()[0])
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
        check=False,
    ).stdout.strip()
    return [
        f"nproc: {os.cpu_count()}; CPU: {model}",
        f"Python {platform.python_version()} ({sys.executable}); {platform.platform()}",
        f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}",
        f"tools: {'; '.join(versions)}",
        f"kairos revision: {revision or 'unknown'}",
    ]


def method_notes(settings: Settings) -> list[str]:
    return [
        f"SUTs pinned to CPU {settings.sut_cpu} (one process, one worker); wrk (-t1), the upstream nginx "
        f"and this script pinned to CPU {settings.load_cpu}.",
        "Upstream: nginx, worker_processes 1, keep-alive, static bodies /small (100 B) and /16k (16 KiB).",
        "Python SUTs: Kairos as `python -m kairos run` (uvicorn + uvloop + httptools behind the "
        "connection guard, kairos/server.py); the others `uvicorn APP --loop uvloop --http httptools "
        "--no-access-log --log-level warning`.",
        f"Per SUT per round: start, verify both bodies (200 + exact length), {settings.warmup:g} s warm-up "
        f"at c=50 (discarded), then {settings.duration:g} s of `wrk -t1 -cC --latency` per case "
        f"{', '.join(f'{b} c={c}' for b, c in CASES)}; then stop.",
        f"{settings.rounds} round(s), SUT order rotated each round; goal ratios computed within a round, "
        "then the median across rounds. Runs with any socket error or non-2xx answer are left out.",
        "SUT CPU µs/req: utime+stime from /proc/PID/stat (nginx: master + worker) over the wrk run / "
        "requests completed.",
        "Policy cost: one Kairos process with one route per policy (same upstream body), "
        f"`wrk -t1 -c50` for {settings.duration:g} s per route per round, {settings.policy_rounds} rounds, "
        "route order rotated each round; goals by req/s and (noise-robust) by the gateway's CPU µs per "
        "request, each the median of per-round ratios; "
        "JWT routes get a valid token on every request, rate limits are set far above the load so every "
        "request is counted and admitted; redis-server on the load CPU.",
        f"Route matching: RouteTables built via load_data → compile_route → RouteTable; "
        f"{settings.route_iterations:,} match() calls x {settings.route_repeats} repeats per path kind, "
        "median ns/match; pinned to the SUT CPU with nothing else on it.",
        f"Dashboard pages: one `kairos run` with {DASHBOARD_ROUTES:,} generated routes (static and "
        "`{param}` paths, backends on ports nothing listens on, no health checks), each route served "
        "one request first (a 502) so the per-route metric series exist; the pages measured as the "
        "gateway serves them at /admin and from a standalone `uvicorn admin.app:app` (KAIROS_URL = the "
        "gateway), both on the SUT CPU; client: httpx, one keep-alive connection, on the load CPU, "
        f"3 warm-ups then {settings.dashboard_samples} sequential requests per page, wall time until "
        "the body is read.",
        "FTP transfers (bench/ftp.py): one pyftpdlib server (tests/servers/ftp.py, root on tmpfs) on the "
        "load CPU, one `kairos run` with an ftp route in front of it on the SUT CPU; curl for every "
        "transfer (timed by curl), on the load CPU through Kairos and for `direct`, on the SUT CPU for "
        f"`direct-split`; 100 MB down and up, a 1,000-entry listing; {settings.ftp_rounds} rounds, the "
        "ways taking turns; ratios within a round, then the median across rounds.",
        "DNS forwarding (bench/dns_bench.py): dnsperf on the load CPU against dnsmasq direct, dnsdist "
        "(packet cache) and Kairos cached and uncached, each alone on the SUT CPU, forwarding to a second "
        f"dnsmasq on the load CPU; saturating runs and a 2,000 q/s latency run; {settings.dns_rounds} "
        "rounds, order rotated, medians; the gateway's RSS over 100,000 queries.",
        "Workers (bench/workers.py): `kairos run --workers 2` and nginx `proxy_pass` with "
        "`worker_processes 2`, each free to use both CPUs, and `kairos run` (one process, SUT CPU) as "
        "the reference; wrk and the upstream nginx on the load CPU; per SUT and round a "
        f"{settings.warmup:g} s warm-up, then {settings.duration:g} s of wrk at small c=1, small c=50 "
        "and 16k c=50; "
        f"{settings.workers_rounds} rounds, order rotated, ratios within a round, medians.",
        "LLM routes (bench/llm_bench.py): the tests' fake OpenAI-compatible provider on the load CPU; "
        "Kairos with one `llm` route (default transport, analytics off; analytics on; the litellm "
        "transport) and LiteLLM Proxy, each alone on the SUT CPU; wrk at c=1 and c=50 per kind "
        "(non-streaming, streaming 16 words), 300 sequential streams for time to first token; "
        f"{settings.llm_rounds} rounds, order rotated, ratios within a round, medians.",
    ]


def write_report(text: str, stamp: datetime) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / "latest.md", RESULTS / f"{stamp:%Y-%m-%d-%H%M}.md"]
    for path in paths:
        path.write_text(text)
    return paths


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP become SystemExit so every ``finally`` stops its servers."""
    raise SystemExit(128 + signum)


def benchmark(settings: Settings, stamp: datetime, machine: list[str]) -> str:
    """All HTTP rounds, then the route-matching benchmark and the dashboard pages; returns the
    markdown report."""
    per_round = len(SUTS) * (settings.warmup + len(CASES) * settings.duration + 2)
    policy_seconds = settings.policy_rounds * len(scenarios("")) * settings.duration
    estimate = (
        settings.rounds * per_round
        + policy_seconds
        + 60
        + 60
        + 25 * settings.ftp_rounds
        + 30 * settings.dns_rounds
        + settings.workers_rounds * 3 * (settings.warmup + 3 * settings.duration + 5)
        + 90
        + settings.llm_rounds * 150
    )
    log(f"benchmark: {settings.rounds} round(s) x {len(SUTS)} SUTs, about {estimate / 60:.0f} min")
    measurements, policies = run_rounds(settings)
    machine.append(f"load average at end of the HTTP rounds: {Path('/proc/loadavg').read_text().split()[:3]}")
    log("route matching micro-benchmark")
    route_results, route_error = run_route_bench(settings)
    log(f"dashboard pages with {DASHBOARD_ROUTES:,} routes")
    dashboard = run_dashboard_bench(settings)
    log(f"FTP transfers: {settings.ftp_rounds} round(s)")
    ftp = run_ftp_bench(settings)
    log(f"DNS forwarding: {settings.dns_rounds} round(s)")
    dns = run_dns_bench(settings)
    log(f"Kairos --workers 2 vs nginx 2 workers: {settings.workers_rounds} round(s)")
    workers = run_workers_bench(settings)
    log(f"LLM routes against LiteLLM Proxy: {settings.llm_rounds} round(s)")
    llm = run_llm_bench(settings)
    return render(
        title=f"Kairos benchmark, {stamp:%Y-%m-%d %H:%M}",
        machine=machine,
        method=method_notes(settings),
        suts=[(sut.name, sut.description) for sut in SUTS],
        measurements=measurements,
        rounds=settings.rounds,
        route_results=route_results,
        route_error=route_error,
        policies=policies,
        dashboard=dashboard,
        ftp=ftp,
        dns=dns,
        workers=workers,
        llm=llm,
    )


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not (args.dashboard or args.ftp or args.dns):  # these parts need neither wrk nor nginx
        ensure_tools()
    stamp = datetime.now()
    started = time.monotonic()
    sut_cpu, load_cpu = cpus()
    os.sched_setaffinity(0, {load_cpu})  # keep this orchestrator off the SUT's CPU
    with tempfile.TemporaryDirectory(prefix="kairos-bench-code-") as code:
        settings = Settings(
            rounds=args.rounds,
            policy_rounds=args.rounds if args.quick else max(args.rounds, 5),
            duration=args.duration,
            warmup=min(2.0, args.duration),
            sut_cpu=sut_cpu,
            load_cpu=load_cpu,
            raw_dir=RESULTS / "raw" / f"{stamp:%Y-%m-%d-%H%M%S}",
            code=Path(code),
            route_iterations=50_000 if args.quick else 100_000,
            route_repeats=3 if args.quick else 5,
            dashboard_samples=10 if args.quick else 30,
            ftp_rounds=args.rounds if args.ftp else (1 if args.quick else 5),
            dns_rounds=args.rounds if args.dns else (1 if args.quick else 5),
            workers_rounds=args.rounds if args.workers else (1 if args.quick else 3),
            llm_rounds=args.rounds if args.llm else (1 if args.quick else 3),
        )
        settings.raw_dir.mkdir(parents=True, exist_ok=True)
        if args.only is not None:
            print(policies_only(settings, args.only))
            log(f"done in {time.monotonic() - started:.0f} s; raw wrk output in {settings.raw_dir}")
            return
        if args.dashboard:
            print(dashboard_only(settings))
            log(f"done in {time.monotonic() - started:.0f} s; server logs in {settings.raw_dir}")
            return
        if args.ftp:
            print(ftp_only(settings))
            log(f"done in {time.monotonic() - started:.0f} s; server logs in {settings.raw_dir}")
            return
        if args.dns:
            print(dns_only(settings))
            log(f"done in {time.monotonic() - started:.0f} s; server logs in {settings.raw_dir}")
            return
        if args.workers:
            print(workers_only(settings))
            log(f"done in {time.monotonic() - started:.0f} s; server logs in {settings.raw_dir}")
            return
        if args.llm:
            print(llm_only(settings))
            log(f"done in {time.monotonic() - started:.0f} s; server logs in {settings.raw_dir}")
            return
        machine = machine_info()
        snapshot = snapshot_kairos(settings.code)
        machine.append(f"kairos code measured: {snapshot}")
        log(f"kairos code: {snapshot}")
        text = benchmark(settings, stamp, machine)
    print(text)
    paths = write_report(text, stamp)
    wrote = ", ".join(str(path) for path in paths)
    log(f"done in {time.monotonic() - started:.0f} s; wrote {wrote}; raw wrk output in {settings.raw_dir}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers were already stopped by the finally blocks on the way up
        log("interrupted")
        sys.exit(130)
