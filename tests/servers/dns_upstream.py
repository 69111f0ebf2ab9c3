"""A real DNS server for the DNS forwarding tests: authoritative for ``example.test.``, on dnspython
and raw asyncio, serving UDP and TCP (2-byte length framing, several queries per connection,
answered concurrently) on 127.0.0.1.

python -m tests.servers.dns_upstream --port 5353 [--mode-file mode.txt] [--record queries.jsonl]

The zone (``RECORDS``; every TTL is ``TTL`` = 300 unless said otherwise):

- ``example.test.``: SOA (TTL 300, minimum 60), NS ``ns1``, MX ``10 mail``, TXT ``"v=spf1 -all"``
- ``ns1`` A, ``mail`` A, ``sip`` A; ``www`` A (two addresses) and AAAA
- ``_sip._tcp`` SRV ``10 60 5060 sip.example.test.`` (so ``_tcp`` is an empty non-terminal: NODATA)
- ``alias`` CNAME ``www.example.test.`` (an A query gets the CNAME and www's A RRset, an MX query
  the CNAME and the SOA: chains are followed inside the zone)
- ``short`` A with TTL 2, ``zero`` A with TTL 0
- ``medium`` TXT, an answer of ~900 bytes (fits 1232-byte EDNS UDP, not 512)
- ``big`` TXT, an answer of > 2,000 bytes (fits no UDP answer of this server: always TC over UDP)

Answers are authoritative and minimal (AA and RA set, nothing in authority or additional for a
positive answer). An unknown name in the zone is NXDOMAIN, an existing name without the type (or an
empty non-terminal) is NODATA (NOERROR, no answer): both carry the SOA in the authority section
with TTL min(SOA TTL, SOA minimum) = 60 (RFC 2308). A name outside the zone is REFUSED, a class
other than IN is REFUSED, an opcode other than QUERY is NOTIMP, an unparseable query FORMERR (when it
has at least a header), a query with EDNS version > 0 BADVERS. The reply copies the query's ID and
question (case included) and RD. EDNS0: a query with an OPT gets an OPT with this server's payload
size 1232 (and its DO bit copied); over UDP the reply must fit min(client payload, 1232) bytes (at
least 512), or 512 without EDNS, or it is sent with TC set and only the question (and OPT). Over TCP
the whole answer is sent. Records go out in a fixed order (no round robin).

``--mode-file FILE`` is read before every query (missing or empty = ``normal``), so a test switches
a running server by rewriting it:

- ``normal``: as above.
- ``servfail`` / ``refused``: rcode SERVFAIL / REFUSED, no records.
- ``slow:<ms>``: the normal answer after ``ms`` milliseconds (other queries are not held up).
- ``drop``: no answer at all (a TCP connection stays open until the client closes it).
- ``truncate``: every UDP answer has TC set (question only); TCP answers are complete.
- ``wrong-id``: first a decoy reply with another ID (same question, decoy data: ``DECOY_A``,
  ``DECOY_AAAA``, ``DECOY_TXT``), 20 ms later the right answer. Over TCP too, as two frames
  (``dig +tcp`` gives up there with "ID mismatch"; over UDP it waits for the right one).
- ``wrong-question``: first a decoy reply with the right ID for ``decoy.example.test.`` (same type,
  decoy data), 20 ms later the right answer. Over TCP too.
- ``garbage``: random bytes starting with the query's ID and a header no parser accepts (QR set,
  65535 questions), 30 to 100 bytes; never a valid answer. Over TCP as one length-framed message.
- ``huge``: an A, AAAA or TXT query for any name in the zone gets a valid answer of ~60,000 bytes
  (thousands of records: ``huge_rdatas``); over UDP that is TC. Other types are answered as normal.

``--record FILE``: one JSON line appended (and flushed) per query received, before it is answered:
``{"proto": "udp"|"tcp", "qname": "www.example.test." (as received) or null when unparseable,
"qtype": "A" or null, "id": int or null, "payload": EDNS UDP size or null, "do": bool, "mode": str,
"peer": "127.0.0.1:<client port>" (the same for queries on one TCP connection), "time": unix time}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import IO, Any, cast

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = dns.name.from_text("example.test.")
TTL = 300
SHORT_TTL = 2
SOA_TTL = 300
SOA_MINIMUM = 60
NEGATIVE_TTL = min(SOA_TTL, SOA_MINIMUM)  # the TTL of the SOA in NXDOMAIN/NODATA answers
OUR_PAYLOAD = 1232  # the EDNS UDP payload size this server advertises, and its own UDP limit
NO_EDNS_PAYLOAD = 512
HUGE_SIZE = 60_000  # the size of a ``huge`` answer, about
DECOY_NAME = "decoy.example.test."
DECOY_A = "192.0.2.66"
DECOY_AAAA = "2001:db8::66"
DECOY_TXT = "decoy"
DECOY_DELAY = 0.02  # seconds between the decoy reply and the right one
TCP_IDLE = 30.0  # seconds a TCP connection may stay silent
MODES = ("normal", "servfail", "refused", "drop", "truncate", "wrong-id", "wrong-question", "garbage", "huge")


def _txt_strings(label: str, count: int) -> tuple[str, ...]:
    """``count`` TXT records of one 200-character string each."""
    return tuple(f'"{label}-{index:02d}-' + "abcdefghij" * 19 + '0123456"' for index in range(count))


# (name relative to the zone, TTL, type, rdata texts): the whole zone.
RECORDS: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (
    ("@", SOA_TTL, "SOA", (f"ns1 hostmaster 2026120201 3600 600 86400 {SOA_MINIMUM}",)),
    ("@", TTL, "NS", ("ns1",)),
    ("@", TTL, "MX", ("10 mail",)),
    ("@", TTL, "TXT", ('"v=spf1 -all"',)),
    ("ns1", TTL, "A", ("192.0.2.53",)),
    ("www", TTL, "A", ("192.0.2.10", "192.0.2.11")),
    ("www", TTL, "AAAA", ("2001:db8::10",)),
    ("mail", TTL, "A", ("192.0.2.25",)),
    ("_sip._tcp", TTL, "SRV", ("10 60 5060 sip",)),
    ("sip", TTL, "A", ("192.0.2.50",)),
    ("alias", TTL, "CNAME", ("www",)),
    ("short", SHORT_TTL, "A", ("192.0.2.2",)),
    ("zero", 0, "A", ("192.0.2.3",)),
    ("medium", TTL, "TXT", _txt_strings("medium", 4)),
    ("big", TTL, "TXT", _txt_strings("big", 10)),
)


def _build_zone() -> dict[dns.name.Name, dict[int, dns.rrset.RRset]]:
    nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
    for relative, ttl, kind, texts in RECORDS:
        name = dns.name.from_text(relative, ZONE)
        rdtype = dns.rdatatype.from_text(kind)
        rdatas = [
            dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=ZONE, relativize=False)
            for text in texts
        ]
        nodes.setdefault(name, {})[rdtype] = dns.rrset.from_rdata_list(name, ttl, rdatas)
    return nodes


NODES = _build_zone()
SOA = NODES[ZONE][dns.rdatatype.SOA]


def _copy(rrset: dns.rrset.RRset, owner: dns.name.Name, ttl: int | None = None) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(owner, rrset.ttl if ttl is None else ttl, list(rrset))


def resolve(qname: dns.name.Name, rdtype: int, response: dns.message.Message) -> None:
    """Fill ``response`` (answer, authority, rcode) from the zone for a name inside it."""
    name = qname
    for _ in range(8):  # CNAME chain, bounded
        node = NODES.get(name)
        if node is None:
            if not any(other.is_subdomain(name) for other in NODES):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_copy(SOA, ZONE, NEGATIVE_TTL))
            return
        if rdtype == dns.rdatatype.ANY:
            response.answer.extend(_copy(rrset, name) for rrset in node.values())
            return
        if rdtype in node:
            response.answer.append(_copy(node[rdtype], name))
            return
        cname = node.get(dns.rdatatype.CNAME)
        if cname is None:
            break
        response.answer.append(_copy(cname, name))
        name = cname[0].target
        if not name.is_subdomain(ZONE):
            return  # the rest of the chain is someone else's
    response.authority.append(_copy(SOA, ZONE, NEGATIVE_TTL))


@cache
def huge_rdatas(rdtype: dns.rdatatype.RdataType) -> tuple[dns.rdata.Rdata, ...]:
    """The records of a ``huge`` answer: as many as make a reply of about ``HUGE_SIZE`` bytes."""
    if rdtype == dns.rdatatype.A:
        count = HUGE_SIZE // 16  # a compressed A record is 16 bytes
        texts = [f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}" for index in range(count)]
    elif rdtype == dns.rdatatype.AAAA:
        texts = [f"2001:db8:ffff::{index:x}" for index in range(HUGE_SIZE // 28)]
    else:
        texts = [f'"{index:05d}' + "x" * 250 + '"' for index in range(HUGE_SIZE // 268)]
    return tuple(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for text in texts)


def answer(query: dns.message.Message, huge: bool = False) -> dns.message.Message:
    """The normal (complete) reply to a parsed query."""
    response = dns.message.make_response(query, recursion_available=True, our_payload=OUR_PAYLOAD)
    if query.edns >= 0:
        response.use_edns(0, query.ednsflags & dns.flags.DO, OUR_PAYLOAD)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN or not question.name.is_subdomain(ZONE):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    if question.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    if huge and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT):
        rdatas = list(huge_rdatas(question.rdtype))
        response.answer.append(dns.rrset.from_rdata_list(question.name, TTL, rdatas))
        return response
    resolve(question.name, question.rdtype, response)
    return response


def decoy(query: dns.message.Message, wrong_id: bool) -> dns.message.Message:
    """A well-formed reply a client must not accept: another ID, or the right ID for another name."""
    response = answer(query)
    response.answer, response.authority = [], []
    response.set_rcode(dns.rcode.NOERROR)
    question = query.question[0] if query.question else None
    rdtype = question.rdtype if question is not None else dns.rdatatype.A
    if wrong_id:
        response.id = (query.id + 1) & 0xFFFF
        owner = question.name if question is not None else dns.name.from_text(DECOY_NAME)
    else:
        owner = dns.name.from_text(DECOY_NAME)
        response.question = []
        response.find_rrset(response.question, owner, dns.rdataclass.IN, rdtype, create=True)
    data = {dns.rdatatype.A: DECOY_A, dns.rdatatype.AAAA: DECOY_AAAA, dns.rdatatype.TXT: f'"{DECOY_TXT}"'}
    if rdtype in data:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, data[rdtype])
        response.answer.append(dns.rrset.from_rdata_list(owner, TTL, [rdata]))
    return response


def encode(message: dns.message.Message) -> bytes:
    """``message`` in wire format, its records in a fixed order (no round robin), up to 64 KiB."""
    return message.to_wire(max_size=65535, want_shuffle=False)


def truncated(response: dns.message.Message) -> dns.message.Message:
    """``response`` with TC set and only its question (and OPT)."""
    response.answer, response.authority, response.additional = [], [], []
    response.flags |= dns.flags.TC
    return response


def garbage(query_id: int) -> bytes:
    """Random bytes after the query's ID and a header no parser accepts."""
    header = struct.pack(
        "!HBBHHHH", query_id, 0x80 | random.randrange(0x80), random.randrange(256), 0xFFFF, 0, 0, 0
    )
    return header + random.randbytes(random.randint(18, 88))


def formerr(wire: bytes) -> bytes | None:
    """A FORMERR reply to an unparseable query (None when it has no complete header)."""
    if len(wire) < 12:
        return None
    query_id, flags = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:  # a reply: never answer those
        return None
    opcode_bits = flags & 0x7800
    return struct.pack("!HHHHHH", query_id, 0x8000 | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0)


class Upstream:
    def __init__(self, mode_file: Path | None, record: Path | None) -> None:
        self.mode_file = mode_file
        self.record: IO[str] | None = record.open("a", encoding="utf-8") if record is not None else None
        self.tasks: set[asyncio.Task[None]] = set()

    def mode(self) -> str:
        if self.mode_file is None:
            return "normal"
        try:
            mode = self.mode_file.read_text().strip()
        except OSError:
            return "normal"
        if not mode:
            return "normal"
        if mode in MODES or (mode.startswith("slow:") and mode[5:].isdigit()):
            return mode
        print(f"dns_upstream: unknown mode {mode!r} in {self.mode_file}: answering as normal", flush=True)
        return "normal"

    def note(self, proto: str, peer: str, query: dns.message.Message | None, wire: bytes, mode: str) -> None:
        if self.record is None:
            return
        entry: dict[str, Any] = {"proto": proto, "qname": None, "qtype": None, "id": None}
        entry.update(payload=None, do=False, mode=mode, peer=peer, time=time.time())
        if query is not None:
            entry["id"] = query.id
            if query.question:
                entry["qname"] = query.question[0].name.to_text()
                entry["qtype"] = dns.rdatatype.to_text(query.question[0].rdtype)
            if query.edns >= 0:
                entry["payload"] = query.payload
                entry["do"] = bool(query.ednsflags & dns.flags.DO)
        elif len(wire) >= 2:
            entry["id"] = struct.unpack("!H", wire[:2])[0]
        self.record.write(json.dumps(entry) + "\n")
        self.record.flush()

    def spawn(self, wire: bytes, proto: str, peer: str, send: Callable[[bytes], None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self.respond(wire, proto, peer, send))
        self.tasks.add(task)
        task.add_done_callback(self.done)
        return task

    def done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            print(f"dns_upstream: answering failed: {error!r}", file=sys.stderr, flush=True)

    async def respond(self, wire: bytes, proto: str, peer: str, send: Callable[[bytes], None]) -> None:
        """Answer one query (``send`` sends one reply message) as the current mode says."""
        mode = self.mode()
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # anything unparseable: dnspython raises more than DNSException
            self.note(proto, peer, None, wire, mode)
            reply = formerr(wire)
            if reply is not None and mode != "drop":
                send(reply)
            return
        self.note(proto, peer, query, wire, mode)
        if query.flags & dns.flags.QR or mode == "drop":
            return
        if mode.startswith("slow:"):
            await asyncio.sleep(int(mode[5:]) / 1000)
        if mode == "garbage":
            send(garbage(query.id))
            return
        if mode in ("servfail", "refused"):
            response = dns.message.make_response(query, recursion_available=True)
            if query.edns >= 0:
                response.use_edns(0, query.ednsflags & dns.flags.DO, OUR_PAYLOAD)
            response.set_rcode(dns.rcode.SERVFAIL if mode == "servfail" else dns.rcode.REFUSED)
            send(encode(response))
            return
        if mode in ("wrong-id", "wrong-question"):
            send(encode(decoy(query, wrong_id=mode == "wrong-id")))
            await asyncio.sleep(DECOY_DELAY)
        response = answer(query, huge=mode == "huge")
        reply = encode(response)
        if proto == "udp":
            limit = max(NO_EDNS_PAYLOAD, min(query.payload, OUR_PAYLOAD)) if query.edns >= 0 else 512
            if len(reply) > limit or mode == "truncate":
                reply = encode(truncated(response))
        send(reply)


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on 3.11's selectors

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        def send(reply: bytes) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(reply, addr)

        self.upstream.spawn(data, "udp", f"{addr[0]}:{addr[1]}", send)


async def serve_tcp_connection(
    upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    def send(reply: bytes) -> None:
        if not writer.is_closing():
            writer.write(struct.pack("!H", len(reply)) + reply)

    host, port = writer.get_extra_info("peername")[:2]
    peer = f"{host}:{port}"
    pending: set[asyncio.Task[None]] = set()
    try:
        while True:
            length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))[0]
            wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
            task = upstream.spawn(wire, "tcp", peer, send)
            pending.add(task)
            task.add_done_callback(pending.discard)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass
    finally:
        # The answers to queries already read still go out (a client may half-close after sending).
        if pending:
            await asyncio.wait(pending, timeout=TCP_IDLE)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()


async def serve(port: int, mode_file: Path | None, record: Path | None) -> None:
    upstream = Upstream(mode_file, record)
    loop = asyncio.get_running_loop()
    # UDP first: the tests wait for the TCP port, so once it accepts both are up.
    transport, _ = await loop.create_datagram_endpoint(
        lambda: UdpProtocol(upstream), local_addr=("127.0.0.1", port)
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_tcp_connection(upstream, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"dns_upstream: serving {ZONE} on 127.0.0.1:{port} (UDP and TCP)", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode-file", type=Path, help="file holding the mode, read before every query")
    parser.add_argument("--record", type=Path, help="JSON lines file: one line per query received")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.mode_file, args.record))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
