"""Process plumbing for the benchmark: start pinned children, read their CPU time, stop them by PID.

Every child is started in its own session so a Ctrl-C in the terminal reaches only ``run.py``,
whose ``finally`` blocks then stop each child by the PID recorded here, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port the kernel considers free right now (bind to 0); the tiny reuse race is acceptable here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpus() -> tuple[int, int]:
    """(SUT CPU, load CPU): 0 and 1 when there are two CPUs; both 0 on a one-CPU machine."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return available[0], available[1]
    return available[0], available[0]


def pinned(cpu: int, command: list[str]) -> list[str]:
    """Prefix ``command`` with taskset so the child and everything it forks stay on ``cpu``."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *command] if taskset else command


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session with stdout/stderr going to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd or Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )


def children(pid: int) -> list[tuple[int, int]]:
    """Direct children of ``pid`` (nginx workers) as (pid, start time), found by scanning /proc for
    their parent id; the start time later tells a recycled PID apart from the child itself."""
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[1]) == pid:
            found.append((int(entry), int(fields[19])))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces); index 0 = state."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (all threads included), in seconds; exited PIDs count as 0."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLK_TCK


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 200; raise if the process dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before becoming ready")
        status, _ = http_get(url, timeout=1.0)
        if status == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


def stop(
    process: subprocess.Popen[bytes], extra: list[tuple[int, int]] | None = None, grace: float = 5.0
) -> None:
    """SIGTERM, then SIGKILL after ``grace``; then SIGKILL any recorded child (pid, start time) still
    alive, e.g. an nginx worker orphaned by a killed master. The start time must match, so a recycled
    PID of an unrelated process is never signalled."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)
    for pid, started in extra or []:
        fields = _stat_fields(pid)
        if fields is not None and int(fields[19]) == started and fields[0] != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
