"""Dashboard pages with 1,000 routes: does every page render server-side in under 50 ms?

One gateway (``python -m kairos run``, pinned to the SUT CPU) with a generated config of 1,000
routes (static and ``{param}`` paths, several backends on 127.0.0.1 ports nothing listens on; no
health checks, so nothing is ever dialled unless a request is proxied). Each page is measured twice:

- ``in gateway``: the dashboard the gateway serves itself at ``/admin`` (it calls the admin API
  in-process, over an ASGI transport);
- ``standalone``: ``uvicorn admin.app:app`` with ``KAIROS_URL`` pointing at the gateway, also on the
  SUT CPU: the same pages plus a real HTTP hop per admin call.

Before measuring, every route serves one request (a 502: nothing listens), so the per-route metric
series exist as on a gateway that has been serving (the overview and AI pages parse them all);
``--no-traffic`` measures a gateway that has served nothing yet.
This script is the client (httpx, one keep-alive connection per deployment, on the load CPU): per
page 3 warm-up requests, then ``--samples`` sequential requests timed from the client (wall time
until the whole body is read), each page bounded in time as well as in count.

Run alone: ``.venv/bin/python bench/dashboard.py [--samples N] [--routes N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from procs import cpu_seconds, cpus, free_port, pinned, start, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 50.0  # every page's median, server-side, with 1,000 routes configured
ROUTES = 1_000
SAMPLES = 30
WARMUP = 3
PAGE_SECONDS = 10.0  # per page and deployment: stop sampling early past this (a slow page stays bounded)
TIMEOUT = 10.0  # per request
BACKENDS = 6
PREFIX = "/admin"  # KAIROS_DASHBOARD_PATH's default
DEPLOYMENTS = ("in gateway", "standalone")


@dataclass(frozen=True, slots=True)
class PageResult:
    page: str  # the path under the dashboard's root, query included
    deployment: str  # one of DEPLOYMENTS
    samples: int
    median_ms: float
    p95_ms: float
    max_ms: float
    body_bytes: int  # the last answer's body, as decoded by the client
    cpu_ms: float | None  # server CPU per request: the gateway's (plus the standalone dashboard's)


@dataclass(slots=True)
class DashboardResults:
    routes: int
    samples: int  # asked for per page (a page past PAGE_SECONDS has fewer: see PageResult.samples)
    pages: list[PageResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # deployment (or "setup") -> what failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DashboardResults:
        return cls(
            data["routes"],
            data["samples"],
            [PageResult(**page) for page in data["pages"]],
            dict(data["errors"]),
        )


def pages(routes: int) -> tuple[str, ...]:
    """The pages measured: every page of admin/app.py that a browser loads with GET, plus the
    explain fragment for a miss and for a ``{param}`` hit deep in the table."""
    service = (routes - 4) // len(SHAPES)  # the last service that has its orders route (shape 3)
    return (
        "/",
        "/routes",
        f"/routes/edit?index={routes // 2}",
        "/backends",
        "/config",
        "/ai",
        "/metrics",
        "/explain?method=GET&path=/x",
        f"/explain?method=GET&path=/api/svc{service}/users/42/orders/7",
    )


SHAPES = (
    ("/api/svc{s}/health", "/health", ["GET"]),
    ("/api/svc{s}/users", "/users", ["GET", "POST"]),
    ("/api/svc{s}/users/{{id}}", "/users/{{id}}", ["GET", "PUT", "DELETE"]),
    ("/api/svc{s}/users/{{id}}/orders/{{order_id}}", "/orders/{{order_id}}", ["GET"]),
    ("/api/svc{s}/users/me", "/me", ["GET"]),
)
"""Per service: static paths, one and two ``{param}`` segments, and a literal beside a param."""


def config(routes: int, ports: list[int]) -> dict[str, Any]:
    """A kairos-rs format config.json with ``routes`` routes over ``len(ports)`` backends; every
    other service has two backends (weighted), so the backends page has pools to show."""
    routers = []
    for index in range(routes):
        external, internal, methods = SHAPES[index % len(SHAPES)]
        service = index // len(SHAPES)
        first = ports[service % len(ports)]
        backends = [{"host": "http://127.0.0.1", "port": first, "weight": 2}]
        if service % 2:
            backends.append(
                {"host": "http://127.0.0.1", "port": ports[(service + 1) % len(ports)], "weight": 1}
            )
        routers.append(
            {
                "external_path": external.format(s=service),
                "internal_path": internal.format(s=service),
                "methods": methods,
                "backends": backends,
                "timeout_ms": 5000,
            }
        )
    return {"version": 1, "routers": routers}


def sample_path(external: str) -> str:
    return external.replace("{id}", "42").replace("{order_id}", "7")


def unused_ports(count: int) -> list[int]:
    """Ports nothing listens on right now (bound and released): connections to them are refused."""
    ports: set[int] = set()
    for _ in range(count * 50):
        ports.add(free_port())
        if len(ports) == count:
            return sorted(ports)
    raise RuntimeError(f"the kernel did not hand out {count} distinct free ports")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def login(client: httpx.Client, base: str, token: str) -> None:
    answer = client.post(f"{base}/login", data={"token": token})
    if answer.status_code != 303 or "kairos_session" not in client.cookies:
        raise RuntimeError(f"login at {base}/login answered {answer.status_code}, no session cookie")


def check(answer: httpx.Response, page: str, routes: int) -> None:
    """A page that is not what it should be (a login redirect, the unreachable banner, a short
    route list) would be timed as a fast page: refuse it."""
    if answer.status_code != 200:
        raise RuntimeError(f"{page} answered {answer.status_code}: {answer.text[:200]!r}")
    if page == "/routes" and f"{routes} of {routes} routes" not in answer.text:
        raise RuntimeError(f"/routes does not list all {routes} routes")


def measure_page(
    client: httpx.Client, base: str, page: str, routes: int, samples: int, pids: list[int], deployment: str
) -> PageResult:
    for _ in range(WARMUP):
        check(client.get(base + page), page, routes)
    timings: list[float] = []
    size = 0
    cpu_before = cpu_seconds(pids)
    deadline = time.monotonic() + PAGE_SECONDS
    while len(timings) < samples and time.monotonic() < deadline:
        started = time.perf_counter()
        answer = client.get(base + page)
        body = answer.content
        timings.append((time.perf_counter() - started) * 1000)
        check(answer, page, routes)
        size = len(body)
    cpu = (cpu_seconds(pids) - cpu_before) * 1000 / len(timings)
    return PageResult(
        page,
        deployment,
        len(timings),
        statistics.median(timings),
        percentile(timings, 0.95),
        max(timings),
        size,
        cpu,
    )


def prime(gateway: str, routes: dict[str, Any], deadline: float) -> int:
    """One request per route (502: nothing listens), so every route has its metric series."""
    served = 0
    with httpx.Client(timeout=TIMEOUT) as client:
        for route in routes["routers"]:
            if time.monotonic() > deadline:
                break
            client.request(route["methods"][0], gateway + sample_path(route["external_path"]))
            served += 1
    return served


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    samples: int = SAMPLES,
    routes: int = ROUTES,
    sut_cpu: int | None = None,
    load_cpu: int | None = None,
    code: Path = ROOT,
    logs: Path | None = None,
    traffic: bool = True,
) -> DashboardResults:
    """Start the gateway and the standalone dashboard pinned to ``sut_cpu``, measure every page of
    both from this process (pin it to ``load_cpu`` first), stop both by PID."""
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    results = DashboardResults(routes, samples)
    tmp = Path(tempfile.mkdtemp(prefix="kairos-bench-dashboard-"))
    logs = logs or tmp
    token = secrets.token_urlsafe(24)
    document = config(routes, unused_ports(BACKENDS))
    gateway = board = None
    try:
        path = tmp / "config.json"
        path.write_text(json.dumps(document, indent=2))
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "KAIROS_ADMIN_TOKEN": token,
            "KAIROS_CONFIG_PATH": str(path),
            "KAIROS_CONFIG_WATCH": "false",
            "KAIROS_LOG_LEVEL": "warning",
        }
        port = free_port()
        command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
        gateway = start(pinned(sut_cpu, command), logs / "kairos-dashboard.log", env, cwd=code)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/ready", gateway, timeout=60)
        board_port = free_port()
        command = [sys.executable, "-m", "uvicorn", "admin.app:app", "--host", "127.0.0.1"]
        command += ["--port", str(board_port), "--loop", "uvloop", "--http", "httptools"]
        command += ["--no-access-log", "--log-level", "warning"]
        board_env = {**env, "KAIROS_URL": base}
        board = start(pinned(sut_cpu, command), logs / "dashboard-standalone.log", board_env, cwd=code)
        wait_ready(f"http://127.0.0.1:{board_port}/login", board, timeout=30)
        if traffic:
            served = prime(base, document, time.monotonic() + 60)
            log(f"  dashboard: {served} of {routes} routes served one request each")
        targets = {
            "in gateway": (base + PREFIX, [gateway.pid]),
            "standalone": (f"http://127.0.0.1:{board_port}", [board.pid, gateway.pid]),
        }
        clients = {name: httpx.Client(timeout=TIMEOUT, follow_redirects=False) for name in DEPLOYMENTS}
        try:
            for name in DEPLOYMENTS:
                try:
                    login(clients[name], targets[name][0], token)
                except (httpx.HTTPError, RuntimeError) as exc:
                    results.errors[name] = str(exc)
            for page in pages(routes):
                for name in DEPLOYMENTS:
                    if name in results.errors:
                        continue
                    target, pids = targets[name]
                    try:
                        result = measure_page(clients[name], target, page, routes, samples, pids, name)
                    except (httpx.HTTPError, RuntimeError) as exc:
                        results.errors[name] = f"{page}: {exc}"
                        continue
                    results.pages.append(result)
                    log(f"  dashboard {describe(result)}")
        finally:
            for client in clients.values():
                client.close()
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        results.errors["setup"] = f"{exc}; last gateway log line: {_last_line(logs / 'kairos-dashboard.log')}"
    finally:
        if board is not None:
            stop(board)
        if gateway is not None:
            stop(gateway)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def describe(result: PageResult) -> str:
    cpu = f", {result.cpu_ms:.1f} ms CPU" if result.cpu_ms is not None else ""
    return (
        f"{result.deployment} {result.page}: median {result.median_ms:.1f} ms, p95 {result.p95_ms:.1f} ms, "
        f"max {result.max_ms:.1f} ms{cpu}, {result.body_bytes:,} B ({result.samples} samples)"
    )


def verdict(result: PageResult) -> str:
    return "met" if result.median_ms < GOAL_MS else "NOT met"


def headline(results: DashboardResults | None) -> str:
    """One line for the report's headline: the slowest page's median, per deployment."""
    wording = f"goal < {GOAL_MS:g} ms for every page"
    if results is None or not results.pages:
        failure = _short("; ".join(results.errors.values())) if results else "not run"
        return (
            f"- Dashboard pages, {results.routes if results else ROUTES:,} routes: n/a ({failure}; {wording})"
        )
    parts = []
    for name in DEPLOYMENTS:
        measured = [page for page in results.pages if page.deployment == name]
        if not measured:
            parts.append(f"{name}: failed")
            continue
        slowest = max(measured, key=lambda page: page.median_ms)
        missed = sum(1 for page in measured if page.median_ms >= GOAL_MS)
        if missed:
            state = f"NOT met ({missed} of {len(measured)} pages over)"
        else:
            state = "NOT met (a page failed)" if name in results.errors else "met"
        parts.append(f"{name} {slowest.median_ms:.1f} ms at `{slowest.page}`: {state}")
    return (
        f"- **Dashboard, slowest page median with {results.routes:,} routes**: {'; '.join(parts)} ({wording})"
    )


def report_lines(results: DashboardResults) -> list[str]:
    if not results.pages:
        return [f"Dashboard benchmark FAILED: {_short('; '.join(results.errors.values()))}"]
    by_key = {(page.page, page.deployment): page for page in results.pages}
    lines = [
        f"Wall time per page from the client in ms: {results.samples} sequential requests per page after "
        f"{WARMUP} warm-ups (n= where a page reached the {PAGE_SECONDS:g} s bound first). CPU: server CPU "
        f"ms per page, the gateway's (standalone: dashboard + gateway). Goal: median < {GOAL_MS:g} ms.",
        "",
        "| page | bytes | in gateway median | p95 | max | CPU | goal | standalone median | p95 | max "
        "| CPU | goal |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|",
    ]
    for page in dict.fromkeys(page.page for page in results.pages):
        cells = []
        size = ""
        for name in DEPLOYMENTS:
            result = by_key.get((page, name))
            if result is None:
                cells.append("failed | | | | |")
                continue
            size = size or f"{result.body_bytes:,}"
            cpu = f"{result.cpu_ms:.1f}" if result.cpu_ms is not None else "-"
            fewer = f" (n={result.samples})" if result.samples < results.samples else ""
            timings = f"{result.median_ms:.1f}{fewer} | {result.p95_ms:.1f} | {result.max_ms:.1f}"
            cells.append(f"{timings} | {cpu} | {verdict(result)}")
        lines.append(f"| `{page}` | {size} | {' | '.join(cells)} |")
    lines += ["", headline(results)]
    if results.errors:
        lines += ["", *(f"- {name} FAILED: {_short(error)}" for name, error in results.errors.items())]
    return lines


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][-300:] if lines else "(empty)"


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP (run.py stopping this child) become SystemExit so ``finally`` stops the servers."""
    raise SystemExit(128 + signum)


def _short(text: str) -> str:
    return (text or "unknown error").replace("|", "/").replace("\n", " ")[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=SAMPLES, help="timed requests per page (1..500)")
    parser.add_argument("--routes", type=int, default=ROUTES, help="routes in the generated config")
    parser.add_argument("--sut-cpu", type=int, help="CPU of the gateway and the standalone dashboard")
    parser.add_argument("--load-cpu", type=int, help="CPU of this client")
    parser.add_argument("--code", type=Path, default=ROOT, help="run the kairos and admin packages from here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument("--no-traffic", action="store_true", help="no request per route before measuring")
    parser.add_argument("--json", action="store_true", help="machine-readable output (used by run.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not (1 <= args.samples <= 500 and 10 <= args.routes <= 20_000):
        parser.error("--samples must be 1..500 and --routes 10..20000 (every loop stays bounded)")
    results = run(
        args.samples, args.routes, args.sut_cpu, args.load_cpu, args.code, args.logs, not args.no_traffic
    )
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
