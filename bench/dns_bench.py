"""DNS forwarding through Kairos, side by side with dnsmasq answering directly and dnsdist.

One query file (``NAMES`` A records ``h0..h999.local.test``, plus AAAA and TXT for a tenth of them
each: 1,200 queries, every one of them answered NOERROR) and dnsperf as the load every time, on the
load CPU. Four ways, each server alone on the SUT CPU (one process, pinned with taskset):

- ``dnsmasq``: dnsmasq answering from its own records, queried directly: the floor;
- ``dnsdist``: dnsdist with its packet cache (``newPacketCache(100000)``), the reference forwarder,
  in front of the upstream dnsmasq; warmed, so every query is a cache hit;
- ``kairos-cached``: ``python -m kairos run`` with a ``dns`` route to the upstream dnsmasq, its
  answer cache on and warmed (the cache's own counters check that no query missed);
- ``kairos-uncached``: the same route with ``"cache": {"enabled": false}``: every query forwarded.

The upstream of dnsdist and Kairos is a second dnsmasq, with the same records, on the load CPU (as
the upstream nginx of the HTTP benchmark is): the direct dnsmasq and the forwarders each have the
SUT CPU to themselves. Every server runs for the whole measurement; per round each way gets a
saturating run (``dnsperf -c CLIENTS -q OUTSTANDING -l DURATION``: queries/s, dnsperf's average
latency and its standard deviation, the SUT's CPU time per query from /proc) and a fixed-rate run
(``-Q LATENCY_QPS -v``: every query's latency, for p50 and p99), the ways' order rotating with the
round. Ratios are taken within a round, then the median across rounds is the figure.

Why ``-c 10 -q 20``: measured here (2 vCPUs, medians of 3 x 3 s per setting) against -q 50 and
-q 100 and ``-c 4 -q 40``, it gave each way its highest or equal-highest queries/s: the SUT's core
or dnsperf's core is then 85-100 % busy, and more queries in flight only queue (Kairos cached's
average latency 0.24 ms at -q 20, 1.4 ms at -q 100) and made the runs more erratic. dnsperf costs
~8 µs of CPU per query against dnsmasq and dnsdist and ~11 µs against Kairos, so one core of it
cannot saturate dnsmasq or dnsdist (~6-8 µs per query): their queries/s are the load generator's
limit, and the report flags it. The servers' CPU time per query does not depend on that, so the
report gives Kairos vs dnsdist both ways.

Memory: the gateway's RSS (/proc/PID/status) at start, after the warm-up and at the end, and a
bounded run of ``--queries`` queries (100,000 by default) through each Kairos with the RSS sampled
all along; ``--memory`` runs that part alone with 1,000,000 queries. Every dnsperf run is bounded
by ``-l`` (and a subprocess timeout), the rounds by ``RUN_SECONDS``; every process started here is
stopped by its PID. Traffic goes to 127.0.0.1 only (dnsdist's security poll, a DNS query to the
system resolver, is turned off).

Run alone: ``.venv/bin/python bench/dns.py [--rounds N] [--duration S] [--queries N] [--memory]
[--json]``; the report section goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from procs import cpu_seconds, cpus, http_get, pinned, start, stop, wait_ready
from suts import snapshot_kairos

ROOT = Path(__file__).resolve().parent.parent
NAMES = 1_000  # h0..h999.local.test, each with an A record
EXTRA_EVERY = 10  # AAAA for every 10th name, TXT for every 10th name (offset 5)
TTL = 3_600  # longer than any run: the caches never expire mid-measurement
ROUNDS = 5
DURATION = 5.0  # seconds of each saturating dnsperf run
WARMUP = 2.0  # seconds of discarded saturating load per way before the first round
CLIENTS = 10  # dnsperf -c: client sockets
OUTSTANDING = 20  # dnsperf -q: queries in flight at most (why 20: see the module docstring)
BUSY = 0.9  # a core this busy during a run is that run's limit
LATENCY_QPS = 2_000  # dnsperf -Q of the fixed-rate latency runs (well below every way's saturation)
LATENCY_QUERIES = 4_000  # queries per fixed-rate run (2 s at 2,000 qps)
MEMORY_QUERIES = 100_000  # the bounded memory run of the default run
SOAK_QUERIES = 1_000_000  # ``--memory``
MEMORY_SECONDS = 240.0  # at most, per memory run
RUN_SECONDS = 900.0  # the rounds: those not started by then are skipped
GOAL_QPS = 0.3  # Kairos cached, as a fraction of dnsdist's queries/s
GOAL_OVERHEAD_MS = 0.2  # Kairos uncached p50 minus dnsmasq direct p50
FLAT_MIB = 2.0  # "flat": RSS at the end of a memory run at most this much above its start
TOOLS = (("dnsperf", "dnsperf"), ("dnsdist", "dnsdist"), ("dnsmasq", "dnsmasq-base"))
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
WAYS = ("dnsmasq", "dnsdist", "kairos-cached", "kairos-uncached")
KAIROS_WAYS = ("kairos-cached", "kairos-uncached")
LABELS = {
    "dnsmasq": "dnsmasq direct",
    "dnsdist": "dnsdist (packet cache)",
    "kairos-cached": "Kairos cached",
    "kairos-uncached": "Kairos uncached",
}


@dataclass(frozen=True, slots=True)
class Load:
    """One saturating dnsperf run. ``seconds``: dnsperf's run time; ``wall``: from its start to its
    exit. ``sut_cpu``: the server's CPU seconds over ``wall``; ``dnsperf_cpu``: dnsperf's own (to
    show the load generator was not the limit); ``misses``: Kairos cached's cache misses during it
    (None for the others)."""

    round: int
    way: str
    seconds: float
    wall: float
    completed: int
    lost: int
    qps: float
    avg_ms: float
    stddev_ms: float
    sut_cpu: float
    dnsperf_cpu: float
    misses: int | None


@dataclass(frozen=True, slots=True)
class Latency:
    """One fixed-rate dnsperf run (``-Q``), every query's latency read from ``-v``."""

    round: int
    way: str
    count: int
    lost: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class Memory:
    """A long run through one Kairos with its RSS (KiB) sampled every ``interval`` seconds."""

    way: str
    target: int  # queries asked for (whole passes over the query file)
    completed: int
    seconds: float
    qps: float
    interval: float
    start_kib: int
    peak_kib: int
    end_kib: int
    samples: list[int]
    misses: int | None


@dataclass(slots=True)
class DnsResults:
    rounds: int
    duration: float
    clients: int
    outstanding: int
    latency_qps: int
    latency_queries: int
    queries: int  # lines of the query file
    memory_queries: int
    loads: list[Load] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # way -> {"start", "warm", "end"} KiB
    info: dict[str, str] = field(default_factory=dict)  # versions, code snapshot, load averages
    errors: dict[str, str] = field(default_factory=dict)  # "setup", "round N way ..." -> what failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DnsResults:
        return cls(
            data["rounds"],
            data["duration"],
            data["clients"],
            data["outstanding"],
            data["latency_qps"],
            data["latency_queries"],
            data["queries"],
            data["memory_queries"],
            [Load(**item) for item in data["loads"]],
            [Latency(**item) for item in data["latencies"]],
            [Memory(**item) for item in data["memory"]],
            {way: dict(values) for way, values in data["rss"].items()},
            dict(data["info"]),
            dict(data["errors"]),
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- tools -------------------------------------------------------------------------------------------


def ensure_tools() -> None:
    """Install dnsperf, dnsdist and dnsmasq from Debian if missing. Package postinst scripts must not
    start the system dnsdist or dnsmasq (they would take port 53 and outlive us), hence a temporary
    policy-rc.d, as bench/run.py does for nginx."""
    missing = [package for command, package in TOOLS if shutil.which(command, path=SBIN_PATH) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench/dns.py needs {' and '.join(missing)}: apt-get install {' '.join(missing)}")
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


def tool(command: str) -> str:
    return shutil.which(command, path=SBIN_PATH) or command


def versions() -> str:
    found = []
    for command, flag in (("dnsperf", "-h"), ("dnsdist", "--version"), ("dnsmasq", "--version")):
        done = subprocess.run([tool(command), flag], capture_output=True, text=True, timeout=10, check=False)
        text = done.stdout + done.stderr
        match = re.search(r"(?:Version |dnsdist |Dnsmasq version )([\d.]+)", text)
        found.append(f"{command} {match[1] if match else '?'}")
    return ", ".join(found)


# -- the zone, the query file and a tiny client ------------------------------------------------------


def address(index: int) -> str:
    """h<index>'s A record, in the benchmarking range (RFC 2544: 198.18.0.0/15)."""
    return f"198.18.{index // 256}.{index % 256}"


def dnsmasq_conf(path: Path) -> None:
    """dnsmasq's records, as a config file (the long options without their dashes)."""
    lines = []
    for index in range(NAMES):
        lines.append(f"host-record=h{index}.local.test,{address(index)},2001:db8::{index:x}")
        if index % EXTRA_EVERY == 5:
            lines.append(f"txt-record=h{index}.local.test,kairos bench record {index}")
    path.write_text("\n".join(lines) + "\n")


def query_file(path: Path) -> int:
    """dnsperf's input: every A name, AAAA and TXT for a tenth each, interleaved; returns the lines."""
    lines = []
    for index in range(NAMES):
        lines.append(f"h{index}.local.test A")
        if index % EXTRA_EVERY == 0:
            lines.append(f"h{index}.local.test AAAA")
        elif index % EXTRA_EVERY == 5:
            lines.append(f"h{index}.local.test TXT")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def ask_a(port: int, index: int, timeout: float = 1.0) -> bool:
    """One UDP query for h<index> A: True when the answer is NOERROR with the right address."""
    ident = secrets.randbelow(65536)
    name = b"".join(bytes([len(label)]) + label for label in f"h{index}.local.test".encode().split(b"."))
    query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + b"\x00" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, ("127.0.0.1", port))
            answer = sock.recv(4096)
        except OSError:
            return False
    if len(answer) < 12:
        return False
    got_id, flags, _, ancount, _, _ = struct.unpack_from("!HHHHHH", answer)
    return (
        got_id == ident
        and flags & 0x800F == 0x8000
        and ancount >= 1
        and answer.endswith(socket.inet_aton(address(index)))
    )


def free_dns_port() -> int:
    """A port free for both UDP and TCP right now (a DNS server takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def wait_dns(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before answering")
        if ask_a(port, 0, timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port} did not answer h0.local.test within {timeout:.0f}s")


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the servers -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    http: str | None = None  # Kairos: its HTTP base URL

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(slots=True)
class Setup:
    queries: Path  # dnsperf's input
    upstream: Server  # the forwarders' dnsmasq, on the load CPU
    servers: dict[str, Server]  # by way, each on the SUT CPU
    sut_cpu: int
    load_cpu: int


def start_server(name: str, make: Any, cpu: int, log_file: Path) -> Server:
    """Start ``make(port)``'s command on a fresh port and wait until it answers over UDP; up to 3
    ports are tried (another process may take the UDP or TCP port between the check and the bind)."""
    error: Exception | None = None
    for _attempt in range(3):
        port = free_dns_port()
        process = start(pinned(cpu, make(port)), log_file)
        try:
            wait_dns(port, process)
            return Server(name, process, port)
        except (RuntimeError, TimeoutError, OSError) as exc:
            stop(process)
            error = exc
    raise RuntimeError(f"{name} did not start: {error}; see {log_file}")


def dnsmasq_command(conf: Path) -> Any:
    def make(port: int) -> list[str]:
        command = [tool("dnsmasq"), "--no-daemon", f"--conf-file={conf}", "--no-resolv", "--no-hosts"]
        command += ["--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}"]
        command += ["--local=/local.test/", f"--local-ttl={TTL}", "--cache-size=10000"]
        command += ["--dns-forward-max=1000"]
        return command

    return make


def dnsdist_command(work: Path, upstream: int) -> Any:
    def make(port: int) -> list[str]:
        conf = work / f"dnsdist-{port}.conf"
        conf.write_text(
            "\n".join(
                [
                    'setSecurityPollSuffix("")',  # no status query to the system resolver
                    'setACL({"127.0.0.0/8"})',
                    f'setLocal("127.0.0.1:{port}")',
                    f'newServer({{address="127.0.0.1:{upstream}", checkName="h0.local.test."}})',
                    "pc = newPacketCache(100000)",
                    'getPool(""):setCache(pc)',
                    "",
                ]
            )
        )
        # No controlSocket: no console. --supervised: no console on stdin either.
        return [tool("dnsdist"), "--supervised", "--disable-syslog", "-C", str(conf)]

    return make


@contextmanager
def serving(
    ways: tuple[str, ...], sut_cpu: int, load_cpu: int, code: Path, logs: Path | None
) -> Iterator[Setup]:
    """The upstream dnsmasq (load CPU) and the servers of ``ways`` (SUT CPU), all running until the
    block ends, then stopped by PID and their files deleted."""
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-dns-"))
    logs = logs or work
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        conf = work / "records.conf"
        dnsmasq_conf(conf)
        queries = work / "queries.txt"
        query_file(queries)

        def launch(name: str, make: Any, cpu: int) -> Server:
            server = start_server(name, make, cpu, logs / f"{name}.log")
            stack.callback(stop, server.process)
            log(f"  {name}: pid {server.pid}, 127.0.0.1:{server.port} (CPU {cpu})")
            return server

        upstream = launch("dns-upstream", dnsmasq_command(conf), load_cpu)
        servers: dict[str, Server] = {}
        for way in ways:
            if way == "dnsmasq":
                servers[way] = launch(way, dnsmasq_command(conf), sut_cpu)
            elif way == "dnsdist":
                servers[way] = launch(way, dnsdist_command(work, upstream.port), sut_cpu)
            else:
                servers[way] = launch_kairos(way, work, upstream.port, sut_cpu, code, logs, stack)
        yield Setup(queries, upstream, servers, sut_cpu, load_cpu)


def launch_kairos(
    way: str, work: Path, upstream: int, cpu: int, code: Path, logs: Path, stack: ExitStack
) -> Server:
    """``python -m kairos run`` from ``code`` with a DNS route to ``upstream`` and the listener on a
    fresh port (``KAIROS_DNS_PORT``), its HTTP side on another (for /ready and the cache counters)."""
    error: Exception | None = None
    log_file = logs / f"{way}.log"
    for _attempt in range(3):
        dns_port, http_port = free_dns_port(), free_dns_port()
        route: dict[str, Any] = {
            "protocol": "dns",
            "external_path": "/dns",
            "internal_path": "/",
            "methods": ["GET", "POST"],
            "backends": [{"host": "127.0.0.1", "port": upstream}],
        }
        if way == "kairos-uncached":
            route["cache"] = {"enabled": False}
        config = work / f"{way}.json"
        config.write_text(json.dumps({"version": 1, "routers": [route]}, indent=2))
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "KAIROS_CONFIG_PATH": str(config),
            "KAIROS_CONFIG_WATCH": "false",
            "KAIROS_LOG_LEVEL": "warning",
            "KAIROS_DNS_HOST": "127.0.0.1",
            "KAIROS_DNS_PORT": str(dns_port),
        }
        command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(http_port)]
        process = start(pinned(cpu, command), log_file, env, cwd=code)
        http = f"http://127.0.0.1:{http_port}"
        try:
            wait_ready(f"{http}/ready", process, timeout=60)
            wait_dns(dns_port, process)
        except (RuntimeError, TimeoutError, OSError) as exc:
            stop(process)
            error = exc
            continue
        stack.callback(stop, process)
        log(f"  {way}: pid {process.pid}, 127.0.0.1:{dns_port}, HTTP {http_port} (CPU {cpu})")
        return Server(way, process, dns_port, http)
    raise RuntimeError(f"{way} did not start: {error}; see {log_file}")


def cache_misses(server: Server) -> int | None:
    """Kairos's cache misses so far (GET /dns/cache/stats); None without a cache or an answer."""
    if server.http is None:
        return None
    status, body = http_get(f"{server.http}/dns/cache/stats")
    if status != 200:
        return None
    stats = json.loads(body)
    return int(stats["misses"]) if stats.get("enabled") else None


def cache_entries(server: Server) -> int | None:
    if server.http is None:
        return None
    status, body = http_get(f"{server.http}/dns/cache/stats")
    return int(json.loads(body).get("entries", 0)) if status == 200 else None


# -- dnsperf -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Perf:
    completed: int
    lost: int
    other_rcodes: int  # answers that were not NOERROR
    qps: float
    avg_ms: float
    stddev_ms: float
    seconds: float  # dnsperf's run time
    wall: float  # seconds from dnsperf's start to its exit (it waits for the last answers)
    cpu: float  # dnsperf's CPU seconds
    latencies: list[float]  # seconds, with ``verbose``


def dnsperf(setup: Setup, port: int, arguments: list[str], limit: float, verbose: bool = False) -> Perf:
    """One dnsperf run pinned to the load CPU against 127.0.0.1:``port``, bounded by ``-l limit``
    (and a subprocess timeout); raises when dnsperf fails or any answer is not NOERROR."""
    command = [tool("dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(setup.queries)]
    command += ["-l", f"{limit:g}", "-t", "2", *arguments, *(["-v"] if verbose else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        pinned(setup.load_cpu, command), capture_output=True, text=True, timeout=limit + 60, check=False
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = done.stdout
    if done.returncode != 0 or "Queries per second" not in out:
        raise RuntimeError(f"dnsperf exited with {done.returncode}: {(done.stderr or out).strip()[-300:]}")

    def number(label: str) -> float:
        match = re.search(rf"{re.escape(label)}:\s+([\d.]+)", out)
        if match is None:
            raise RuntimeError(f"no {label!r} in dnsperf's output")
        return float(match[1])

    codes = re.search(r"Response codes:\s+(.*)", out)
    other = 0
    if codes is not None:
        for code, count in re.findall(r"([A-Z]+) (\d+) \(", codes[1]):
            if code != "NOERROR":
                other += int(count)
    latencies = [float(line.rsplit(None, 1)[1]) for line in out.splitlines() if line.startswith("> ")]
    perf = Perf(
        int(number("Queries completed")),
        int(number("Queries lost")),
        other,
        number("Queries per second"),
        number("Average Latency (s)") * 1000,
        number("Latency StdDev (s)") * 1000,
        number("Run time (s)"),
        wall,
        cpu,
        latencies,
    )
    if perf.other_rcodes:
        raise RuntimeError(f"{perf.other_rcodes} answers were not NOERROR: {codes[1] if codes else ''}")
    if perf.completed == 0 or perf.lost > perf.completed / 100:
        raise RuntimeError(f"{perf.lost} queries lost, {perf.completed} completed")
    return perf


def saturating(results: DnsResults) -> list[str]:
    return ["-c", str(results.clients), "-q", str(results.outstanding)]


def warm_up(setup: Setup, results: DnsResults, way: str) -> None:
    """One pass over the query file (every answer cached), then ``WARMUP`` seconds of load,
    discarded; Kairos cached must then hold every answer."""
    server = setup.servers[way]
    dnsperf(setup, server.port, ["-c", "1", "-q", "10", "-n", "1"], 60)
    dnsperf(setup, server.port, saturating(results), WARMUP)
    if way == "kairos-cached":
        entries = cache_entries(server)
        if entries != results.queries:
            raise RuntimeError(
                f"Kairos's cache holds {entries} answers after the warm-up, not {results.queries}"
            )


def measure_load(setup: Setup, results: DnsResults, way: str, round_no: int) -> Load:
    server = setup.servers[way]
    if server.process.poll() is not None:
        raise RuntimeError(f"{way} exited with code {server.process.returncode}")
    misses = cache_misses(server) if way == "kairos-cached" else None
    cpu_before = cpu_seconds([server.pid])
    perf = dnsperf(setup, server.port, saturating(results), results.duration)
    sut_cpu = cpu_seconds([server.pid]) - cpu_before
    if misses is not None:
        now = cache_misses(server)
        misses = None if now is None else now - misses
    return Load(
        round_no,
        way,
        perf.seconds,
        perf.wall,
        perf.completed,
        perf.lost,
        perf.qps,
        perf.avg_ms,
        perf.stddev_ms,
        sut_cpu,
        perf.cpu,
        misses,
    )


def measure_latency(setup: Setup, results: DnsResults, way: str, round_no: int) -> Latency:
    """``-Q latency_qps`` for ``latency_queries`` queries (``-l`` their time), one client."""
    server = setup.servers[way]
    seconds = results.latency_queries / results.latency_qps
    arguments = ["-c", "1", "-q", "20", "-Q", str(results.latency_qps)]
    perf = dnsperf(setup, server.port, arguments, seconds, verbose=True)
    values = sorted(perf.latencies)
    if len(values) < results.latency_queries // 2:
        raise RuntimeError(f"only {len(values)} latencies in dnsperf's -v output")
    return Latency(
        round_no,
        way,
        len(values),
        perf.lost,
        percentile(values, 0.50) * 1000,
        percentile(values, 0.90) * 1000,
        percentile(values, 0.99) * 1000,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))]


def measure_memory(setup: Setup, results: DnsResults, way: str) -> Memory:
    """``results.memory_queries`` queries (whole passes over the query file) at the saturating
    settings through ``way``, its RSS sampled every second (every 0.2 s for a short run)."""
    server = setup.servers[way]
    passes = max(1, math.ceil(results.memory_queries / results.queries))
    interval = 1.0 if results.memory_queries >= 500_000 else 0.2
    command = [tool("dnsperf"), "-s", "127.0.0.1", "-p", str(server.port), "-d", str(setup.queries)]
    command += ["-l", f"{MEMORY_SECONDS:g}", "-t", "2", "-n", str(passes), *saturating(results)]
    misses = cache_misses(server) if way == "kairos-cached" else None
    samples = [rss_kib(server.pid)]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(pinned(setup.load_cpu, command), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = started + MEMORY_SECONDS + 30
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(interval)
                samples.append(rss_kib(server.pid))
        finally:
            if child.poll() is None:
                child.terminate()
            child.wait(10)
        seconds = time.monotonic() - started
        samples.append(rss_kib(server.pid))
        out.seek(0)
        text = out.read()
    match = re.search(r"Queries completed:\s+(\d+)", text)
    if child.returncode != 0 or match is None:
        raise RuntimeError(f"dnsperf exited with {child.returncode}: {text.strip()[-300:]}")
    completed = int(match[1])
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    if misses is not None:
        now = cache_misses(server)
        misses = None if now is None else now - misses
    return Memory(
        way,
        passes * results.queries,
        completed,
        seconds,
        float(qps[1]) if qps else completed / seconds,
        interval,
        samples[0],
        max(samples),
        samples[-1],
        samples,
        misses,
    )


def measure_round(setup: Setup, results: DnsResults, round_no: int) -> None:
    """Every way in turn, the order rotating with the round: a saturating run, then a fixed-rate
    one, each way alone on the SUT CPU while it runs."""
    shift = (round_no - 1) % len(setup.servers)
    ways = list(setup.servers)
    for way in ways[shift:] + ways[:shift]:
        for kind, measure in (("load", measure_load), ("latency", measure_latency)):
            key = f"round {round_no} {way} {kind}"
            try:
                cell = measure(setup, results, way, round_no)
            except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                results.errors[key] = str(exc)
                log(f"  dns {key}: FAILED: {exc}")
                continue
            if isinstance(cell, Load):
                results.loads.append(cell)
                log(
                    f"  dns round {round_no} {way}: {cell.qps:,.0f} q/s, avg {cell.avg_ms:.3f} ms, "
                    f"{cell.sut_cpu * 1e6 / max(cell.completed, 1):.1f} µs CPU/query, "
                    f"SUT core {cell.sut_cpu / cell.wall:.0%}, "
                    f"dnsperf core {cell.dnsperf_cpu / cell.wall:.0%}"
                    + (f", {cell.misses} misses" if cell.misses else "")
                )
            else:
                assert isinstance(cell, Latency)
                results.latencies.append(cell)
                log(
                    f"  dns round {round_no} {way} at {results.latency_qps} q/s: p50 {cell.p50_ms:.3f} ms, "
                    f"p99 {cell.p99_ms:.3f} ms"
                )


def run_memory(setup: Setup, results: DnsResults) -> None:
    for way in KAIROS_WAYS:
        if way not in setup.servers:
            continue
        try:
            cell = measure_memory(setup, results, way)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            results.errors[f"memory {way}"] = str(exc)
            log(f"  dns memory {way}: FAILED: {exc}")
            continue
        results.memory.append(cell)
        log(
            f"  dns memory {way}: {cell.completed:,} queries in {cell.seconds:.0f} s, RSS "
            f"{cell.start_kib / 1024:.1f} -> peak {cell.peak_kib / 1024:.1f} -> {cell.end_kib / 1024:.1f} MiB"
        )


def run_dns_bench(
    rounds: int = ROUNDS,
    duration: float = DURATION,
    queries: int = MEMORY_QUERIES,
    sut_cpu: int | None = None,
    load_cpu: int | None = None,
    code: Path | None = None,
    logs: Path | None = None,
    memory_only: bool = False,
    clients: int = CLIENTS,
    outstanding: int = OUTSTANDING,
    latency_queries: int = LATENCY_QUERIES,
) -> DnsResults:
    """Start the servers (upstream dnsmasq on the load CPU, the others on the SUT CPU), measure,
    stop them all by PID. ``code``: the directory Kairos is run from (a copy of the kairos and admin
    packages, as bench/run.py makes); None takes such a copy of the working tree now.
    ``memory_only``: only the two Kairos and the memory runs of ``queries`` queries each."""
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    results = DnsResults(
        0 if memory_only else rounds,
        duration,
        clients,
        outstanding,
        LATENCY_QPS,
        latency_queries,
        0,
        queries,
    )
    results.info["load_start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    ways = KAIROS_WAYS if memory_only else WAYS
    with ExitStack() as stack:
        try:
            results.info["versions"] = versions()
            if code is None:
                code = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kairos-bench-code-")))
                results.info["code"] = snapshot_kairos(code)
            else:
                results.info["code"] = str(code)
            log(f"dns: starting {', '.join(ways)} (kairos code: {results.info['code']})")
            with serving(ways, sut_cpu, load_cpu, code, logs) as setup:
                results.queries = sum(1 for _ in setup.queries.open())
                for way, server in setup.servers.items():
                    results.rss[way] = {"start": rss_kib(server.pid)}
                for way in setup.servers:
                    warm_up(setup, results, way)
                    results.rss[way]["warm"] = rss_kib(setup.servers[way].pid)
                deadline = time.monotonic() + RUN_SECONDS
                for round_no in range(1, results.rounds + 1):
                    if time.monotonic() > deadline:
                        results.errors["time"] = (
                            f"stopped after {round_no - 1} rounds: {RUN_SECONDS:g} s bound"
                        )
                        break
                    measure_round(setup, results, round_no)
                run_memory(setup, results)
                for way, server in setup.servers.items():
                    results.rss[way]["end"] = rss_kib(server.pid)
        except (RuntimeError, ValueError, KeyError, OSError, subprocess.SubprocessError) as exc:
            results.errors["setup"] = f"{type(exc).__name__}: {exc}"
    results.info["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return results


# -- summaries ---------------------------------------------------------------------------------------


def load_of(results: DnsResults, round_no: int, way: str) -> Load | None:
    for cell in results.loads:
        if (cell.round, cell.way) == (round_no, way):
            return cell
    return None


def latency_of(results: DnsResults, round_no: int, way: str) -> Latency | None:
    for cell in results.latencies:
        if (cell.round, cell.way) == (round_no, way):
            return cell
    return None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_us(cell: Load) -> float:
    return cell.sut_cpu * 1e6 / max(cell.completed, 1)


def load_median(results: DnsResults, way: str, value: Any) -> float | None:
    return median([value(cell) for cell in results.loads if cell.way == way])


def latency_median(results: DnsResults, way: str, value: Any) -> float | None:
    return median([value(cell) for cell in results.latencies if cell.way == way])


def qps_ratios(results: DnsResults) -> list[float]:
    """Kairos cached's queries/s over dnsdist's, per round."""
    values = []
    for round_no in range(1, results.rounds + 1):
        kairos, dnsdist = load_of(results, round_no, "kairos-cached"), load_of(results, round_no, "dnsdist")
        if kairos is not None and dnsdist is not None and dnsdist.qps:
            values.append(kairos.qps / dnsdist.qps)
    return values


def cpu_ratios(results: DnsResults) -> list[float]:
    """dnsdist's CPU per query over Kairos cached's, per round: queries per core-second, relative."""
    values = []
    for round_no in range(1, results.rounds + 1):
        kairos, dnsdist = load_of(results, round_no, "kairos-cached"), load_of(results, round_no, "dnsdist")
        if kairos is not None and dnsdist is not None and kairos.sut_cpu and dnsdist.sut_cpu:
            values.append(cpu_us(dnsdist) / cpu_us(kairos))
    return values


def overheads(results: DnsResults) -> list[float]:
    """Kairos uncached's p50 minus dnsmasq direct's at the fixed rate, ms, per round."""
    values = []
    for round_no in range(1, results.rounds + 1):
        kairos = latency_of(results, round_no, "kairos-uncached")
        direct = latency_of(results, round_no, "dnsmasq")
        if kairos is not None and direct is not None:
            values.append(kairos.p50_ms - direct.p50_ms)
    return values


def growth_mib(cell: Memory) -> float:
    return (cell.end_kib - cell.start_kib) / 1024


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def memory_line(cell: Memory) -> str:
    growth = growth_mib(cell)
    per_k = (cell.end_kib - cell.start_kib) * 1024 / max(cell.completed, 1) * 1000
    misses = "" if cell.misses is None else f", {cell.misses} cache misses"
    return (
        f"{LABELS[cell.way]}, {cell.completed:,} queries in {cell.seconds:.0f} s "
        f"({cell.qps:,.0f} q/s{misses}): "
        f"RSS start {cell.start_kib / 1024:.1f} MiB, peak {cell.peak_kib / 1024:.1f} MiB, end "
        f"{cell.end_kib / 1024:.1f} MiB ({growth:+.2f} MiB, {per_k:+.0f} B per 1,000 queries; "
        f"{len(cell.samples)} samples every {cell.interval:g} s)"
    )


def headline_lines(results: DnsResults | None) -> list[str]:
    """The goals, ✓ or ✗, with their figures."""
    if results is None or not (results.loads or results.memory):
        failure = "; ".join(results.errors.values()) if results else "not run"
        return [f"- DNS forwarding: n/a ({_short(failure)})"]
    lines = []
    if results.rounds:
        values = qps_ratios(results)
        if values:
            ratio = statistics.median(values)
            cpu = median(cpu_ratios(results))
            lines.append(
                f"- {mark(ratio >= GOAL_QPS)} **Kairos cached vs dnsdist: {ratio:.2f}x the queries/s** "
                f"(goal ≥ {GOAL_QPS:g}x; per round: {', '.join(f'{v:.2f}' for v in values)}; by CPU per "
                f"query: {fmt(cpu, '{:.2f}x')})"
            )
        else:
            lines.append(
                f"- ✗ Kairos cached vs dnsdist: n/a (a way failed in every round; goal ≥ {GOAL_QPS:g}x)"
            )
        values = overheads(results)
        if values:
            overhead = statistics.median(values)
            lines.append(
                f"- {mark(overhead <= GOAL_OVERHEAD_MS)} **forwarding adds {overhead:+.3f} ms p50** (Kairos "
                f"uncached minus dnsmasq direct at {results.latency_qps:,} q/s; "
                f"goal ≤ {GOAL_OVERHEAD_MS:g} ms; "
                f"per round: {', '.join(f'{v:+.3f}' for v in values)})"
            )
        else:
            lines.append(f"- ✗ forwarding overhead: n/a (goal ≤ {GOAL_OVERHEAD_MS:g} ms p50)")
    cached = [cell for cell in results.memory if cell.way == "kairos-cached"]
    if cached:
        cell = cached[0]
        growth = growth_mib(cell)
        lines.append(
            f"- {mark(growth <= FLAT_MIB)} **memory over {cell.completed:,} queries through Kairos cached: "
            f"{growth:+.2f} MiB** (start {cell.start_kib / 1024:.1f}, peak {cell.peak_kib / 1024:.1f}, end "
            f"{cell.end_kib / 1024:.1f} MiB; goal: flat, ≤ {FLAT_MIB:g} MiB growth)"
        )
    else:
        lines.append("- ✗ memory: n/a (the memory run failed)")
    return lines


def report_lines(results: DnsResults) -> list[str]:
    if not (results.loads or results.memory):
        return [f"DNS benchmark FAILED: {_short('; '.join(results.errors.values()))}"]
    info = results.info
    lines = [
        f"dnsperf on the load CPU against each server alone on the SUT CPU (one process, taskset); "
        f"{info.get('versions', '')}; kairos code: {info.get('code', '?')}. Query file: "
        f"{results.queries:,} queries, all NOERROR ({NAMES:,} A names h0..h{NAMES - 1}.local.test, "
        f"AAAA and TXT for a tenth each), UDP, no EDNS. dnsdist and Kairos forward to a second dnsmasq "
        "with the same records on the load CPU. Load average at start "
        f"{info.get('load_start', '?')}, at end {info.get('load_end', '?')}: the machine is shared "
        "(other people's tests and benchmarks run on both CPUs), so every figure is noisy"
        + (": medians across rounds." if results.rounds else "."),
        "",
    ]
    if results.rounds:
        lines += [
            f"Saturation: `dnsperf -c {results.clients} -q {results.outstanding} -l {results.duration:g}` "
            f"per way and round, after a warm-up (one pass over the file, then {WARMUP:g} s); latency: "
            f"`dnsperf -c 1 -Q {results.latency_qps} -v` for {results.latency_queries:,} queries "
            f"per way and round. {results.rounds} round{'s' if results.rounds > 1 else ''}, order rotated; "
            "medians across rounds. "
            "CPU per query: the server's utime+stime (/proc, all threads) over the queries answered; "
            "core busy: that CPU time over the run's wall time (dnsperf's from its rusage).",
            "",
            "| server | queries/s | avg latency | latency stddev | CPU per query | SUT core busy "
            f"| dnsperf core busy | p50 at {results.latency_qps:,} q/s | p99 at {results.latency_qps:,} q/s "
            "| RSS start / warm / end |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for way in WAYS:
            rss = results.rss.get(way, {})
            memory = " / ".join(
                f"{rss[key] / 1024:.1f}" if key in rss else "-" for key in ("start", "warm", "end")
            )
            lines.append(
                f"| {LABELS[way]} | {fmt(load_median(results, way, lambda c: c.qps), '{:,.0f}')} "
                f"| {fmt(load_median(results, way, lambda c: c.avg_ms), '{:.3f} ms')} "
                f"| {fmt(load_median(results, way, lambda c: c.stddev_ms), '{:.3f} ms')} "
                f"| {fmt(load_median(results, way, cpu_us), '{:.1f} µs')} "
                f"| {fmt(load_median(results, way, lambda c: c.sut_cpu / c.wall * 100), '{:.0f}%')} "
                f"| {fmt(load_median(results, way, lambda c: c.dnsperf_cpu / c.wall * 100), '{:.0f}%')} "
                f"| {fmt(latency_median(results, way, lambda c: c.p50_ms), '{:.3f} ms')} "
                f"| {fmt(latency_median(results, way, lambda c: c.p99_ms), '{:.3f} ms')} "
                f"| {memory} MiB |"
            )
        bound = [
            LABELS[way]
            for way in WAYS
            if (load_median(results, way, lambda c: c.dnsperf_cpu / c.wall) or 0) >= BUSY
        ]
        if bound:
            lines += [
                "",
                f"dnsperf's own core was ≥ {BUSY:.0%} busy against {', '.join(bound)}: those queries/s are "
                "the load generator's limit, not the server's (compare CPU per query).",
            ]
        lines += ["", "Per round, queries/s (p50 at the fixed rate):", ""]
        for way in WAYS:
            cells = []
            for round_no in range(1, results.rounds + 1):
                load, latency = load_of(results, round_no, way), latency_of(results, round_no, way)
                qps = f"{load.qps:,.0f}" if load else "failed"
                p50 = f"{latency.p50_ms:.3f} ms" if latency else "failed"
                cells.append(f"{qps} ({p50})")
            lines.append(f"- {LABELS[way]}: {'; '.join(cells)}")
        checked = [cell.misses for cell in results.loads if cell.misses is not None]
        lines += [
            "",
            f"Kairos cached's cache misses during the measured runs: {sum(checked)} "
            f"(its /dns/cache/stats, read before and after each of the {len(checked)} runs)",
        ]
        lines.append("")
    lines += [
        "Memory (the gateway's VmRSS from /proc, sampled while dnsperf runs at the saturating settings):",
        "",
    ]
    lines += [f"- {memory_line(cell)}" for cell in results.memory] or ["- no memory run completed"]
    if not results.rounds:
        for way, rss in results.rss.items():
            values = " / ".join(
                f"{rss[key] / 1024:.1f}" if key in rss else "-" for key in ("start", "warm", "end")
            )
            lines.append(f"- {LABELS[way]}: RSS at its start / after the warm-up / at the end: {values} MiB")
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
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds per saturating run (1..60)")
    parser.add_argument(
        "--queries",
        type=int,
        help=f"queries of each memory run (default {MEMORY_QUERIES:,}; {SOAK_QUERIES:,} with --memory)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"only the memory runs, {SOAK_QUERIES:,} queries through each Kairos (RSS every second)",
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, help="dnsperf -c of the saturating runs")
    parser.add_argument(
        "--outstanding", type=int, default=OUTSTANDING, help="dnsperf -q of the saturating runs"
    )
    parser.add_argument(
        "--latency-queries", type=int, default=LATENCY_QUERIES, help="queries per fixed-rate latency run"
    )
    parser.add_argument("--sut-cpu", type=int, help="CPU of the servers measured")
    parser.add_argument("--load-cpu", type=int, help="CPU of dnsperf, the upstream dnsmasq and this script")
    parser.add_argument("--code", type=Path, help="run the kairos package from here (default: a fresh copy)")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument("--json", action="store_true", help="machine-readable output (for run.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    queries = args.queries or (SOAK_QUERIES if args.memory else MEMORY_QUERIES)
    if not (
        1 <= args.rounds <= 20
        and 1 <= args.duration <= 60
        and 1_000 <= queries <= 5_000_000
        and 1 <= args.clients <= 100
        and 1 <= args.outstanding <= 1_000
        and 500 <= args.latency_queries <= 20_000
    ):
        parser.error(
            "--rounds 1..20, --duration 1..60, --queries 1,000..5,000,000, --clients 1..100, "
            "--outstanding 1..1,000, --latency-queries 500..20,000 (every loop stays bounded)"
        )
    ensure_tools()
    results = run_dns_bench(
        args.rounds,
        args.duration,
        queries,
        args.sut_cpu,
        args.load_cpu,
        args.code,
        args.logs,
        args.memory,
        args.clients,
        args.outstanding,
        args.latency_queries,
    )
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
