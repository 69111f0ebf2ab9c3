"""DNS forwarding end to end: the real gateway (``python -m kairos run`` with ``KAIROS_DNS_PORT``)
in front of real DNS servers (dnsmasq, and tests/servers/dns_upstream.py for scripted faults),
asked by real clients (dig, kdig, dnspython over UDP, TCP and DNS-over-HTTPS).

One gateway for the module; its DNS routes:

- ``/dns`` (kairos-rs's shape: no parameter, so ``/dns/query`` and ``/dns/cache/...`` too), zone
  ``example.test``: the scripted upstream ``primary``, cached;
- ``/local``, zone ``local.test``: dnsmasq, cache off (answers compared with dnsmasq's own);
- ``/failover``, zone ``fail.test``: a silent upstream (``drop``), a SERVFAIL one, then ``backup``;
- ``/dead``, zone ``dead.test``: two upstreams that never answer, to see the fail-fast;
- ``/limited``, zone ``limited.test``: ``client_rate_limit`` 1 q/s, burst 3, on ``primary``.

A name outside every zone is answered REFUSED by the gateway itself. The DoH routes also take
names of their own zone only; the failover routes are reached over DoH for ``example.test``
names by listing that zone too (the listener gives ``example.test`` to ``/dns``, the first route
holding it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest
import trustme

from tests.dns.servers import Dnsmasq, DnsUpstream, dig, dns_upstream, dnsmasq, flags, kdig, status
from tests.processes import Server, free_port, kairos_run, server_process
from tests.servers.dns_upstream import DECOY_A

ADMIN_TOKEN = "dns-admin-token-for-tests"


def dns_route(path: str, ports: list[int], zones: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "protocol": "dns",
        "external_path": path,
        "internal_path": "/",
        "methods": ["GET", "POST"],
        "backends": [{"host": "127.0.0.1", "port": port} for port in ports],
        "zones": zones,
        **extra,
    }


class Gateway:
    def __init__(self, server: Server, dns_port: int) -> None:
        self.server = server
        self.dns_port = dns_port

    def udp(self, message: dns.message.Message, timeout: float = 3.0) -> dns.message.Message:
        return dns.query.udp(message, "127.0.0.1", port=self.dns_port, timeout=timeout)

    def tcp(self, message: dns.message.Message, timeout: float = 3.0) -> dns.message.Message:
        return dns.query.tcp(message, "127.0.0.1", port=self.dns_port, timeout=timeout)


@pytest.fixture(scope="module")
def primary(module_tmp: Path) -> Iterator[DnsUpstream]:
    with dns_upstream(module_tmp) as server:
        yield server


@pytest.fixture(scope="module")
def backup(module_tmp: Path) -> Iterator[DnsUpstream]:
    with dns_upstream(module_tmp) as server:
        yield server


@pytest.fixture(scope="module")
def silent(module_tmp: Path) -> Iterator[DnsUpstream]:
    with dns_upstream(module_tmp, mode="drop") as server:
        yield server


@pytest.fixture(scope="module")
def failing(module_tmp: Path) -> Iterator[DnsUpstream]:
    with dns_upstream(module_tmp, mode="servfail") as server:
        yield server


@pytest.fixture(scope="module")
def hostile(module_tmp: Path) -> Iterator[dict[str, DnsUpstream]]:
    """Upstreams that send a wrong reply first (wrong ID, wrong question) or only garbage."""
    with ExitStack() as stack:
        yield {
            mode: stack.enter_context(dns_upstream(module_tmp, mode=mode))
            for mode in ("wrong-id", "wrong-question", "garbage")
        }


@dataclass(frozen=True)
class Encrypted:
    dot: Server
    doh: Server
    ca_file: Path


@pytest.fixture(scope="module")
def encrypted(module_tmp: Path, primary: DnsUpstream) -> Iterator[Encrypted]:
    """DNS-over-TLS and DNS-over-HTTPS servers (tests/servers/dns_tls.py) relaying to ``primary``,
    their certificate from a trustme CA."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert, key = module_tmp / "dns-ca.pem", module_tmp / "dns-tls.pem", module_tmp / "dns-tls.key"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    servers = {}
    with ExitStack() as stack:
        for mode in ("dot", "doh"):
            port = free_port()
            args = ["-m", "tests.servers.dns_tls", "--port", str(port), "--upstream-port", str(primary.port)]
            args += ["--cert", str(cert), "--key", str(key), "--mode", mode]
            servers[mode] = stack.enter_context(
                server_process(args, port, module_tmp / f"dns-{mode}-{port}.log")
            )
        yield Encrypted(servers["dot"], servers["doh"], ca_file)


@pytest.fixture(scope="module")
def local(module_tmp: Path) -> Iterator[Dnsmasq]:
    with dnsmasq(module_tmp) as server:
        yield server


@pytest.fixture(scope="module")
def slow(module_tmp: Path) -> Iterator[DnsUpstream]:
    with dns_upstream(module_tmp, mode="slow:300") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path,
    primary: DnsUpstream,
    backup: DnsUpstream,
    silent: DnsUpstream,
    failing: DnsUpstream,
    local: Dnsmasq,
    hostile: dict[str, DnsUpstream],
    encrypted: Encrypted,
    slow: DnsUpstream,
) -> Iterator[Gateway]:
    routes = [
        dns_route("/dns", [primary.port], ["example.test"]),
        dns_route("/local", [local.port], ["local.test"], cache={"enabled": False}),
        dns_route(
            "/failover",
            [silent.port, failing.port, backup.port],
            ["fail.test", "example.test"],
            policy="sequential",
            failover_rcodes=["SERVFAIL"],
            timeout_ms=3000,
            cache={"enabled": False},
        ),
        dns_route("/dead", [free_port(), silent.port], ["dead.test", "example.test"], timeout_ms=1000),
        dns_route(
            "/limited",
            [primary.port],
            ["limited.test"],
            client_rate_limit={"queries_per_second": 1, "burst": 3},
        ),
    ]
    routes += [
        dns_route(f"/{mode}", [server.port], ["example.test"], timeout_ms=1000, cache={"enabled": False})
        for mode, server in hostile.items()
    ]
    routes.append(dns_route("/slow", [slow.port], ["slow.example.test"]))
    routes.append(
        dns_route(
            "/breaker",
            [silent.port],
            ["breaker.test", "example.test"],
            timeout_ms=400,
            cache={"enabled": False},
            circuit_breaker={"failure_threshold": 1, "success_threshold": 1, "reset_timeout_ms": 600000},
            dns={"max_fails": 100},  # the breaker, not the in-band health, is what stops the calls
        )
    )
    for name, scheme, server in (("dot", "tls", encrypted.dot), ("doh-upstream", "https", encrypted.doh)):
        for trusted in (True, False):
            tls = {"tls_ca_file": str(encrypted.ca_file)} if trusted else {}
            routes.append(
                {
                    **dns_route(f"/{name}{'' if trusted else '-untrusted'}", [], ["example.test"]),
                    "backends": [{"host": f"{scheme}://127.0.0.1", "port": server.port, **tls}],
                    "cache": {"enabled": False},
                    "timeout_ms": 2000,
                }
            )
    dns_port = free_port()
    env = {"KAIROS_DNS_PORT": str(dns_port), "KAIROS_ADMIN_TOKEN": ADMIN_TOKEN, "KAIROS_ACCESS_LOG": "true"}
    with kairos_run(module_tmp, {"version": 1, "routers": routes}, env=env) as server:
        yield Gateway(server, dns_port)


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.server.url, timeout=10) as client:
        yield client


def answers(output: str) -> list[str]:
    """The answer records of a dig run (+noall +answer), TTL column removed, sorted."""
    lines = [line.split() for line in output.splitlines() if line and not line.startswith(";")]
    return sorted(" ".join([fields[0].lower(), *fields[2:]]) for fields in lines if len(fields) >= 4)


def ttls(message: dns.message.Message) -> list[int]:
    return [rrset.ttl for rrset in message.answer]


# -- answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["A", "AAAA", "MX", "TXT", "SRV", "CNAME"])
def test_answers_are_those_of_the_upstream(gateway: Gateway, local: Dnsmasq, qtype: str) -> None:
    name = {
        "MX": "local.test",
        "TXT": "info.local.test",
        "SRV": "_sip._tcp.local.test",
        "CNAME": "alias.local.test",
    }.get(qtype, "www.local.test")
    for transport in ([], ["+tcp"]):
        direct = dig(local.port, name, qtype, "+noall", "+answer", *transport)
        through = dig(gateway.dns_port, name, qtype, "+noall", "+answer", *transport)
        assert answers(direct), direct
        assert answers(through) == answers(direct)


def test_kdig_over_tcp(gateway: Gateway) -> None:
    output = kdig(gateway.dns_port, "www.local.test", "A", "+tcp")
    assert status(output) == "NOERROR"
    assert "198.51.100.10" in output


def test_a_cached_answer_counts_down_and_answers_with_the_querys_id(
    gateway: Gateway, primary: DnsUpstream
) -> None:
    primary.clear_queries()
    first = dns.message.make_query("www.example.test", "A")
    answer = gateway.udp(first)
    assert answer.id == first.id and answer.rcode() == dns.rcode.NOERROR
    assert ttls(answer) == [300]
    time.sleep(1.1)
    second = dns.message.make_query("WwW.ExAmPlE.tEsT", "A")  # DNS 0x20: another case, same entry
    second.id = (first.id + 1) % 65536
    cached = gateway.udp(second)
    assert cached.id == second.id
    assert cached.question[0].name.to_text() == "WwW.ExAmPlE.tEsT."  # the question as asked
    assert cached.answer[0].to_text().split()[-1] == answer.answer[0].to_text().split()[-1]
    assert 290 <= ttls(cached)[0] <= 299  # counted down by the whole seconds it waited
    asked = [query for query in primary.queries() if query["qname"].lower() == "www.example.test."]
    assert len(asked) == 1  # the second came from the cache


def test_nxdomain_is_cached_for_the_soa_ttl(gateway: Gateway, primary: DnsUpstream) -> None:
    name = f"missing-{random.randrange(10**9)}.example.test"
    primary.clear_queries()
    for _ in range(3):
        answer = gateway.udp(dns.message.make_query(name, "A"))
        assert answer.rcode() == dns.rcode.NXDOMAIN
        soa = answer.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA
        assert soa.ttl <= min(soa.ttl, soa[0].minimum)
    assert len([query for query in primary.queries() if query["qname"].lower() == name + "."]) == 1


def test_a_truncated_answer_is_fetched_over_tcp_and_truncated_for_a_small_client(
    gateway: Gateway, primary: DnsUpstream
) -> None:
    primary.clear_queries()
    whole = dig(gateway.dns_port, "big.example.test", "TXT", "+bufsize=1232")  # dig retries TCP on TC
    assert status(whole) == "NOERROR"
    small = dig(gateway.dns_port, "big.example.test", "TXT", "+ignore", "+bufsize=512")
    assert "tc" in flags(small)
    plain = dns.message.make_query("big.example.test", "TXT", use_edns=False)
    truncated = gateway.udp(plain)
    assert truncated.flags & dns.flags.TC and not truncated.answer and truncated.id == plain.id
    over_tcp = gateway.tcp(dns.message.make_query("big.example.test", "TXT"))
    assert sum(len(rrset) for rrset in over_tcp.answer) > 5 and not over_tcp.flags & dns.flags.TC
    protos = [query["proto"] for query in primary.queries() if query["qname"].lower() == "big.example.test."]
    assert protos[:2] == ["udp", "tcp"]  # the upstream's TC answer was fetched again over TCP


def test_edns_payload_goes_upstream_at_least_1232(gateway: Gateway, primary: DnsUpstream) -> None:
    primary.clear_queries()
    for payload in (512, 4096):
        name = f"p{payload}-{random.randrange(10**9)}.example.test"
        gateway.udp(dns.message.make_query(name, "A", use_edns=0, payload=payload))
        seen = [query for query in primary.queries() if query["qname"].lower() == name + "."]
        assert seen and seen[0]["payload"] == max(payload, 1232)


# -- failover and health -----------------------------------------------------------------------------


def doh(http: httpx.Client, path: str, message: dns.message.Message) -> dns.message.Message:
    response = http.post(path, content=message.to_wire(), headers={"content-type": "application/dns-message"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dns-message"
    return dns.message.from_wire(response.content)


def test_failover_past_a_silent_and_a_failing_upstream(
    http: httpx.Client, silent: DnsUpstream, failing: DnsUpstream, backup: DnsUpstream
) -> None:
    backup.clear_queries()
    answer = doh(http, "/failover", dns.message.make_query("www.example.test", "A"))
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    assert any(query["qname"].lower() == "www.example.test." for query in backup.queries())


def test_every_upstream_down_answers_servfail_at_once(http: httpx.Client) -> None:
    for _ in range(3):  # max_fails (2) failures mark both upstreams down
        answer = doh(http, "/dead", dns.message.make_query("www.example.test", "A"))
        assert answer.rcode() == dns.rcode.SERVFAIL
    started = time.monotonic()
    answer = doh(http, "/dead", dns.message.make_query("www.example.test", "AAAA"))
    elapsed = time.monotonic() - started
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert elapsed < 0.5, f"{elapsed:.3f} s: a down route must not wait for its 1 s timeout"


def test_a_downed_upstream_comes_back_after_a_probe(module_tmp: Path) -> None:
    with dns_upstream(module_tmp, mode="drop") as flaky:
        route = dns_route("/flaky", [flaky.port], ["example.test"], timeout_ms=500, cache={"enabled": False})
        route["dns"] = {"health_check_ms": 100}
        dns_port = free_port()
        with kairos_run(
            module_tmp, {"version": 1, "routers": [route]}, env={"KAIROS_DNS_PORT": str(dns_port)}
        ):
            query = dns.message.make_query("www.example.test", "A")
            for _ in range(2):
                reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=3)
                assert reply.rcode() == dns.rcode.SERVFAIL
            flaky.set_mode("normal")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=3)
                if reply.rcode() == dns.rcode.NOERROR:
                    break
                time.sleep(0.1)
            assert reply.rcode() == dns.rcode.NOERROR
            assert any(q["qname"] == "." and q["qtype"] == "NS" for q in flaky.queries())  # the probe


@pytest.mark.parametrize("mode", ["wrong-id", "wrong-question"])
def test_a_spoofed_reply_first_is_ignored(http: httpx.Client, mode: str) -> None:
    """The upstream sends a decoy (another ID, or the right ID for another question) before the real
    answer: the gateway takes only the reply that matches its query."""
    answer = doh(http, f"/{mode}", dns.message.make_query("www.example.test", "A"))
    addresses = {record.to_text() for rrset in answer.answer for record in rrset}
    assert addresses == {"192.0.2.10", "192.0.2.11"}
    assert DECOY_A not in addresses


def test_an_upstream_sending_garbage_gives_servfail(http: httpx.Client) -> None:
    answer = doh(http, "/garbage", dns.message.make_query("www.example.test", "A"))
    assert answer.rcode() == dns.rcode.SERVFAIL and not answer.answer


@pytest.mark.parametrize("name", ["dot", "doh-upstream"])
def test_encrypted_upstreams_verified_by_the_routes_ca(http: httpx.Client, name: str) -> None:
    """tls:// (DNS-over-TLS) and https:// (DNS-over-HTTPS) upstreams: answered when the route trusts
    their CA (tls_ca_file), SERVFAIL when it does not (the system CAs do not know the test CA)."""
    answer = doh(http, f"/{name}", dns.message.make_query("www.example.test", "A"))
    assert {record.to_text() for rrset in answer.answer for record in rrset} == {"192.0.2.10", "192.0.2.11"}
    refused = doh(http, f"/{name}-untrusted", dns.message.make_query("www.example.test", "A"))
    assert refused.rcode() == dns.rcode.SERVFAIL and not refused.answer


async def _at_once(port: int, count: int) -> list[dns.message.Message]:
    query = dns.message.make_query("www.slow.example.test", "A")
    return await asyncio.gather(
        *(dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5) for _ in range(count))
    )


def test_identical_concurrent_misses_share_one_upstream_query(gateway: Gateway, slow: DnsUpstream) -> None:
    """20 clients ask the same uncached name while the upstream takes 300 ms: one upstream query."""
    slow.clear_queries()
    answers = asyncio.run(_at_once(gateway.dns_port, 20))
    assert {answer.rcode() for answer in answers} == {dns.rcode.NXDOMAIN}
    assert len(slow.queries()) == 1


def test_an_open_circuit_answers_servfail_without_asking(http: httpx.Client, silent: DnsUpstream) -> None:
    silent.clear_queries()
    first = doh(http, "/breaker", dns.message.make_query("a.breaker.test", "A"))  # times out: opens
    assert first.rcode() == dns.rcode.SERVFAIL
    asked = len(silent.queries())
    started = time.monotonic()
    second = doh(http, "/breaker", dns.message.make_query("b.breaker.test", "A"))
    assert second.rcode() == dns.rcode.SERVFAIL and time.monotonic() - started < 0.3
    assert len(silent.queries()) == asked  # the open circuit kept the query from the upstream


# -- zones, limits, DoH --------------------------------------------------------------------------------


def test_zones_pick_the_route(gateway: Gateway, primary: DnsUpstream, local: Dnsmasq) -> None:
    assert "198.51.100.10" in dig(gateway.dns_port, "www.local.test", "A", "+short")
    assert dig(gateway.dns_port, "www.example.test", "A", "+short").strip()
    outside = dig(gateway.dns_port, "www.elsewhere.test", "A")
    assert status(outside) == "REFUSED"


def test_client_rate_limit_refuses_past_the_burst(gateway: Gateway, primary: DnsUpstream) -> None:
    primary.clear_queries()
    codes = []
    for index in range(8):
        reply = gateway.udp(dns.message.make_query(f"q{index}.limited.test", "A"))
        codes.append(reply.rcode())
    assert codes.count(dns.rcode.REFUSED) >= 4
    reached = [query for query in primary.queries() if query["qname"].endswith("limited.test.")]
    assert len(reached) <= 4  # the burst (3), plus at most one token refilled meanwhile


def test_doh_get_post_and_cache_control(http: httpx.Client) -> None:
    query = dns.message.make_query("www.example.test", "A")
    query.id = 0  # RFC 8484 §4.1
    encoded = base64.urlsafe_b64encode(query.to_wire()).rstrip(b"=").decode()
    got = http.get("/dns", params={"dns": encoded})
    assert got.status_code == 200
    answer = dns.message.from_wire(got.content)
    assert answer.rcode() == dns.rcode.NOERROR and answer.id == 0
    max_age = int(got.headers["cache-control"].split("=")[1])
    assert 0 < max_age <= min(ttls(answer))
    posted = dns.query.https(query, str(http.base_url).rstrip("/") + "/dns", timeout=5)
    assert posted.answer and posted.rcode() == dns.rcode.NOERROR
    missing = http.get(
        "/dns",
        params={
            "dns": base64.urlsafe_b64encode(dns.message.make_query("gone.example.test", "A").to_wire())
            .rstrip(b"=")
            .decode()
        },
    )
    assert missing.status_code == 200  # NXDOMAIN is a DNS answer: HTTP 200
    assert dns.message.from_wire(missing.content).rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    ("request_kwargs", "status_code", "kind"),
    [
        (
            {"method": "POST", "content": b"x" * 20, "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"method": "GET", "params": {"dns": "***"}}, 400, "bad_request"),
        ({"method": "GET"}, 400, "bad_request"),
        (
            {"method": "POST", "content": b"abc", "headers": {"content-type": "application/dns-message"}},
            400,
            "bad_request",
        ),
    ],
)
def test_bad_doh_requests_are_json_errors(
    http: httpx.Client, request_kwargs: dict[str, Any], status_code: int, kind: str
) -> None:
    arguments = dict(request_kwargs)
    response = http.request(arguments.pop("method"), "/dns", **arguments)
    assert response.status_code == status_code
    body = response.json()
    assert body["type"] == kind and body["request_id"] and body["timestamp"] and body["error"]


def test_kairos_rs_json_api(http: httpx.Client) -> None:
    name = f"json-{random.randrange(10**9)}.example.test"
    wire = dns.message.make_query(name, "A").to_wire().hex()
    first = http.post("/dns/query", json={"query": wire})
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    assert dns.message.from_wire(bytes.fromhex(first.json()["response"])).rcode() == dns.rcode.NXDOMAIN
    assert http.post("/dns/query", json={"query": wire}).json()["cached"] is True
    stats = http.get("/dns/cache/stats").json()
    assert stats["entries"] >= 1 and stats["hits"] >= 1
    assert "removed" in http.post("/dns/cache/cleanup").json()
    bad = http.post("/dns/query", json={"query": "zz"})
    assert bad.status_code == 400 and "hex" in bad.json()["error"]
    assert http.get("/dns/nothing-here").status_code == 404


# -- robustness ---------------------------------------------------------------------------------------


def test_random_and_mutated_packets_never_break_the_listener(gateway: Gateway) -> None:
    good = dns.message.make_query("www.example.test", "A").to_wire()
    generator = random.Random(18)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index in range(10_000):
            if index % 2:
                packet = bytes(generator.randrange(256) for _ in range(generator.randrange(0, 80)))
            else:
                mutable = bytearray(good)
                for _ in range(generator.randrange(1, 4)):
                    mutable[generator.randrange(len(mutable))] = generator.randrange(256)
                packet = bytes(mutable[: generator.randrange(1, len(mutable) + 1)])
            sock.sendto(packet, ("127.0.0.1", gateway.dns_port))
    with socket.create_connection(("127.0.0.1", gateway.dns_port), timeout=3) as stream:
        for length in (0, 3, 11, 300):
            stream.sendall(struct.pack("!H", length) + os.urandom(length))
        stream.sendall(struct.pack("!H", len(good)) + good)
        stream.settimeout(3)
        received = b""
        while True:
            chunk = stream.recv(65536)
            assert chunk, "the listener closed the connection without answering the good query"
            received += chunk
            if good[:2] in received:
                break
    assert gateway.server.process.poll() is None
    assert gateway.udp(dns.message.make_query("www.example.test", "A")).rcode() == dns.rcode.NOERROR


def test_metrics_and_access_log(gateway: Gateway, http: httpx.Client) -> None:
    gateway.udp(dns.message.make_query("www.example.test", "A"))
    text = http.get("/metrics").text
    assert 'kairos_dns_requests_total{proto="udp",qtype="A",rcode="NOERROR",route="/dns"}' in text
    assert 'kairos_dns_cache_hits_total{route="/dns",type="success"}' in text
    assert "kairos_dns_upstream_healthy{upstream=" in text
    assert 'kairos_dns_listener_up{proto="udp"} 1.0' in text
    time.sleep(0.3)  # the access log is written every 100 ms
    assert "DNS/udp" in gateway.server.output() and "www.example.test." in gateway.server.output()


def test_reload_adds_and_removes_dns_routes_without_restarting_the_listener(
    module_tmp: Path, local: Dnsmasq
) -> None:
    dns_port = free_port()
    http_only = {
        "external_path": "/x",
        "internal_path": "/",
        "methods": ["GET"],
        "backends": [{"host": "http://127.0.0.1", "port": 9}],
    }
    env = {"KAIROS_DNS_PORT": str(dns_port), "KAIROS_ADMIN_TOKEN": ADMIN_TOKEN}
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with kairos_run(module_tmp, {"version": 1, "routers": [http_only]}, env=env) as server:
        assert status(dig(dns_port, "www.local.test", "A", "+time=1")) is None  # no listener yet
        added = httpx.post(
            f"{server.url}/api/routes",
            json=dns_route("/local", [local.port], ["local.test"]),
            headers=headers,
        )
        assert added.status_code in (200, 201), added.text
        deadline = time.monotonic() + 5
        output = ""
        while time.monotonic() < deadline and status(output) != "NOERROR":
            output = dig(dns_port, "www.local.test", "A", "+time=1")
        assert status(output) == "NOERROR"
        removed = httpx.put(f"{server.url}/api/routes", json={"routes": [http_only]}, headers=headers)
        assert removed.status_code == 200, removed.text
        assert status(dig(dns_port, "www.local.test", "A")) == "REFUSED"  # the same listener, no route
        again = httpx.put(
            f"{server.url}/api/routes",
            json={"routes": [http_only, dns_route("/local", [local.port], ["local.test"])]},
            headers=headers,
        )
        assert again.status_code == 200, again.text
        assert status(dig(dns_port, "www.local.test", "A")) == "NOERROR"
        assert server.process.poll() is None


def test_every_worker_binds_the_dns_port(module_tmp: Path, local: Dnsmasq) -> None:
    """``--workers 2``: both workers bind the listener's port (SO_REUSEPORT); without it the second
    worker's startup would fail on an address in use."""
    port, dns_port = free_port(), free_port()
    config = module_tmp / f"workers-{port}.json"
    config.write_text(
        json.dumps({"version": 1, "routers": [dns_route("/local", [local.port], ["local.test"])]})
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    environment.update(
        {"KAIROS_CONFIG_PATH": str(config), "KAIROS_DNS_PORT": str(dns_port), "KAIROS_DRAIN_DELAY": "0"}
    )
    command = ["-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with server_process(command, port, module_tmp / f"workers-{port}.log", environment) as server:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.output().count("DNS listener on") < 2:
            time.sleep(0.1)
        assert server.output().count("DNS listener on") == 2, server.output()
        for _ in range(20):
            assert "198.51.100.10" in dig(dns_port, "www.local.test", "A", "+short")
