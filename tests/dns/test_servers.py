"""The DNS servers the forwarding tests drive, proved with the real clients (dig, kdig): the zone of
tests/servers/dns_upstream.py over UDP and TCP, its EDNS and truncation, each of its modes, switched
on a running server, its record of queries; and dnsmasq's ``local.test``."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.dns.servers import (
    LOCAL_MAIL_A,
    LOCAL_SIP_A,
    LOCAL_WWW_A,
    LOCAL_WWW_AAAA,
    Dnsmasq,
    DnsUpstream,
    answer_id,
    dig,
    dns_upstream,
    dnsmasq,
    flags,
    kdig,
    status,
)
from tests.servers.dns_upstream import DECOY_A, HUGE_SIZE, NEGATIVE_TTL, SHORT_TTL, SOA_MINIMUM, TTL

WWW_A = ["192.0.2.10", "192.0.2.11"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsUpstream]:
    with dns_upstream(tmp_path_factory.mktemp("dns-upstream")) as server:
        yield server


@pytest.fixture
def normal(upstream: DnsUpstream) -> Iterator[DnsUpstream]:
    """The module's upstream, put back in ``normal`` mode and its record cleared after the test."""
    upstream.set_mode("normal")
    upstream.clear_queries()
    yield upstream
    upstream.set_mode("normal")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    with dnsmasq(tmp_path_factory.mktemp("dnsmasq")) as server:
        yield server


def short(port: int, name: str, qtype: str = "A", *options: str) -> list[str]:
    return dig(port, name, qtype, "+short", *options).splitlines()


def section(output: str, name: str) -> list[list[str]]:
    """The records of one section of dig's output, each split into fields."""
    lines = output.split(f";; {name} SECTION:\n", 1)
    if len(lines) < 2:
        return []
    return [line.split() for line in lines[1].split("\n\n", 1)[0].splitlines() if line.strip()]


def msg_size(output: str) -> int:
    return int(output.split("MSG SIZE  rcvd: ", 1)[1].split()[0])


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_upstream_serves_its_zone(normal: DnsUpstream, proto: str) -> None:
    options = ("+tcp",) if proto == "tcp" else ()
    port = normal.port
    assert short(port, "www.example.test", "A", *options) == WWW_A
    assert short(port, "www.example.test", "AAAA", *options) == ["2001:db8::10"]
    assert short(port, "example.test", "MX", *options) == ["10 mail.example.test."]
    assert short(port, "example.test", "TXT", *options) == ['"v=spf1 -all"']
    assert short(port, "_sip._tcp.example.test", "SRV", *options) == ["10 60 5060 sip.example.test."]
    assert short(port, "alias.example.test", "A", *options) == ["www.example.test.", *WWW_A]

    output = dig(port, "WwW.Example.TEST", "A", *options)
    assert status(output) == "NOERROR"
    assert {"qr", "aa", "rd", "ra"} <= flags(output)
    assert ";WwW.Example.TEST.\t\tIN\tA" in output  # the question is copied, case included
    assert [record[1:4] for record in section(output, "ANSWER")] == [[str(TTL), "IN", "A"]] * 2
    assert section(dig(port, "short.example.test", "A", *options), "ANSWER")[0][1] == str(SHORT_TTL)
    assert [entry["proto"] for entry in normal.queries()] == [proto] * 8


def test_upstream_negative_answers_carry_the_soa(normal: DnsUpstream) -> None:
    for name, qtype, rcode in [
        ("nope.example.test", "A", "NXDOMAIN"),
        ("www.example.test", "MX", "NOERROR"),  # NODATA
        ("_tcp.example.test", "A", "NOERROR"),  # an empty non-terminal
    ]:
        output = dig(normal.port, name, qtype)
        assert status(output) == rcode, output
        assert section(output, "ANSWER") == []
        soa = section(output, "AUTHORITY")
        assert len(soa) == 1 and soa[0][:4] == ["example.test.", str(NEGATIVE_TTL), "IN", "SOA"], output
        assert soa[0][-1] == str(SOA_MINIMUM)
    outside = dig(normal.port, "www.example.org", "A")
    assert status(outside) == "REFUSED"
    assert section(outside, "ANSWER") == [] and section(outside, "AUTHORITY") == []


def test_upstream_edns(normal: DnsUpstream) -> None:
    output = dig(normal.port, "www.example.test", "A", "+dnssec", "+bufsize=4096")
    assert "; EDNS: version: 0, flags: do; udp: 1232" in output
    assert "EDNS" not in dig(normal.port, "www.example.test", "A", "+noedns")
    assert status(dig(normal.port, "www.example.test", "A", "+edns=1", "+noednsnegotiation")) == "BADVERS"
    assert [(entry["payload"], entry["do"]) for entry in normal.queries()] == [
        (4096, True),
        (None, False),
        (1232, False),
    ]


def test_big_answer_is_truncated_over_udp_and_whole_over_tcp(normal: DnsUpstream) -> None:
    for bufsize in ("512", "1232", "4096"):  # over UDP it never fits: the server's own limit is 1232
        output = dig(normal.port, "big.example.test", "TXT", "+ignore", f"+bufsize={bufsize}")
        assert "tc" in flags(output) and section(output, "ANSWER") == [], output
    assert "tc" in flags(dig(normal.port, "big.example.test", "TXT", "+ignore", "+noedns"))
    whole = dig(normal.port, "big.example.test", "TXT", "+tcp")
    assert "tc" not in flags(whole)
    assert len(section(whole, "ANSWER")) == 10
    assert msg_size(whole) > 1500
    retried = dig(normal.port, "big.example.test", "TXT")  # dig retries over TCP by itself
    assert "Truncated, retrying in TCP mode" in retried and len(section(retried, "ANSWER")) == 10
    assert [entry["proto"] for entry in normal.queries()][-2:] == ["udp", "tcp"]

    # medium fits an EDNS answer (1232) but not a plain 512-byte one
    plain = dig(normal.port, "medium.example.test", "TXT", "+ignore", "+noedns")
    assert "tc" in flags(plain) and section(plain, "ANSWER") == []
    edns = dig(normal.port, "medium.example.test", "TXT", "+ignore")
    assert "tc" not in flags(edns) and len(section(edns, "ANSWER")) == 4
    assert 512 < msg_size(edns) <= 1232


def test_servfail_and_refused_modes(normal: DnsUpstream) -> None:
    normal.set_mode("servfail")
    output = dig(normal.port, "www.example.test")
    assert status(output) == "SERVFAIL" and section(output, "ANSWER") == []
    assert status(dig(normal.port, "www.example.test", "A", "+tcp")) == "SERVFAIL"
    normal.set_mode("refused")
    assert status(dig(normal.port, "www.example.test")) == "REFUSED"


def test_drop_mode_never_answers(normal: DnsUpstream) -> None:
    normal.set_mode("drop")
    started = time.monotonic()
    output = dig(normal.port, "www.example.test", "A", "+time=1")
    assert "timed out" in output and status(output) is None
    assert time.monotonic() - started < 3
    assert [entry["mode"] for entry in normal.queries()] == ["drop"]  # it did arrive


def test_truncate_mode(normal: DnsUpstream) -> None:
    normal.set_mode("truncate")
    udp = dig(normal.port, "www.example.test", "A", "+ignore")
    assert "tc" in flags(udp) and section(udp, "ANSWER") == []
    assert short(normal.port, "www.example.test", "A", "+tcp") == WWW_A


@pytest.mark.parametrize(("mode", "warning"), [("wrong-id", "ID mismatch"), ("wrong-question", "mismatch")])
def test_decoy_modes_send_the_right_answer_second(normal: DnsUpstream, mode: str, warning: str) -> None:
    normal.set_mode(mode)
    output = dig(normal.port, "www.example.test")
    assert warning in output  # dig saw the decoy first, ignored it, and waited for the right one
    assert status(output) == "NOERROR"
    assert [record[-1] for record in section(output, "ANSWER")] == WWW_A
    assert DECOY_A not in output.split(";; Got answer:", 1)[1]


def test_garbage_mode(normal: DnsUpstream) -> None:
    normal.set_mode("garbage")
    output = dig(normal.port, "www.example.test", "A", "+time=1")
    assert status(output) is None and "192.0.2.10" not in output
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # starts with the query's ID
        sock.settimeout(2)
        query = dns.message.make_query("www.example.test", "A")
        sock.sendto(query.to_wire(), ("127.0.0.1", normal.port))
        reply = sock.recv(4096)
    assert reply[:2] == struct.pack("!H", query.id)
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(reply)


def test_huge_mode(normal: DnsUpstream) -> None:
    normal.set_mode("huge")
    assert "tc" in flags(dig(normal.port, "www.example.test", "A", "+ignore"))
    for qtype in ("A", "AAAA", "TXT"):
        output = dig(normal.port, "anything.example.test", qtype, "+tcp")
        assert status(output) == "NOERROR" and "tc" not in flags(output)
        assert HUGE_SIZE - 1000 < msg_size(output) < 65535, qtype
    assert short(normal.port, "example.test", "MX", "+tcp") == ["10 mail.example.test."]


def test_slow_mode(normal: DnsUpstream) -> None:
    normal.set_mode("slow:400")
    started = time.monotonic()
    assert short(normal.port, "www.example.test") == WWW_A
    assert 0.4 <= time.monotonic() - started < 2


def test_mode_switches_on_the_running_server(normal: DnsUpstream) -> None:
    pid = normal.pid
    assert status(dig(normal.port, "www.example.test")) == "NOERROR"
    normal.set_mode("servfail")
    assert status(dig(normal.port, "www.example.test")) == "SERVFAIL"
    normal.set_mode("normal")
    assert status(dig(normal.port, "www.example.test")) == "NOERROR"
    normal.mode_file.write_text("")  # an empty (or missing) mode file is normal
    assert status(dig(normal.port, "www.example.test")) == "NOERROR"
    assert normal.pid == pid and normal.server.process.poll() is None
    assert [entry["mode"] for entry in normal.queries()] == ["normal", "servfail", "normal", "normal"]
    with pytest.raises(ValueError):
        normal.set_mode("sulk")


def test_record_file(normal: DnsUpstream) -> None:
    udp = dig(normal.port, "www.Example.test", "AAAA", "+dnssec", "+bufsize=1400")
    tcp = dig(normal.port, "example.test", "MX", "+tcp", "+noedns")
    first, second = normal.queries()
    assert first["proto"] == "udp" and first["qname"] == "www.Example.test." and first["qtype"] == "AAAA"
    assert first["id"] == answer_id(udp) and first["payload"] == 1400 and first["do"] is True
    assert second["proto"] == "tcp" and second["qname"] == "example.test." and second["qtype"] == "MX"
    assert second["id"] == answer_id(tcp) and second["payload"] is None and second["do"] is False
    assert first["peer"].startswith("127.0.0.1:") and first["time"] <= second["time"]
    record = normal.record
    assert record is not None and all(json.loads(line) for line in record.read_text().splitlines())


def test_several_queries_on_one_tcp_connection(normal: DnsUpstream) -> None:
    names = ["www.example.test", "nope.example.test", "example.test"]
    queries = [dns.message.make_query(name, "A") for name in names]
    with socket.create_connection(("127.0.0.1", normal.port), timeout=3) as sock:
        sock.sendall(b"".join(query.to_wire(prepend_length=True) for query in queries))  # pipelined
        replies = {}
        for _ in queries:
            length = struct.unpack("!H", _read(sock, 2))[0]
            reply = dns.message.from_wire(_read(sock, length))
            replies[reply.id] = reply
    assert [replies[query.id].rcode() for query in queries] == [
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOERROR,
    ]
    assert len({entry["peer"] for entry in normal.queries()}) == 1


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_kdig_over_tcp(normal: DnsUpstream) -> None:
    output = kdig(normal.port, "www.example.test", "A", "+tcp")
    assert status(output) == "NOERROR" and "(TCP)" in output
    assert all(address in output for address in WWW_A)
    assert [entry["proto"] for entry in normal.queries()] == ["tcp"]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dnsmasq_serves_local_test(local: Dnsmasq, proto: str) -> None:
    options = ("+tcp",) if proto == "tcp" else ()
    port = local.port
    assert short(port, "www.local.test", "A", *options) == [LOCAL_WWW_A]
    assert short(port, "www.local.test", "AAAA", *options) == [LOCAL_WWW_AAAA]
    assert short(port, "local.test", "MX", *options) == ["10 mail.local.test."]
    assert short(port, "local.test", "TXT", *options) == ['"v=spf1 -all"']
    assert short(port, "info.local.test", "TXT", *options) == ['"hello" "world"']
    assert short(port, "_sip._tcp.local.test", "SRV", *options) == ["10 60 5060 sip.local.test."]
    assert short(port, "alias.local.test", "A", *options) == ["www.local.test.", LOCAL_WWW_A]
    assert short(port, "mail.local.test", "A", *options) == [LOCAL_MAIL_A]
    assert short(port, "sip.local.test", "A", *options) == [LOCAL_SIP_A]
    output = dig(port, "www.local.test", "A", *options)
    assert section(output, "ANSWER")[0][1] == "300" and {"aa", "ra"} <= flags(output)
    nxdomain = dig(port, "nope.local.test", "A", *options)
    assert status(nxdomain) == "NXDOMAIN" and section(nxdomain, "AUTHORITY") == []  # no SOA here
    assert status(dig(port, "www.example.org", "A", *options)) == "REFUSED"  # it has no upstream


def test_dnsmasq_logs_queries(local: Dnsmasq) -> None:
    dig(local.port, "info.local.test", "TXT")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if {"qtype": "TXT", "qname": "info.local.test", "client": "127.0.0.1"} in local.queries():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"not in dnsmasq's log: {local.log.read_text()}")


def test_authoritative_dnsmasq(tmp_path: Path) -> None:
    with dnsmasq(tmp_path, authoritative=True) as server:
        assert short(server.port, "www.local.test") == [LOCAL_WWW_A]
        output = dig(server.port, "nope.local.test", "A", "+tcp")
        assert status(output) == "NXDOMAIN" and "aa" in flags(output)
        soa = section(output, "AUTHORITY")
        assert soa and soa[0][:4] == ["local.test.", "300", "IN", "SOA"]
        nodata = dig(server.port, "www.local.test", "MX")
        assert status(nodata) == "NOERROR" and section(nodata, "AUTHORITY")[0][3] == "SOA"
