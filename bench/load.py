"""Load generation with wrk and parsing of its ``--latency`` report.

wrk is used (not a Python client) because a Python load generator would saturate its own core
before a single-core gateway does, and then the numbers describe the client, not the server.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import pinned

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. ``errors`` counts socket errors plus non-2xx/3xx answers: any error means the
    run measured something other than successful proxying, so the report flags it."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's text output; raises ValueError when a required line is missing."""
    done = re.search(r"(\d+) requests in " + _DURATION, text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s*50(?:\.000)?%\s+" + _DURATION, text, re.MULTILINE)
    p99 = re.search(r"^\s*99(?:\.000)?%\s+" + _DURATION, text, re.MULTILINE)
    if not (done and rps and p50 and p99):
        raise ValueError("wrk output lacks the request count, Requests/sec or Latency Distribution")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(count) for count in socket_errors.groups())
    return WrkResult(
        requests=int(done.group(1)),
        seconds=to_ms(done.group(2), done.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1), p50.group(2)),
        p99_ms=to_ms(p99.group(1), p99.group(2)),
        errors=errors,
    )


def run_wrk(
    url: str,
    connections: int,
    duration: float,
    cpu: int,
    raw_log: Path | None = None,
    headers: list[str] | None = None,
) -> WrkResult:
    """One bounded wrk run (one thread, pinned to the load CPU); the subprocess timeout is a backstop
    in case wrk hangs on a dead server. ``headers`` are ``Name: value`` lines sent on every request."""
    extra = [option for header in headers or [] for option in ("-H", header)]
    command = pinned(
        cpu,
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "--latency", *extra, url],
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    output = done.stdout + done.stderr
    if raw_log is not None:
        with raw_log.open("a") as log:
            log.write(f"$ {' '.join(command)}\n{output}\n")
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {output.strip()[-300:]}")
    return parse_wrk(output)
