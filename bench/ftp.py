"""FTP transfers through Kairos, side by side with the same transfers straight from the FTP server.

One pyftpdlib server (tests/servers/ftp.py, the one the tests use) serves a root on tmpfs
(``/dev/shm`` when there is one, so the disk is not what is measured) holding a 100 MB file and a
directory of 1,000 entries. One Kairos (``python -m kairos run``) has an ``ftp`` route in front of
it. curl is the client every time, one curl process per transfer, timed by curl itself
(``%{time_total}``: connect, FTP login or HTTP request, the whole transfer):

- download: ``curl -o /dev/null http://127.0.0.1:K/files/big.bin`` against
  ``curl -o /dev/null ftp://127.0.0.1:F/big.bin``;
- upload: ``curl -T big.bin http://…/files/up.bin`` (an HTTP ``PUT``) against ``curl -T big.bin
  ftp://…/up.bin`` (``STOR``); each uploaded file is checked (size) and deleted;
- listing: ``curl http://…/files/dir/`` (JSON, 1,000 entries) against ``curl ftp://…/dir/`` (``LIST``).

Placement as in the rest of ``make bench``: Kairos (the system under test) alone on the SUT CPU; the
FTP server (the upstream, like the upstream nginx), curl and this script on the load CPU. That is
``direct`` and ``kairos``, the pair the goal (Kairos ≥ 0.8x of direct, download and upload) is
measured on. ``direct-split`` runs curl on the SUT CPU instead (idle then): client and server on a
core each, the most this server and client do here, reported for reference. Rounds interleave the
ways (their order rotates with every transfer and round); ratios are taken within a round, then the
median across rounds is the figure. Every transfer is bounded by ``--max-time``, the whole run by
``RUN_SECONDS``; every process started here is stopped by its PID.

Run alone: ``.venv/bin/python bench/ftp.py [--rounds N] [--json]``; ``make bench BENCH_ARGS=--ftp``.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from procs import cpu_seconds, cpus, free_port, pinned, start, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
SIZE = 100 * 1000 * 1000  # bytes of the file moved each way (MB here are 10^6 bytes)
ENTRIES = 1_000  # entries of the listed directory
ROUNDS = 5
SAMPLES = 6  # transfers per kind, way and round
LIST_SAMPLES = 10  # listings per way and round
GOAL = 0.8  # Kairos's throughput as a fraction of the direct transfer's, download and upload
MAX_TIME = 120  # seconds, per curl (a transfer that hangs ends there and fails the sample)
RUN_SECONDS = 900.0  # the whole measurement: rounds not started by then are skipped
USER = "bench"
KINDS = ("download", "upload", "listing")
WAYS = ("kairos", "direct", "direct-split")
"""``kairos``: curl on the load CPU, through Kairos (SUT CPU) to the FTP server (load CPU).
``direct``: curl on the load CPU straight to the FTP server, placed as the rest of ``make bench``
places its ``direct`` (load generator and upstream on one CPU); the goal is measured against it.
``direct-split``: curl on the SUT CPU (idle then), so client and server each have a core: the best
the server and curl do on this machine, reported for reference."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One curl run. ``kairos_cpu`` is the gateway's CPU seconds during it (None for direct)."""

    round: int
    kind: str  # one of KINDS
    way: str  # one of WAYS
    seconds: float
    size: int  # bytes moved (the listing's body)
    kairos_cpu: float | None
    server_cpu: float  # the FTP server's CPU seconds during it


@dataclass(slots=True)
class FtpResults:
    size: int
    entries: int
    rounds: int
    samples: int
    list_samples: int
    cells: list[Sample] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "setup" or "round N kind way" -> what failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FtpResults:
        return cls(
            data["size"],
            data["entries"],
            data["rounds"],
            data["samples"],
            data["list_samples"],
            [Sample(**cell) for cell in data["cells"]],
            dict(data["errors"]),
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tmpfs() -> str | None:
    """Where the FTP root and the upload source live: /dev/shm when it is a usable tmpfs."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > 4 * SIZE:
            return str(shm)
    except OSError:
        pass
    return None


def curl(cpu: int, arguments: list[str]) -> tuple[int, int, float]:
    """(reply code, bytes moved, seconds) of one curl run pinned to ``cpu``; raises on failure."""
    command = ["curl", "-sS", "--max-time", str(MAX_TIME), "-o", "/dev/null"]
    command += ["-w", "%{response_code} %{size_download} %{size_upload} %{time_total}", *arguments]
    done = subprocess.run(
        pinned(cpu, command), capture_output=True, text=True, timeout=MAX_TIME + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl exited with {done.returncode}: {done.stderr.strip()[-200:]}")
    code, downloaded, uploaded, seconds = done.stdout.split()
    return int(code), max(int(downloaded), int(uploaded)), float(seconds)


@dataclass(frozen=True, slots=True)
class Setup:
    root: Path  # what the FTP server serves
    source: Path  # the upload's source file
    kairos: subprocess.Popen[bytes]
    server: subprocess.Popen[bytes]
    http: str  # http://127.0.0.1:K/files
    ftp: str  # ftp://127.0.0.1:F
    password: str
    load_cpu: int  # the FTP server's, and curl's but for ``direct-split``
    sut_cpu: int  # Kairos's, and curl's for ``direct-split`` (nothing else runs there then)


def transfer(setup: Setup, kind: str, way: str, round_no: int, index: int) -> Sample:
    """One curl transfer of ``kind`` by ``way``, checked: the right reply, every byte, the file on
    the server (uploads, then deleted)."""
    auth = ["--user", f"{USER}:{setup.password}"] if way != "kairos" else []
    base = setup.http if way == "kairos" else setup.ftp
    uploaded = setup.root / f"up-{way}-{round_no}-{index}.bin"
    if kind == "download":
        arguments = [*auth, f"{base}/big.bin"]
        expected = (200,) if way == "kairos" else (226,)
    elif kind == "upload":
        arguments = [*auth, "-T", str(setup.source), f"{base}/{uploaded.name}"]
        expected = (201, 204) if way == "kairos" else (226,)
    else:
        arguments = [*auth, f"{base}/dir/"]
        expected = (200,) if way == "kairos" else (226,)
    kairos_before = cpu_seconds([setup.kairos.pid])
    server_before = cpu_seconds([setup.server.pid])
    try:
        code, moved, seconds = curl(setup.sut_cpu if way == "direct-split" else setup.load_cpu, arguments)
        kairos_cpu = cpu_seconds([setup.kairos.pid]) - kairos_before
        server_cpu = cpu_seconds([setup.server.pid]) - server_before
        if code not in expected:
            raise RuntimeError(f"answered {code}, expected {expected}")
        if kind in ("download", "upload") and moved != SIZE:
            raise RuntimeError(f"moved {moved} of {SIZE} bytes")
        stored = uploaded.stat().st_size if uploaded.exists() else 0
        if kind == "upload" and stored != SIZE:
            raise RuntimeError(f"the server holds {stored} of {SIZE} bytes")
    finally:
        uploaded.unlink(missing_ok=True)
    return Sample(round_no, kind, way, seconds, moved, kairos_cpu if way == "kairos" else None, server_cpu)


def check_listings(setup: Setup) -> None:
    """Both listings (JSON, LIST) are whole before anything is timed: a short one would be fast."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", f"{setup.http}/dir/"], capture_output=True, timeout=60, check=True
    )
    entries = json.loads(done.stdout)["entries"]
    if len(entries) != ENTRIES:
        raise RuntimeError(f"the listing through Kairos has {len(entries)} of {ENTRIES} entries")
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--user", f"{USER}:{setup.password}", f"{setup.ftp}/dir/"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    if len(done.stdout.splitlines()) != ENTRIES:
        raise RuntimeError(f"the direct LIST has {len(done.stdout.splitlines())} of {ENTRIES} lines")


def measure_round(setup: Setup, results: FtpResults, round_no: int) -> None:
    """Each kind in turn; within a kind the ways take turns, their order rotating with every
    transfer and every round, so drift and the cost of what ran just before are spread evenly."""
    for kind in KINDS:
        count = results.list_samples if kind == "listing" else results.samples
        for index in range(count):
            shift = (round_no + index + KINDS.index(kind)) % len(WAYS)
            for way in WAYS[shift:] + WAYS[:shift]:
                key = f"round {round_no} {kind} {way}"
                if key in results.errors:
                    continue
                try:
                    results.cells.append(transfer(setup, kind, way, round_no, index))
                except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                    results.errors[key] = str(exc)
                    log(f"  ftp {key}: FAILED: {exc}")
        log(f"  ftp round {round_no} {kind}: {summary(results, round_no, kind)}")


def summary(results: FtpResults, round_no: int, kind: str) -> str:
    parts = []
    for way in WAYS:
        value = round_value(results, round_no, kind, way)
        parts.append(f"{way} {fmt(kind, value)}" if value is not None else f"{way} failed")
    return ", ".join(parts)


@contextmanager
def serving(sut_cpu: int, load_cpu: int, code: Path, logs: Path | None) -> Iterator[Setup]:
    """The FTP root (tmpfs), the FTP server on ``load_cpu`` and Kairos on ``sut_cpu``, both
    running until the block ends, then stopped by PID and the root deleted."""
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-ftp-", dir=tmpfs()))
    logs = logs or work
    password = secrets.token_urlsafe(16)
    server = kairos = None
    try:
        root = work / "root"
        (root / "dir").mkdir(parents=True)
        block = os.urandom(1 << 20)
        with (root / "big.bin").open("wb") as out:
            for offset in range(0, SIZE, len(block)):
                out.write(block[: SIZE - offset])
        for index in range(ENTRIES):
            (root / "dir" / f"entry-{index:04d}-of-a-listing.txt").write_bytes(b"x" * index)
        source = work / "upload.bin"
        shutil.copyfile(root / "big.bin", source)

        ftp_port = free_port()
        command = [sys.executable, "-m", "tests.servers.ftp", "--port", str(ftp_port), "--root", str(root)]
        command += ["--user", USER, "--password", password]
        server = start(pinned(load_cpu, command), logs / "ftp-server.log", cwd=ROOT)
        backend = {
            "host": "ftp://127.0.0.1",
            "port": ftp_port,
            "username": "${BENCH_FTP_USER}",
            "password": "${BENCH_FTP_PASSWORD}",
        }
        route = {
            "protocol": "ftp",
            "external_path": "/files/{*path}",
            "internal_path": "/{*path}",
            "methods": ["GET", "HEAD", "PUT"],
            "timeout_ms": MAX_TIME * 1000,
            "backends": [backend],
        }
        (work / "config.json").write_text(json.dumps({"version": 1, "routers": [route]}, indent=2))
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "KAIROS_CONFIG_PATH": str(work / "config.json"),
            "KAIROS_CONFIG_WATCH": "false",
            "KAIROS_LOG_LEVEL": "warning",
            "BENCH_FTP_USER": USER,
            "BENCH_FTP_PASSWORD": password,
        }
        http_port = free_port()
        command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(http_port)]
        kairos = start(pinned(sut_cpu, command), logs / "kairos-ftp.log", env, cwd=code)
        wait_ready(f"http://127.0.0.1:{http_port}/ready", kairos, timeout=60)
        yield Setup(
            root,
            source,
            kairos,
            server,
            f"http://127.0.0.1:{http_port}/files",
            f"ftp://127.0.0.1:{ftp_port}",
            password,
            load_cpu,
            sut_cpu,
        )
    finally:
        if kairos is not None:
            stop(kairos)
        if server is not None:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)


def run(
    rounds: int = ROUNDS,
    samples: int = SAMPLES,
    list_samples: int = LIST_SAMPLES,
    sut_cpu: int | None = None,
    load_cpu: int | None = None,
    code: Path = ROOT,
    logs: Path | None = None,
) -> FtpResults:
    """Start the FTP server (load CPU) and Kairos (SUT CPU), measure, stop both by PID."""
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    results = FtpResults(SIZE, ENTRIES, rounds, samples, list_samples)
    try:
        with serving(sut_cpu, load_cpu, code, logs) as setup:
            check_listings(setup)
            for kind, way in ((kind, way) for kind in KINDS for way in WAYS):  # warm-up, discarded
                transfer(setup, kind, way, 0, 0)
            deadline = time.monotonic() + RUN_SECONDS
            for round_no in range(1, rounds + 1):
                if time.monotonic() > deadline:
                    results.errors["time"] = f"stopped after {round_no - 1} rounds: {RUN_SECONDS:g} s bound"
                    break
                if setup.kairos.poll() is not None or setup.server.poll() is not None:
                    results.errors["setup"] = "Kairos or the FTP server exited"
                    break
                measure_round(setup, results, round_no)
    except (RuntimeError, ValueError, KeyError, OSError, subprocess.SubprocessError) as exc:
        results.errors["setup"] = f"{type(exc).__name__}: {exc}"
    return results


# -- summaries ---------------------------------------------------------------------------------------


def round_value(results: FtpResults, round_no: int, kind: str, way: str) -> float | None:
    """A round's figure for one way: MB/s for transfers as bytes moved over seconds taken by all of
    the round's transfers (a direct transfer's speed is bimodal when curl and the server share a
    core, so a median of a few flips between the modes), ms for a listing (the median)."""
    cells = [c for c in results.cells if (c.round, c.kind, c.way) == (round_no, kind, way)]
    if not cells:
        return None
    if kind == "listing":
        return statistics.median(c.seconds for c in cells) * 1000
    return sum(c.size for c in cells) / sum(c.seconds for c in cells) / 1e6


def ratios(results: FtpResults, kind: str, baseline: str = "direct") -> list[float]:
    """Kairos over ``baseline`` per round, as "how much of the direct speed": throughput over
    throughput, and for a listing ms over ms the other way round (listings/s over listings/s)."""
    values = []
    for round_no in range(1, results.rounds + 1):
        kairos = round_value(results, round_no, kind, "kairos")
        direct = round_value(results, round_no, kind, baseline)
        if not kairos or not direct:
            continue
        values.append(direct / kairos if kind == "listing" else kairos / direct)
    return values


def medians(results: FtpResults, kind: str, way: str) -> float | None:
    values = [round_value(results, n, kind, way) for n in range(1, results.rounds + 1)]
    found = [value for value in values if value is not None]
    return statistics.median(found) if found else None


def kairos_cpu(results: FtpResults, kind: str) -> float | None:
    """Kairos's median CPU seconds per transfer (per listing): what one core of the gateway can
    move, whatever the neighbours did (/proc counts in 10 ms ticks)."""
    cells = [c.kairos_cpu for c in results.cells if c.kind == kind and c.kairos_cpu is not None]
    return statistics.median(cells) if cells else None


def fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if kind == "listing" else f"{value:.0f} MB/s"


LABELS = {
    "download": "FTP download through Kairos vs direct (100 MB)",
    "upload": "FTP upload through Kairos vs direct (100 MB)",
    "listing": "FTP listing through Kairos vs direct (1,000 entries, listings/s)",
}


def headline_lines(results: FtpResults | None) -> list[str]:
    """The report's headline: download and upload against the goal, the listing reported."""
    if results is None or not results.cells:
        failure = "; ".join(results.errors.values()) if results else "not run"
        return [f"- FTP transfers: n/a ({_short(failure)}; goal ≥ {GOAL:g}x of direct both ways)"]
    lines = []
    for kind in KINDS:
        values = ratios(results, kind)
        if not values:
            lines.append(f"- {LABELS[kind]}: n/a (a way failed in every round)")
            continue
        median = statistics.median(values)
        rounds = ", ".join(f"{value:.2f}" for value in values)
        if kind == "listing":
            verdict = "reported"
        else:
            verdict = f"goal ≥ {GOAL:g}x: {'met' if median >= GOAL else 'NOT met'}"
        lines.append(f"- **{LABELS[kind]}: {median:.2f}x** ({verdict}; per round: {rounds})")
    return lines


def report_lines(results: FtpResults) -> list[str]:
    if not results.cells:
        return [f"FTP benchmark FAILED: {_short('; '.join(results.errors.values()))}"]
    size = f"{results.size / 1e6:g} MB"
    lines = [
        "curl for every transfer, timed by curl (`%{time_total}`). Kairos alone on the SUT CPU, the FTP "
        "server (pyftpdlib) on the load CPU; curl on the load CPU, except `direct-split` (curl on the "
        f"idle SUT CPU: client and server on a core each). {results.rounds} rounds; per way and round "
        f"{results.samples} transfers of {size} each way and {results.list_samples} listings of "
        f"{results.entries:,} entries, the ways taking turns. MB/s: bytes over seconds of the round's "
        "transfers; listing: the median; ratios within a round, then the median across rounds.",
        "",
        "| transfer | direct | through Kairos | Kairos / direct | direct-split | Kairos / direct-split "
        "| Kairos CPU per transfer |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    names = {
        "download": f"download {size}",
        "upload": f"upload {size}",
        "listing": f"listing {results.entries:,} entries",
    }
    for kind in KINDS:
        cells = []
        for baseline in ("direct", "direct-split"):
            values = ratios(results, kind, baseline)
            cells.append(f"{statistics.median(values):.2f}x" if values else "-")
        cpu = kairos_cpu(results, kind)
        cpu_text = "-" if cpu is None else (f"{cpu * 1000:.0f} ms" if kind == "listing" else f"{cpu:.2f} s")
        lines.append(
            f"| {names[kind]} | {fmt(kind, medians(results, kind, 'direct'))} "
            f"| {fmt(kind, medians(results, kind, 'kairos'))} | {cells[0]} "
            f"| {fmt(kind, medians(results, kind, 'direct-split'))} | {cells[1]} | {cpu_text} |"
        )
    lines += ["", "Per round (direct / through Kairos / direct-split):", ""]
    for kind in KINDS:
        rounds = []
        for round_no in range(1, results.rounds + 1):
            values = [
                fmt(kind, round_value(results, round_no, kind, way))
                for way in WAYS[1:2] + WAYS[:1] + WAYS[2:]
            ]
            rounds.append(" / ".join(values))
        lines.append(f"- {kind}: {'; '.join(rounds)}")
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
    parser.add_argument("--samples", type=int, default=SAMPLES, help="transfers per way and round (1..20)")
    parser.add_argument("--list-samples", type=int, default=LIST_SAMPLES, help="listings per way and round")
    parser.add_argument("--sut-cpu", type=int, help="CPU of Kairos")
    parser.add_argument("--load-cpu", type=int, help="CPU of curl, the FTP server and this script")
    parser.add_argument("--code", type=Path, default=ROOT, help="run the kairos package from here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument("--json", action="store_true", help="machine-readable output (used by run.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not (1 <= args.rounds <= 20 and 1 <= args.samples <= 20 and 1 <= args.list_samples <= 200):
        parser.error("--rounds and --samples must be 1..20, --list-samples 1..200 (every loop stays bounded)")
    if shutil.which("curl") is None:
        sys.exit("bench/ftp.py needs curl (apt-get install curl)")
    results = run(
        args.rounds, args.samples, args.list_samples, args.sut_cpu, args.load_cpu, args.code, args.logs
    )
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
