"""Real DNS servers on 127.0.0.1 for the DNS forwarding tests, and the real DNS clients.

- ``dns_upstream``: tests/servers/dns_upstream.py, authoritative for ``example.test.`` over UDP and
  TCP, whose misbehaviour (``set_mode``) a test switches while it runs, and which records every
  query it receives (``queries``). Its zone and modes are described in that module.
- ``dnsmasq``: the real dnsmasq (``make system-deps``), no upstreams and no system files, serving the
  ``local.test.`` records of ``LOCAL_RECORDS``.
- ``dig`` / ``kdig``: the real clients against 127.0.0.1, with a bounded timeout.

Every server is started with its PID recorded and stopped by that PID (tests/processes.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.processes import Server, free_port, server_process
from tests.servers.dns_upstream import MODES

DIG_TIMEOUT = 20.0  # seconds a dig/kdig process may take at most, whatever its options

# The dnsmasq zone: names, addresses and records (TTL ``LOCAL_TTL`` everywhere).
LOCAL_ZONE = "local.test."
LOCAL_TTL = 300  # authoritative mode too: there --auth-ttl sets every TTL, the SOA minimum included
LOCAL_WWW_A = "198.51.100.10"
LOCAL_WWW_AAAA = "2001:db8:1::10"
LOCAL_MAIL_A = "198.51.100.25"
LOCAL_SIP_A = "198.51.100.50"
LOCAL_RECORDS: tuple[str, ...] = (
    f"--host-record=www.local.test,{LOCAL_WWW_A},{LOCAL_WWW_AAAA}",
    f"--host-record=mail.local.test,{LOCAL_MAIL_A}",
    f"--host-record=sip.local.test,{LOCAL_SIP_A}",
    "--mx-host=local.test,mail.local.test,10",
    "--txt-record=local.test,v=spf1 -all",
    "--txt-record=info.local.test,hello,world",
    "--srv-host=_sip._tcp.local.test,sip.local.test,5060,10,60",
    "--cname=alias.local.test,www.local.test",
)


def _valid_mode(mode: str) -> bool:
    return mode in MODES or (mode.startswith("slow:") and mode[5:].isdigit())


@contextmanager
def _dns_process(
    tmp_path: Path, name: str, make_args: Callable[[int], list[str]], program: str = sys.executable
) -> Iterator[Server]:
    """``server_process`` on a fresh port, tried up to 3 times: ``free_port`` checks the TCP port
    only, so the server exits early when its UDP port happens to be taken."""
    for attempt in range(3):
        port = free_port()
        stack = ExitStack()
        try:
            server = stack.enter_context(
                server_process(make_args(port), port, tmp_path / f"{name}-{port}.log", program=program)
            )
        except RuntimeError:
            stack.close()
            if attempt == 2:
                raise
            continue
        with stack:
            yield server
        return


@dataclass
class DnsUpstream:
    """A running tests/servers/dns_upstream.py."""

    server: Server
    mode_file: Path
    record: Path | None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.pid

    def set_mode(self, mode: str) -> None:
        """Switch the running server: it reads the mode before every query."""
        if not _valid_mode(mode):
            raise ValueError(f"unknown dns_upstream mode {mode!r}: one of {MODES} or slow:<ms>")
        temporary = self.mode_file.with_name(self.mode_file.name + ".tmp")
        temporary.write_text(mode + "\n")
        os.replace(temporary, self.mode_file)  # the server never reads a half-written file

    def queries(self) -> list[dict[str, Any]]:
        """Every query received so far (since ``clear_queries``), oldest first: ``{"proto", "qname",
        "qtype", "id", "payload", "do", "mode", "peer", "time"}``."""
        if self.record is None:
            raise RuntimeError("dns_upstream was started with record=False")
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def clear_queries(self) -> None:
        if self.record is None:
            raise RuntimeError("dns_upstream was started with record=False")
        self.record.write_text("")  # the server appends (O_APPEND): it goes on at the new end


@contextmanager
def dns_upstream(tmp_path: Path, mode: str = "normal", record: bool = True) -> Iterator[DnsUpstream]:
    """tests/servers/dns_upstream.py on 127.0.0.1 (UDP and TCP, same port), starting in ``mode``."""
    if not _valid_mode(mode):
        raise ValueError(f"unknown dns_upstream mode {mode!r}: one of {MODES} or slow:<ms>")
    files: dict[str, Path | None] = {}

    def make_args(port: int) -> list[str]:
        mode_file = tmp_path / f"dns-upstream-{port}.mode"
        mode_file.write_text(mode + "\n")
        args = ["-m", "tests.servers.dns_upstream", "--port", str(port), "--mode-file", str(mode_file)]
        files["mode"] = mode_file
        files["record"] = None
        if record:
            record_file = tmp_path / f"dns-upstream-{port}.jsonl"
            record_file.write_text("")
            args += ["--record", str(record_file)]
            files["record"] = record_file
        return args

    with _dns_process(tmp_path, "dns-upstream", make_args) as server:
        mode_file = files["mode"]
        assert mode_file is not None
        yield DnsUpstream(server, mode_file, files["record"])


@dataclass
class Dnsmasq:
    """A running dnsmasq serving ``local.test.``."""

    server: Server
    log: Path  # its query log (--log-queries)
    authoritative: bool

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.pid

    def queries(self) -> list[dict[str, str]]:
        """The queries dnsmasq logged so far: ``{"qtype", "qname", "client"}``, oldest first."""
        if not self.log.exists():
            return []
        pattern = re.compile(r"\b(?:query|auth)\[(\w+)\] (\S+) from (\S+)")
        return [
            {"qtype": match[1], "qname": match[2], "client": match[3]}
            for match in pattern.finditer(self.log.read_text(errors="replace"))
        ]


def dnsmasq_args(port: int, log: Path, authoritative: bool = False) -> list[str]:
    """dnsmasq's command line: in the foreground (``--no-daemon``: no fork, no pid file, no change of
    user, which is why it runs as root here without ``--user``), no config file, no resolv.conf, no
    /etc/hosts, no upstream, listening on 127.0.0.1 only. ``authoritative`` makes it authoritative
    for ``local.test`` (``--auth-zone``: AA, NS in authority, SOA in NXDOMAIN/NODATA answers, no RA);
    otherwise it answers from its local records (AA and RA set) and NXDOMAIN/NODATA carry no SOA."""
    args = [
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={port}",
        "--local=/local.test/",
        f"--local-ttl={LOCAL_TTL}",
        "--log-queries",
        f"--log-facility={log}",
        *LOCAL_RECORDS,
    ]
    if authoritative:
        args += [
            "--auth-server=ns.local.test,127.0.0.1",
            "--auth-zone=local.test",
            "--auth-soa=2026120201,hostmaster.local.test,1200,120,604800",
            f"--auth-ttl={LOCAL_TTL}",  # every TTL in authoritative answers, and the SOA minimum
        ]
    return args


@contextmanager
def dnsmasq(tmp_path: Path, authoritative: bool = False) -> Iterator[Dnsmasq]:
    """The real dnsmasq on 127.0.0.1 (UDP and TCP, same port) serving ``local.test.``."""
    program = shutil.which("dnsmasq")
    if program is None:
        raise RuntimeError("dnsmasq is not installed: run `make system-deps` (package dnsmasq-base)")
    logs: dict[str, Path] = {}

    def make_args(port: int) -> list[str]:
        logs["queries"] = tmp_path / f"dnsmasq-{port}.queries.log"
        return dnsmasq_args(port, logs["queries"], authoritative)

    with _dns_process(tmp_path, "dnsmasq", make_args, program=program) as server:
        yield Dnsmasq(server, logs["queries"], authoritative)


def _run(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"{command[0]} is not installed: run `make system-deps`")
    result = subprocess.run(command, capture_output=True, text=True, timeout=DIG_TIMEOUT, check=False)
    return result.stdout


def dig(port: int, name: str, qtype: str = "A", *options: str) -> str:
    """``dig`` (BIND) against 127.0.0.1:``port``, its stdout. One try of at most 2 s by default
    (``+time=2 +tries=1``; later ``options`` override them); ~/.digrc is not read."""
    return _run(["dig", "-r", "@127.0.0.1", "-p", str(port), name, qtype, "+time=2", "+tries=1", *options])


def kdig(port: int, name: str, qtype: str = "A", *options: str) -> str:
    """``kdig`` (Knot) against 127.0.0.1:``port``, its stdout (``+time=2 +retry=0`` by default)."""
    return _run(["kdig", "@127.0.0.1", "-p", str(port), name, qtype, "+time=2", "+retry=0", *options])


def status(output: str) -> str | None:
    """The rcode of a dig/kdig answer (``NOERROR``, ``NXDOMAIN``...), None when there was none."""
    match = re.search(r"status: (\w+)", output)
    return match[1] if match else None


def flags(output: str) -> set[str]:
    """The header flags of a dig/kdig answer (``{"qr", "aa", "tc", ...}``)."""
    match = re.search(r"^;; [Ff]lags: ([a-z ]*)", output, re.MULTILINE)
    return set(match[1].split()) if match else set()


def answer_id(output: str) -> int | None:
    match = re.search(r"\bid: (\d+)", output)
    return int(match[1]) if match else None
