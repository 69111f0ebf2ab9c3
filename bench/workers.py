"""Kairos with ``kairos run --workers 2`` against nginx with ``worker_processes 2``, same run.

The rest of ``make bench`` measures one process on one core; this part measures what an operator
runs on a whole (2-core) machine: the gateway's two workers, or nginx's two, free to use both CPUs
(``taskset -c SUT,LOAD``). The upstream (the HTTP bench's nginx with its 100-byte and 16 KiB static
bodies) and wrk stay pinned to the load CPU as everywhere else, so the SUT's second worker shares
that CPU with the load generator: that is the price of measuring two workers on two cores, and both
SUTs pay it alike. As a reference, ``kairos-w1`` is the usual single Kairos process on the SUT CPU
alone, so the report also says what the second worker buys here.

SUTs, each started, verified (200 and the exact body length), warmed up, measured and stopped in
turn, their order rotated every round:

- ``kairos-w2``: ``python -m kairos run --workers 2`` (uvicorn's supervisor and two spawned worker
  processes sharing one listening socket; the multiprocess metrics directory that ``kairos run``
  makes for them);
- ``nginx-w2``: nginx ``proxy_pass`` with upstream keep-alive, ``worker_processes 2`` and
  ``listen ... reuseport`` (without it, wrk's connections, opened at once, all went to one worker);
- ``kairos-w1``: ``python -m kairos run`` (one process) on the SUT CPU only.

Cases: ``wrk -t1 -cC --latency`` for ``--duration`` seconds each: small c=1 (latency floor), small
c=50 (throughput, and latency under load), 16k c=50. The SUT's CPU time is read from /proc for every
process of it (supervisor, workers, nginx master), and the share of the busiest worker tells whether
the kernel spread the connections over both workers. The ratio Kairos / nginx is taken within a
round, then the median across rounds is the figure; so is the ratio their CPU time per request
implies (nginx's over Kairos's), which moves far less with what the machine's other tenants do.
Every wrk run is bounded by its duration and a subprocess timeout, the whole part by
``RUN_SECONDS``; every process is stopped by its PID.

Run alone: ``.venv/bin/python bench/workers.py [--rounds N] [--duration S] [--json]``, or
``make bench BENCH_ARGS=--workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from load import run_wrk
from procs import children, cpu_seconds, cpus, free_port, start, wait_ready
from suts import Running, kairos_config, nginx_conf, start_upstream, verify

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
DURATION = 5.0
WARMUP = 2.0  # seconds of discarded load at c=50 after each start
CASES: tuple[tuple[str, int], ...] = (("small", 1), ("small", 50), ("16k", 50))
RUN_SECONDS = 1200.0  # the whole measurement: rounds not started by then are skipped
START_SECONDS = 60.0  # a SUT not ready (every worker up) by then fails its round
SUT_NAMES = ("kairos-w2", "nginx-w2", "kairos-w1")
DESCRIPTIONS = {
    "kairos-w2": "`kairos run --workers 2`, both CPUs",
    "nginx-w2": "nginx `proxy_pass`, `worker_processes 2`, `listen ... reuseport`, upstream keep-alive, "
    "both CPUs",
    "kairos-w1": "`kairos run` (one process), the SUT CPU only (reference)",
}


@dataclass(frozen=True, slots=True)
class Cell:
    """One wrk run against one SUT. ``split`` is each worker's share of the SUT's worker CPU time
    during the run, busiest first (a lopsided split means one worker took most connections)."""

    round: int
    sut: str
    body: str
    connections: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_us: float | None = None
    split: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class WorkersResults:
    rounds: int
    duration: float
    cells: list[Cell] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "setup" or "round N SUT" -> what failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkersResults:
        return cls(
            data["rounds"],
            data["duration"],
            [Cell(**cell) for cell in data["cells"]],
            dict(data["errors"]),
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def taskset(cpu_list: list[int], command: list[str]) -> list[str]:
    """``command`` confined to ``cpu_list`` (and everything it forks): ``procs.pinned`` takes one CPU."""
    program = shutil.which("taskset")
    return [program, "-c", ",".join(map(str, cpu_list)), *command] if program else command


# -- starting the SUTs ------------------------------------------------------------------------------


def worker_pids(running: Running) -> list[int]:
    """The PIDs that serve requests: nginx's workers, or the uvicorn workers (``spawn_main``
    children; not multiprocessing's resource tracker). Kairos with one process serves itself."""
    if running.process is None:
        return []
    if running.name.startswith("nginx"):
        return [pid for pid, _ in running.workers]
    found = []
    for pid, _ in running.workers:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(pid)
    return found or [running.process.pid]


def start_kairos(
    name: str, workers: int, cpu_list: list[int], upstream_port: int, logs: Path, code: Path
) -> Running:
    """``python -m kairos run [--workers N]`` on ``cpu_list``; ready once ``/ready`` answers and all
    ``workers`` processes exist (uvicorn starts them one after the other)."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f"kairos-bench-{name}-"))
    config = tmpdir / "config.json"
    config.write_text(json.dumps(kairos_config(upstream_port), indent=2))
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "KAIROS_CONFIG_PATH": str(config),
        "KAIROS_CONFIG_WATCH": "false",
        "KAIROS_LOG_LEVEL": "warning",
        "KAIROS_DRAIN_DELAY": "0",  # stop at once: the bench has no load balancer to warn
    }
    port = free_port()
    command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = start(taskset(cpu_list, command), logs / f"{name}.log", env, cwd=code)
    running = Running(name, f"http://127.0.0.1:{port}", process, tmpdir=tmpdir)
    try:
        wait_ready(running.base_url + "/ready", process, timeout=START_SECONDS)
        deadline = time.monotonic() + START_SECONDS
        while True:
            running.workers = children(process.pid)
            if workers == 1 or len(worker_pids(running)) >= workers:
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{len(worker_pids(running))} of {workers} workers up")
            time.sleep(0.2)
        wait_ready(running.base_url + "/ready", process, timeout=START_SECONDS)
    except BaseException as exc:
        running.stop()
        raise RuntimeError(f"{name}: {exc}; see {logs / f'{name}.log'}") from None
    return running


def start_nginx_proxy(name: str, workers: int, cpu_list: list[int], upstream: str, logs: Path) -> Running:
    """nginx as the reverse proxy, in the foreground (its master is our child with a known PID)."""
    prefix = Path(tempfile.mkdtemp(prefix=f"kairos-bench-{name}-"))
    (prefix / "tmp").mkdir()
    origin = upstream.removeprefix("http://")
    pool = f"    upstream origin {{ server {origin}; keepalive 64; keepalive_requests 1000000; }}"
    body = """        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, port, body, pool, workers=workers))
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "nginx"
    command = [nginx, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", "nginx.conf"]
    command += ["-g", "daemon off;"]
    process = start(taskset(cpu_list, command), logs / f"{name}.log")
    running = Running(name, f"http://127.0.0.1:{port}", process, tmpdir=prefix)
    try:
        wait_ready(running.base_url + "/small", process)
        deadline = time.monotonic() + START_SECONDS
        while len(children(process.pid)) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {workers} nginx workers")
            time.sleep(0.1)
        running.workers = children(process.pid)
    except BaseException as exc:
        error_log = prefix / "error.log"
        text = error_log.read_text(errors="replace") if error_log.exists() else ""
        running.stop()
        raise RuntimeError(f"nginx {name} did not start: {exc}; {text.strip()[-300:]}") from None
    return running


# -- measuring --------------------------------------------------------------------------------------


def worker_cpu(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def measure_case(
    running: Running, round_no: int, body: str, conns: int, duration: float, load_cpu: int, raw: Path
) -> Cell:
    """One wrk run with the SUT's CPU time (all its processes, and per worker) read around it."""
    if not running.alive():
        return Cell(round_no, running.name, body, conns, error="SUT process exited")
    workers = worker_pids(running)
    try:
        before, per_before = running.cpu(), worker_cpu(workers)
        result = run_wrk(f"{running.base_url}/{body}", conns, duration, load_cpu, raw)
        after, per_after = running.cpu(), worker_cpu(workers)
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        return Cell(round_no, running.name, body, conns, error=str(exc))
    cpu_us = None
    if before is not None and after is not None and result.requests:
        cpu_us = (after - before) * 1e6 / result.requests
    spent = [per_after[pid] - per_before[pid] for pid in workers]
    split = sorted((value / sum(spent) for value in spent), reverse=True) if sum(spent) > 0 else []
    return Cell(
        round_no,
        running.name,
        body,
        conns,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        result.requests,
        result.errors,
        cpu_us,
        [round(share, 3) for share in split],
    )


def describe(cell: Cell) -> str:
    where = f"{cell.sut} {cell.body} c={cell.connections}:"
    if cell.error is not None:
        return f"{where} FAILED: {cell.error}"
    cpu = f", {cell.cpu_us:.0f} µs CPU/req" if cell.cpu_us is not None else ""
    split = f", workers {'/'.join(f'{share:.0%}' for share in cell.split)}" if len(cell.split) > 1 else ""
    errors = f", {cell.errors} ERRORS" if cell.errors else ""
    latency = f"p50 {cell.p50_ms:.3f} ms, p99 {cell.p99_ms:.3f} ms"
    return f"{where} {cell.rps:,.0f} req/s, {latency}{cpu}{split}{errors}"


def run(
    rounds: int = ROUNDS,
    duration: float = DURATION,
    sut_cpu: int | None = None,
    load_cpu: int | None = None,
    code: Path = ROOT,
    logs: Path | None = None,
) -> WorkersResults:
    """The upstream on the load CPU for the whole run; each round starts, measures and stops every
    SUT in turn (order rotated), so drift of the machine hits them alike."""
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    both = sorted({sut_cpu, load_cpu})
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-workers-"))
    logs = logs or work
    results = WorkersResults(rounds, duration)
    upstream: Running | None = None
    try:
        upstream = start_upstream(load_cpu)
        origin = upstream.base_url
        upstream_port = int(origin.rsplit(":", 1)[1])
        starters: dict[str, Callable[[], Running]] = {
            "kairos-w2": lambda: start_kairos("kairos-w2", 2, both, upstream_port, logs, code),
            "nginx-w2": lambda: start_nginx_proxy("nginx-w2", 2, both, origin, logs),
            "kairos-w1": lambda: start_kairos("kairos-w1", 1, [sut_cpu], upstream_port, logs, code),
        }
        deadline = time.monotonic() + RUN_SECONDS
        for round_no in range(1, rounds + 1):
            if time.monotonic() > deadline:
                results.errors["time"] = f"stopped after {round_no - 1} rounds: {RUN_SECONDS:g} s bound"
                break
            shift = (round_no - 1) % len(SUT_NAMES)
            order = SUT_NAMES[shift:] + SUT_NAMES[:shift]
            log(f"workers round {round_no}/{rounds}: {', '.join(order)}")
            for name in order:
                results.cells += measure_sut(
                    name, starters[name], round_no, duration, load_cpu, logs, results
                )
    except (RuntimeError, ValueError, KeyError, OSError, subprocess.SubprocessError) as exc:
        results.errors["setup"] = f"{type(exc).__name__}: {exc}"
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def measure_sut(
    name: str,
    starter: Callable[[], Running],
    round_no: int,
    duration: float,
    load_cpu: int,
    logs: Path,
    results: WorkersResults,
) -> list[Cell]:
    """Start, verify, warm up (discarded), every case, stop; a failure fails this SUT's round."""
    running: Running | None = None
    try:
        try:
            running = starter()
            verify(running)
            run_wrk(f"{running.base_url}/small", 50, WARMUP, load_cpu)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            log(f"  {name}: FAILED to start: {exc}")
            results.errors[f"round {round_no} {name}"] = str(exc)
            return [Cell(round_no, name, body, conns, error=str(exc)) for body, conns in CASES]
        cells = []
        for body, conns in CASES:
            cell = measure_case(
                running, round_no, body, conns, duration, load_cpu, logs / f"r{round_no}-{name}.txt"
            )
            log(f"  {describe(cell)}")
            cells.append(cell)
        return cells
    finally:
        if running is not None:
            running.stop()


# -- summaries ---------------------------------------------------------------------------------------


def _good(results: WorkersResults, sut: str, body: str, conns: int) -> list[Cell]:
    return [
        c
        for c in results.cells
        if (c.sut, c.body, c.connections) == (sut, body, conns) and c.error is None and not c.errors
    ]


def per_round(
    results: WorkersResults, body: str, conns: int, sut: str, other: str, by_cpu: bool = False
) -> list[float]:
    """``sut``'s req/s over ``other``'s, per round where both ran without errors; ``by_cpu``: the
    ratio their CPU time per request implies (``other``'s over ``sut``'s), which depends far less on
    what the machine's other tenants did during the run."""
    values = []
    for round_no in range(1, results.rounds + 1):
        a = [c for c in _good(results, sut, body, conns) if c.round == round_no]
        b = [c for c in _good(results, other, body, conns) if c.round == round_no]
        if not (a and b):
            continue
        if by_cpu:
            if a[0].cpu_us and b[0].cpu_us:
                values.append(b[0].cpu_us / a[0].cpu_us)
        elif b[0].rps:
            values.append(a[0].rps / b[0].rps)
    return values


def median_of(cells: list[Cell], attribute: str) -> float | None:
    values = [getattr(c, attribute) for c in cells if getattr(c, attribute) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def headline_lines(results: WorkersResults | None) -> list[str]:
    """The report's headline: Kairos 2 workers against nginx 2 workers at c=50 (req/s, p50, p99),
    and what the second Kairos worker buys here."""
    if results is None or not results.cells:
        failure = "; ".join(results.errors.values()) if results else "not run"
        return [f"- Kairos `--workers 2` vs nginx 2 workers: n/a ({_short(failure)})"]
    ratios = per_round(results, "small", 50, "kairos-w2", "nginx-w2")
    if not ratios:
        return ["- Kairos `--workers 2` vs nginx 2 workers: n/a (a SUT failed in every round)"]
    kairos = _good(results, "kairos-w2", "small", 50)
    nginx = _good(results, "nginx-w2", "small", 50)
    rounds = ", ".join(f"{value * 100:.1f}%" for value in ratios)
    lines = [
        f"- **Kairos `--workers 2` vs nginx `worker_processes 2`, both CPUs, c=50: "
        f"{statistics.median(ratios) * 100:.1f}% of nginx's req/s** (reported; per round: {rounds}); "
        f"p50 {_fmt(median_of(kairos, 'p50_ms'), '.3f')} vs {_fmt(median_of(nginx, 'p50_ms'), '.3f')} ms, "
        f"p99 {_fmt(median_of(kairos, 'p99_ms'), '.3f')} vs {_fmt(median_of(nginx, 'p99_ms'), '.3f')} ms"
    ]
    by_cpu = per_round(results, "small", 50, "kairos-w2", "nginx-w2", by_cpu=True)
    if by_cpu:
        per = ", ".join(f"{value * 100:.1f}%" for value in by_cpu)
        lines.append(
            f"- (noise-robust) Kairos `--workers 2` vs nginx 2 workers by CPU per request, c=50: "
            f"{statistics.median(by_cpu) * 100:.1f}% (per round: {per})"
        )
    scaling = per_round(results, "small", 50, "kairos-w2", "kairos-w1")
    if scaling:
        per = ", ".join(f"{value:.2f}" for value in scaling)
        lines.append(
            f"- Kairos 2 workers on 2 CPUs vs 1 process on 1 CPU (c=50): {statistics.median(scaling):.2f}x "
            f"the req/s (per round: {per}; the second CPU also runs wrk and the upstream)"
        )
    return lines


def report_lines(results: WorkersResults) -> list[str]:
    if not results.cells:
        return [f"Workers benchmark FAILED: {_short('; '.join(results.errors.values()))}"]
    lines = [
        "Each SUT started, verified, warmed up (2 s at c=50, discarded), then `wrk -t1 --latency` for "
        f"{results.duration:g} s per case; {results.rounds} rounds, SUT order rotated; medians across "
        "rounds (ratios within a round). wrk and the upstream nginx (1 worker) on the load CPU; the "
        "2-worker SUTs may use both CPUs, so their second worker shares the load CPU with wrk. CPU "
        "µs/req: every process of the SUT (uvicorn's supervisor and workers, nginx's master and "
        "workers) from /proc; worker split: each worker's share of the workers' CPU time at c=50.",
        "",
        *(f"- `{name}`: {DESCRIPTIONS[name]}" for name in SUT_NAMES),
        "",
        "| SUT | req/s c=50 | p50 c=50 | p99 c=50 | CPU µs/req c=50 | worker split c=50 | req/s c=1 "
        "| p50 c=1 | p99 c=1 | 16k req/s c=50 | 16k p99 c=50 | vs nginx-w2 c=50 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for sut in SUT_NAMES:
        loaded = _good(results, sut, "small", 50)
        single = _good(results, sut, "small", 1)
        large = _good(results, sut, "16k", 50)
        splits = [c.split for c in loaded if len(c.split) > 1]
        split = (
            "/".join(f"{statistics.median(s[i] for s in splits):.0%}" for i in range(2)) if splits else "-"
        )
        ratios = per_round(results, "small", 50, sut, "nginx-w2")
        row = [
            sut,
            _fmt(median_of(loaded, "rps"), ",.0f"),
            _fmt(median_of(loaded, "p50_ms"), ".3f", " ms"),
            _fmt(median_of(loaded, "p99_ms"), ".3f", " ms"),
            _fmt(median_of(loaded, "cpu_us"), ".0f"),
            split,
            _fmt(median_of(single, "rps"), ",.0f"),
            _fmt(median_of(single, "p50_ms"), ".3f", " ms"),
            _fmt(median_of(single, "p99_ms"), ".3f", " ms"),
            _fmt(median_of(large, "rps"), ",.0f"),
            _fmt(median_of(large, "p99_ms"), ".3f", " ms"),
            _fmt(statistics.median(ratios) * 100 if ratios else None, ".1f", "%"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per round, small c=50 (req/s; p50 / p99 ms):", ""]
    for sut in SUT_NAMES:
        rounds = []
        for round_no in range(1, results.rounds + 1):
            found = [
                c
                for c in results.cells
                if (c.sut, c.body, c.connections, c.round) == (sut, "small", 50, round_no)
            ]
            if not found or found[0].error is not None:
                rounds.append("FAILED")
                continue
            c = found[0]
            errors = f" ({c.errors} errors)" if c.errors else ""
            rounds.append(f"{c.rps:,.0f}; {c.p50_ms:.3f} / {c.p99_ms:.3f}{errors}")
        lines.append(f"- {sut}: {' | '.join(rounds)}")
    lines += ["", *headline_lines(results)]
    if results.errors:
        lines += ["", *(f"- {name} FAILED: {_short(error)}" for name, error in results.errors.items())]
    return lines


def _short(text: str) -> str:
    return (text or "unknown error").replace("|", "/").replace("\n", " ")[:300]


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP (run.py stopping this child) become SystemExit so ``finally`` stops the servers."""
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (1..20)")
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds per wrk run (0.5..60)")
    parser.add_argument("--sut-cpu", type=int, help="the SUT's CPU (the 2-worker SUTs also get the load CPU)")
    parser.add_argument("--load-cpu", type=int, help="CPU of wrk, the upstream and this script")
    parser.add_argument("--code", type=Path, default=ROOT, help="run the kairos package from here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs and wrk's output here")
    parser.add_argument("--json", action="store_true", help="machine-readable output (used by run.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not (1 <= args.rounds <= 20 and 0.5 <= args.duration <= 60):
        parser.error("--rounds must be 1..20 and --duration 0.5..60 (every load loop stays bounded)")
    for tool in ("wrk", "nginx"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            sys.exit(f"bench/workers.py needs {tool} (apt-get install {tool})")
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    results = run(args.rounds, args.duration, args.sut_cpu, args.load_cpu, args.code, args.logs)
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
