"""kairos.dns.wire: the fast path agrees with dnspython on what it takes, and survives anything.

Why both kinds of test: the parsers are only worth having if they are cheaper than dnspython, so
they do much less; the property tests check that "less" never means "different" (every field
against dnspython's reading of the same bytes) nor "crashes" (arbitrary and mutated bytes: only
None from ``parse_query``, only WireError from ``inspect_response``).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kairos.dns import wire
from kairos.dns.wire import (
    Query,
    WireError,
    answer_for,
    answers_query,
    formerr_for,
    inspect_response,
    parse_query,
    refused_for,
    servfail_for,
    truncated_answer,
)
from tests.fuzz.profiles import fuzz_settings

HEADER = struct.Struct("!HHHHHH")
Record = tuple[str, str, int, list[str]]  # owner, type, TTL, rdatas in presentation form
Records = Sequence[Record]


# -- builders shared with test_cache.py ---------------------------------------------------------


def query_wire(
    name: str | dns.name.Name = "www.example.test.",
    rdtype: int | str = "A",
    *,
    dnssec: bool = False,
    edns: bool = True,
    payload: int = 1232,
    query_id: int = 0x1234,
) -> bytes:
    message = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        use_edns=0 if edns else False,
        payload=payload,
        want_dnssec=dnssec,
        id=query_id,
    )
    return message.to_wire()


def name_wire(name: dns.name.Name) -> bytes:
    """The uncompressed wire form (dnspython types ``to_wire`` as maybe None: it writes to a file
    when given one)."""
    encoded = name.to_wire()
    assert encoded is not None
    return encoded


def parsed(wire_bytes: bytes) -> Query:
    query = parse_query(wire_bytes)
    assert query is not None
    return query


def response_to(
    wire_bytes: bytes,
    answer: Records = (),
    authority: Records = (),
    additional: Records = (),
    *,
    rcode: int = dns.rcode.NOERROR,
    truncated: bool = False,
    options: list[dns.edns.Option] | None = None,
) -> bytes:
    """An upstream's answer to ``wire_bytes`` built with dnspython: (owner, type, TTL, rdatas)."""
    query = dns.message.from_wire(wire_bytes)
    response = dns.message.make_response(query)
    if query.edns >= 0:  # as servers answer: their payload size, the DO bit copied (RFC 3225)
        response.use_edns(0, query.ednsflags & dns.flags.DO, 1232, options=options or [])
    response.set_rcode(dns.rcode.Rcode.make(rcode))
    if truncated:
        response.flags |= dns.flags.TC
    for section, records in ((response.answer, answer), (response.authority, authority)):
        for owner, rdtype, ttl, rdatas in records:
            section.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, rdatas))
    for owner, rdtype, ttl, rdatas in additional:
        response.additional.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, rdatas))
    return response.to_wire(want_shuffle=False)  # deterministic (and no global random use)


def soa(ttl: int, minimum: int, owner: str = "example.test.") -> Record:
    return (
        owner,
        "SOA",
        ttl,
        [f"ns1.example.test. hostmaster.example.test. 2026120201 7200 900 1209600 {minimum}"],
    )


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with bytes flipped, set, cut, inserted or appended: mostly-valid hostile input."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert", "extend", "count"]))
        if operation == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] = draw(st.sampled_from([0, 1, 12, 0x3F, 0x40, 0x80, 0xC0, 0xFF]))
        elif operation == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif operation == "insert":
            index = draw(st.integers(0, len(data)))
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif operation == "count" and len(data) >= 12:
            index = draw(st.sampled_from([4, 6, 8, 10]))
            struct.pack_into("!H", data, index, draw(st.integers(0, 5)))
    return bytes(data)


SAMPLE_QUERIES = [
    query_wire(),
    query_wire("WwW.Example.TEST.", "AAAA", dnssec=True),
    query_wire("example.test.", "MX", edns=False),
    query_wire(".", "NS", payload=4096),
]
SAMPLE_RESPONSES = [
    response_to(
        SAMPLE_QUERIES[0],
        [
            ("www.example.test.", "A", 300, ["192.0.2.1", "192.0.2.2"]),
            ("www.example.test.", "TXT", 60, ['"x"']),
        ],
        [("example.test.", "NS", 120, ["ns1.example.test."])],
        [("ns1.example.test.", "A", 90, ["192.0.2.53"])],
    ),
    response_to(SAMPLE_QUERIES[1], [], [soa(900, 300)], rcode=dns.rcode.NXDOMAIN),
    response_to(SAMPLE_QUERIES[2], [("example.test.", "MX", 3600, ["10 mail.example.test."])]),
    response_to(SAMPLE_QUERIES[3], [], [], rcode=dns.rcode.SERVFAIL),
]


# -- parse_query -------------------------------------------------------------------------------


def test_parse_query_reads_a_plain_query() -> None:
    query = parsed(query_wire("www.example.test.", "A", dnssec=True, payload=4096))
    assert query.id == 0x1234
    assert query.flags == dns.flags.RD
    assert query.key == b"\x03www\x07example\x04test\x00" + b"\x00\x01\x00\x01" + b"\x01"
    assert query.qname == "www.example.test."
    assert (query.qtype, query.qclass) == (1, 1)
    assert query.question_end == 12 + 18 + 4
    assert (query.udp_size, query.edns, query.do) == (4096, True, True)


def test_parse_query_without_edns_and_with_a_small_payload() -> None:
    plain = parsed(query_wire(edns=False))
    assert (plain.udp_size, plain.edns, plain.do) == (512, False, False)
    assert plain.key[-1:] == b"\x00"
    small = parsed(query_wire(payload=100))
    assert (small.udp_size, small.edns, small.do) == (512, True, False)


def test_names_share_a_key_whatever_their_case() -> None:
    mixed = parsed(query_wire("WwW.ExAmPlE.TEST."))
    lower = parsed(query_wire("www.example.test."))
    assert mixed.key == lower.key
    assert mixed.qname == lower.qname == "www.example.test."


def test_the_key_keeps_qtype_bytes_as_they_are() -> None:
    """HTTPS is type 65 (b"\\x00A"): lower-casing the whole question would file it as type 97."""
    https = parsed(query_wire(rdtype=65))
    other = parsed(query_wire(rdtype=97))
    assert https.key != other.key
    assert https.key[-5:-1] == b"\x00\x41\x00\x01"


def test_the_do_and_cd_bits_separate_keys() -> None:
    plain, dnssec = parsed(query_wire()), parsed(query_wire(dnssec=True))
    checking_disabled = bytearray(query_wire())
    checking_disabled[3] |= 0x10
    cd = parsed(bytes(checking_disabled))
    assert len({plain.key, dnssec.key, cd.key}) == 3
    assert (plain.key[-1], dnssec.key[-1], cd.key[-1]) == (0, 1, 2)


def test_the_root_and_a_255_byte_name() -> None:
    assert parsed(query_wire(".", "NS")).qname == "."
    longest = dns.name.Name([b"a" * 63] * 3 + [b"b" * 61, b""])  # 3 * 64 + 62 + 1 = 255 bytes
    query = parsed(query_wire(longest))
    assert query.question_end == 12 + 255 + 4
    assert query.qname == longest.to_text()
    too_long = bytearray(query_wire(edns=False))
    too_long[12:-4] = (
        b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x00"
    )
    assert parse_query(bytes(too_long)) is None  # 257 bytes


def test_escaped_labels_read_as_dnspython_writes_them() -> None:
    name = dns.name.Name([b'a.B\\"', b"\x00\x7f\xff", b"()@$;", b""])
    query = parsed(query_wire(name))
    assert query.qname == name.to_text().lower()


def _modified(base: bytes, offset: int, data: bytes) -> bytes:
    changed = bytearray(base)
    changed[offset : offset + len(data)] = data
    return bytes(changed)


@pytest.mark.parametrize(
    "wire_bytes",
    [
        pytest.param(b"", id="empty"),
        pytest.param(query_wire()[:11], id="short header"),
        pytest.param(query_wire()[:-1], id="truncated OPT"),
        pytest.param(query_wire(edns=False)[:-2], id="truncated question"),
        pytest.param(query_wire(edns=False) + b"\x00", id="trailing byte"),
        pytest.param(query_wire() + b"\x00", id="trailing byte after OPT"),
        pytest.param(_modified(query_wire(), 2, b"\x81\x00"), id="QR set"),
        pytest.param(_modified(query_wire(), 2, b"\x28\x00"), id="opcode UPDATE"),
        pytest.param(_modified(query_wire(), 2, b"\x20\x00"), id="opcode NOTIFY"),
        pytest.param(_modified(query_wire(), 4, b"\x00\x00"), id="no question"),
        pytest.param(_modified(query_wire(), 4, b"\x00\x02"), id="two questions"),
        pytest.param(_modified(query_wire(), 6, b"\x00\x01"), id="an answer record"),
        pytest.param(_modified(query_wire(), 8, b"\x00\x01"), id="an authority record"),
        pytest.param(_modified(query_wire(), 10, b"\x00\x02"), id="two additional records"),
        pytest.param(_modified(query_wire(edns=False), 10, b"\x00\x01"), id="ARCOUNT 1 without a record"),
        pytest.param(_modified(query_wire(), 35, b"\x00\x01"), id="an A record as additional"),
        pytest.param(_modified(query_wire(), 34, b"\x01"), id="OPT with a non-root owner"),
        pytest.param(_modified(query_wire(), 40, b"\x01"), id="EDNS version 1"),
        pytest.param(_modified(query_wire(), 39, b"\x01"), id="extended rcode in a query"),
        pytest.param(_modified(query_wire(), 43, b"\x00\x03" + b"\x00\x0a\x00"), id="a cut option"),
        pytest.param(_modified(query_wire(edns=False), 12, b"\xc0\x0c"), id="compression pointer"),
        pytest.param(_modified(query_wire(edns=False), 12, b"\x43"), id="label type 0x40"),
        pytest.param(_modified(query_wire(edns=False), 12, b"\x80"), id="label type 0x80"),
        pytest.param(_modified(query_wire(edns=False), 12, b"\x3f"), id="label past the end"),
    ],
)
def test_parse_query_leaves_the_rest_to_dnspython(wire_bytes: bytes) -> None:
    assert parse_query(wire_bytes) is None


def test_parse_query_takes_edns_options_but_client_subnet() -> None:
    cookie = dns.message.make_query("www.example.test.", "A", use_edns=0)
    cookie.use_edns(0, 0, 1232, options=[dns.edns.CookieOption(b"12345678", b"")])
    query = parsed(cookie.to_wire())
    assert query.key == parsed(query_wire()).key
    subnet = dns.message.make_query("www.example.test.", "A", use_edns=0)
    subnet.use_edns(0, 0, 1232, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    assert parse_query(subnet.to_wire()) is None


def test_the_opt_record_sits_right_after_the_question() -> None:
    """The forwarder raises the payload size in place: it relies on this layout."""
    wire_bytes = query_wire(payload=700)
    query = parsed(wire_bytes)
    assert wire_bytes[query.question_end] == 0
    assert struct.unpack_from("!H", wire_bytes, query.question_end + 3)[0] == 700


def test_the_memo_gives_what_a_fresh_parse_gives() -> None:
    wire_bytes = query_wire("Memo.Example.TEST.", "TXT", dnssec=True)
    first = parsed(wire_bytes)
    again = parsed(wire_bytes)
    other_id = parsed(b"\xbe\xef" + wire_bytes[2:])
    assert first == again
    assert other_id.id == 0xBEEF
    assert other_id.key == first.key
    wire._parsed_queries.clear()
    assert parsed(wire_bytes) == first


def test_the_memo_stays_bounded() -> None:
    for index in range(wire.PARSED_QUERY_MEMO_SIZE + 10):
        parsed(query_wire(f"n{index}.example.test."))
        assert len(wire._parsed_queries) <= wire.PARSED_QUERY_MEMO_SIZE
    padded = dns.message.make_query("padded.example.test.", "A", use_edns=0)
    padded.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 600)])
    wire._parsed_queries.clear()
    assert parse_query(padded.to_wire()) is not None
    assert not wire._parsed_queries  # too big to keep


labels = st.binary(min_size=1, max_size=63)
names = st.lists(labels, max_size=6).filter(lambda parts: sum(len(part) + 1 for part in parts) < 255)
rdtypes = st.one_of(st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 43, 48, 65, 255]), st.integers(1, 65535))


@fuzz_settings(scale=2)
@given(
    names,
    rdtypes,
    st.sampled_from([1, 3, 4, 254, 255]),
    st.booleans(),
    st.sampled_from([None, False, 0]),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 0xFFFF).map(lambda flags: flags & ~0xF800),  # any flags but QR and opcode
)
def test_parse_query_agrees_with_dnspython(
    parts: list[bytes],
    rdtype: int,
    rdclass: int,
    dnssec: bool,
    use_edns: int | bool | None,
    payload: int,
    query_id: int,
    flags: int,
) -> None:
    name = dns.name.Name([*parts, b""])
    message = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        use_edns=use_edns,
        want_dnssec=dnssec,
        payload=payload,
        id=query_id,
    )
    message.flags = dns.flags.Flag(flags)
    wire_bytes = message.to_wire()
    query = parse_query(wire_bytes)
    assert query is not None
    expect_same_as_dnspython(wire_bytes, query)


def expect_same_as_dnspython(wire_bytes: bytes, query: Query) -> None:
    message = dns.message.from_wire(wire_bytes)
    question = message.question[0]
    do = bool(message.ednsflags & dns.flags.DO)
    assert query.id == message.id
    assert query.flags == message.flags
    assert query.qname == question.name.to_text().lower()
    assert (query.qtype, query.qclass) == (question.rdtype, question.rdclass)
    assert query.question_end == 12 + len(name_wire(question.name)) + 4
    assert query.edns == (message.edns >= 0)
    assert query.do == do
    assert query.udp_size == (max(512, message.payload) if message.edns >= 0 else 512)
    cd = bool(message.flags & dns.flags.CD)
    flag_byte = bytes([do | cd << 1])
    assert (
        query.key
        == name_wire(question.name.canonicalize())
        + struct.pack("!HH", question.rdtype, question.rdclass)
        + flag_byte
    )


@fuzz_settings(scale=3)
@given(st.binary(max_size=600))
@example(b"\x00" * 17)
@example(b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" * 300)
def test_parse_query_never_raises_on_any_bytes(data: bytes) -> None:
    query = parse_query(data)
    if query is not None:
        expect_same_as_dnspython(data, query)


@fuzz_settings(scale=3)
@given(st.data())
def test_parse_query_on_mutated_queries(data: st.DataObject) -> None:
    """Whatever it accepts, dnspython reads the same way."""
    mutated = data.draw(mutations(data.draw(st.sampled_from(SAMPLE_QUERIES))))
    query = parse_query(mutated)
    if query is not None:
        expect_same_as_dnspython(mutated, query)


def test_parse_query_on_random_bytes() -> None:
    """Plain random bytes, some behind a plausible query header so the name parser gets them."""
    generator = random.Random(1035)
    header = HEADER.pack(7, 0x0100, 1, 0, 0, 0)
    for _ in range(20_000):
        body = generator.randbytes(generator.randrange(0, 80))
        for candidate in (body, header + body, header[:10] + b"\x00\x01" + body):
            query = parse_query(candidate)
            if query is not None:
                expect_same_as_dnspython(candidate, query)


# -- inspect_response ----------------------------------------------------------------------------


def expected_ttls(wire_bytes: bytes) -> list[int]:
    message = dns.message.from_wire(wire_bytes)
    return [
        rrset.ttl
        for section in (message.answer, message.authority, message.additional)
        for rrset in section
        for _ in rrset
    ]


def test_inspect_response_finds_every_ttl() -> None:
    response = SAMPLE_RESPONSES[0]
    info = inspect_response(response)
    assert info.rcode == 0
    assert not info.truncated
    assert info.answer_count == 3
    assert info.ttls == (300, 300, 60, 120, 90)
    assert [struct.unpack_from("!I", response, offset)[0] for offset in info.ttl_offsets] == list(info.ttls)
    assert info.min_answer_ttl == 60
    assert info.soa_negative_ttl is None
    assert info.question_end == parsed(SAMPLE_QUERIES[0]).question_end
    assert info.opt_start is not None
    assert info.opt_end == len(response)


def test_the_offsets_are_the_ttl_fields() -> None:
    """Writing new values at the offsets changes exactly the TTLs dnspython reads."""
    response = bytearray(SAMPLE_RESPONSES[0])
    info = inspect_response(response)
    for index, offset in enumerate(info.ttl_offsets):
        struct.pack_into("!I", response, offset, 1000 + index)
    message = dns.message.from_wire(bytes(response))
    assert [rrset.ttl for rrset in message.answer] == [1000, 1002]  # an RRset's TTL is its lowest
    assert [rrset.ttl for rrset in message.authority] == [1003]
    assert [rrset.ttl for rrset in message.additional] == [1004]
    original = dns.message.from_wire(SAMPLE_RESPONSES[0])
    assert (message.payload, message.ednsflags) == (original.payload, original.ednsflags)  # OPT untouched


def test_inspect_response_reads_the_negative_ttl() -> None:
    lower_minimum = inspect_response(response_to(query_wire(), [], [soa(900, 300)], rcode=dns.rcode.NXDOMAIN))
    assert (lower_minimum.rcode, lower_minimum.soa_negative_ttl, lower_minimum.min_answer_ttl) == (
        3,
        300,
        900,
    )
    lower_ttl = inspect_response(response_to(query_wire(), [], [soa(60, 300)]))
    assert (lower_ttl.rcode, lower_ttl.answer_count, lower_ttl.soa_negative_ttl) == (0, 0, 60)
    in_answer = inspect_response(response_to(query_wire("example.test.", "SOA"), [soa(60, 30)]))
    assert in_answer.soa_negative_ttl is None  # only the authority section's SOA counts


def test_inspect_response_reads_extended_rcodes_and_tc() -> None:
    badvers = inspect_response(response_to(query_wire(), rcode=dns.rcode.BADVERS))
    assert badvers.rcode == 16
    truncated = inspect_response(response_to(query_wire(), truncated=True))
    assert truncated.truncated
    assert inspect_response(response_to(query_wire(edns=False))).opt_start is None


def test_a_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    response = bytearray(response_to(query_wire(), [("www.example.test.", "A", 300, ["192.0.2.1"])]))
    offset = inspect_response(response).ttl_offsets[0]
    struct.pack_into("!I", response, offset, 0x80000000)
    info = inspect_response(bytes(response))
    assert info.ttls == (0x80000000,)
    assert info.min_answer_ttl == 0


def _record(owner: bytes, rrtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rrtype, 1, ttl, len(rdata)) + rdata


QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"  # at offset 12; the name is 18 bytes


def _message(records: bytes, counts: tuple[int, int, int] = (1, 0, 0), qdcount: int = 1) -> bytes:
    return HEADER.pack(1, 0x8180, qdcount, *counts) + QUESTION + records


BLOB_TYPE = 0xFF00  # a private type: its RDATA is opaque bytes to every parser


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x00" * 11, id="short header"),
        pytest.param(HEADER.pack(1, 0x8180, 1, 0, 0, 0) + QUESTION[:5], id="question cut"),
        pytest.param(_message(b""), id="ANCOUNT above the records"),
        pytest.param(
            _message(_record(b"\xc0\x0c", 1, 60, b"\x01\x02\x03\x04")) + b"\x00", id="trailing byte"
        ),
        pytest.param(_message(_record(b"\xc0\x0c", 1, 60, b"\x01\x02\x03\x04"))[:-1], id="RDATA cut"),
        pytest.param(_message(_record(b"\xc0\x0c", 1, 60, b""))[:-3], id="record header cut"),
        pytest.param(_message(b"\xc0"), id="pointer cut"),
        pytest.param(_message(_record(b"\xc0\x22", 1, 60, b"")), id="pointer to itself"),
        pytest.param(_message(_record(b"\xc0\x40", 1, 60, b"")), id="pointer forwards"),
        pytest.param(_message(_record(b"\x01a\xc0\x22", 1, 60, b"")), id="pointer to its own name"),
        pytest.param(
            # The second owner points at the last RDATA byte (3), whose label would run into it.
            _message(
                _record(b"\xc0\x0c", BLOB_TYPE, 0, b"\x03") + _record(b"\xc0\x2e", 1, 60, b""), (2, 0, 0)
            ),
            id="pointer target overlapping the name",
        ),
        pytest.param(_message(_record(b"\x41", 1, 60, b"")), id="label type 0x40"),
        pytest.param(_message(_record(b"\x81", 1, 60, b"")), id="label type 0x80"),
        pytest.param(_message(_record(b"\x00", 41, 0, b"")), id="OPT in the answer section"),
        pytest.param(
            _message(_record(b"\x00", 41, 0, b"") + _record(b"\x00", 41, 0, b""), (0, 0, 2)), id="two OPTs"
        ),
        pytest.param(_message(_record(b"\xc0\x0c", 41, 0, b""), (0, 0, 1)), id="OPT not owned by the root"),
        pytest.param(
            _message(_record(b"\xc0\x10", 6, 60, b"\xc0\x10\xc0\x10" + b"\x00" * 19), (0, 1, 0)),
            id="short SOA",
        ),
        pytest.param(
            _message(_record(b"\xc0\x10", 6, 60, b"\xc0\x10\xc0\x10" + b"\x00" * 21), (0, 1, 0)),
            id="long SOA",
        ),
        pytest.param(
            _message(_record(b"\xc0\x10", 6, 60, b"\x05ab"), (0, 1, 0)),
            id="SOA name past its RDATA",
        ),
    ],
)
def test_inspect_response_refuses_what_it_cannot_walk(message: bytes) -> None:
    with pytest.raises(WireError):
        inspect_response(message)


def test_a_well_formed_soa_is_read() -> None:
    """The same shapes as the SOA cases above, but right: 20 bytes after the two names."""
    message = _message(
        _record(b"\xc0\x10", 6, 60, b"\xc0\x10\xc0\x10" + b"\x00" * 16 + b"\x00\x00\x00\x1e"), (0, 1, 0)
    )
    assert inspect_response(message).soa_negative_ttl == 30
    assert dns.message.from_wire(message).authority[0][0].minimum == 30


def test_compressed_names_are_followed() -> None:
    # "a" + a pointer to www.example.test (at 12); then a record owned by a pointer to that name.
    records = _record(b"\x01a\xc0\x0c", 1, 10, b"\x01\x02\x03\x04") + _record(
        b"\xc0\x22", 1, 20, b"\x05\x06\x07\x08"
    )
    message = _message(records, (2, 0, 0))
    assert inspect_response(message).ttls == (10, 20)
    [rrset] = dns.message.from_wire(message).answer
    assert (str(rrset.name), len(rrset), rrset.ttl) == ("a.www.example.test.", 2, 10)


def _chained_questions(count: int) -> bytes:
    """``count`` questions, each a 63-byte label then a pointer to the previous one's name."""
    message = bytearray(HEADER.pack(1, 0x8180, count, 0, 0, 0))
    previous: int | None = None
    for _ in range(count):
        start = len(message)
        ending = b"\x00" if previous is None else struct.pack("!H", 0xC000 | previous)
        message += b"\x3f" + b"x" * 63 + ending + b"\x00\x01\x00\x01"
        previous = start
    return bytes(message)


def test_a_name_over_255_bytes_through_pointers() -> None:
    assert inspect_response(_chained_questions(3)).question_end == len(_chained_questions(3))  # 193 bytes
    dns.message.from_wire(_chained_questions(3))
    with pytest.raises(WireError):
        inspect_response(_chained_questions(4))  # 257 bytes


def _pointer_chain(hops: int) -> bytes:
    """A record whose owner is a chain of ``hops`` pointers, each to the one before, down to the
    root name of the question; the chain sits in the RDATA of a record before it."""
    question = b"\x00\x00\x01\x00\x01"  # the root, at 12
    blob_at = 12 + len(question) + 2 + 10  # after the first record's owner and fixed fields
    chain = b"".join(
        struct.pack("!H", 0xC000 | (12 if index == 0 else blob_at + 2 * (index - 1)))
        for index in range(hops - 1)
    )
    owner = struct.pack("!H", 0xC000 | (blob_at + 2 * (hops - 2)))
    records = _record(b"\xc0\x0c", BLOB_TYPE, 0, chain) + _record(owner, 1, 60, b"\x01\x02\x03\x04")
    return HEADER.pack(1, 0x8180, 1, 2, 0, 0) + question + records


def test_pointer_chains_are_capped() -> None:
    assert inspect_response(_pointer_chain(3)).ttls == (0, 60)
    assert dns.message.from_wire(_pointer_chain(3)).answer[1].name == dns.name.root
    assert inspect_response(_pointer_chain(wire.MAX_POINTER_HOPS)).ttls == (0, 60)
    with pytest.raises(WireError):
        inspect_response(_pointer_chain(wire.MAX_POINTER_HOPS + 1))


@st.composite
def dnspython_responses(draw: st.DrawFn) -> bytes:
    """Answers as upstreams send them: several RRsets and TTLs, SOAs, glue, EDNS or not, any rcode."""
    query = query_wire(
        draw(st.sampled_from(["www.example.test.", "WWW.example.TEST.", "a.b.example.test."])),
        draw(st.sampled_from(["A", "AAAA", "MX", "TXT"])),
        dnssec=draw(st.booleans()),
        edns=draw(st.booleans()),
    )
    ttls = st.integers(0, 2**31 - 1)
    templates = [
        ("www.example.test.", "A", ["192.0.2.1", "192.0.2.2"]),
        ("www.example.test.", "AAAA", ["2001:db8::1"]),
        ("www.example.test.", "CNAME", ["alias.example.test."]),
        ("alias.example.test.", "MX", ["10 mail.example.test.", "20 mx.other.test."]),
        ("mail.example.test.", "TXT", ['"v=spf1 -all"']),
    ]
    answer = [
        (owner, kind, draw(ttls), rdatas)
        for owner, kind, rdatas in draw(
            st.lists(st.sampled_from(templates), max_size=4, unique_by=lambda template: template[:2])
        )
    ]
    authority: list[Record] = []
    if draw(st.booleans()):
        authority.append(soa(draw(ttls), draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        authority.append(("example.test.", "NS", draw(ttls), ["ns1.example.test.", "ns2.example.test."]))
    additional = [("ns1.example.test.", "A", draw(ttls), ["192.0.2.53"])] if draw(st.booleans()) else []
    rcode = draw(st.sampled_from([0, 0, 0, 2, 3, 5]))
    return response_to(query, answer, authority, additional, rcode=rcode, truncated=draw(st.booleans()))


@fuzz_settings(scale=2)
@given(dnspython_responses())
def test_inspect_response_agrees_with_dnspython(response: bytes) -> None:
    info = inspect_response(response)
    message = dns.message.from_wire(response)
    assert info.rcode == message.rcode()
    assert info.truncated == bool(message.flags & dns.flags.TC)
    assert info.answer_count == sum(len(rrset) for rrset in message.answer)
    assert list(info.ttls) == expected_ttls(response)
    assert [struct.unpack_from("!I", response, offset)[0] for offset in info.ttl_offsets] == list(info.ttls)
    answer_and_authority = [rrset.ttl for rrset in (*message.answer, *message.authority)]
    assert info.min_answer_ttl == (min(answer_and_authority) if answer_and_authority else None)
    soas = [rrset for rrset in message.authority if rrset.rdtype == dns.rdatatype.SOA]
    expected_negative = min(soas[0].ttl, soas[0][0].minimum) if soas else None
    assert info.soa_negative_ttl == expected_negative
    assert info.question_end == 12 + len(name_wire(message.question[0].name)) + 4
    assert (info.opt_start is not None) == (message.edns >= 0)


def _inspect_or_wire_error(data: bytes) -> None:
    try:
        info = inspect_response(data)
    except WireError:
        return
    assert 12 <= info.question_end <= len(data)
    assert len(info.ttls) == len(info.ttl_offsets)
    for offset, ttl in zip(info.ttl_offsets, info.ttls, strict=True):
        assert info.question_end < offset <= len(data) - 6
        assert struct.unpack_from("!I", data, offset)[0] == ttl


@fuzz_settings(scale=3)
@given(st.binary(max_size=600))
def test_inspect_response_raises_only_wire_error_on_any_bytes(data: bytes) -> None:
    _inspect_or_wire_error(data)


@fuzz_settings(scale=3)
@given(st.data())
def test_inspect_response_on_mutated_responses(data: st.DataObject) -> None:
    _inspect_or_wire_error(data.draw(mutations(data.draw(st.sampled_from(SAMPLE_RESPONSES)))))


def test_inspect_response_on_random_bytes() -> None:
    generator = random.Random(2308)
    header = HEADER.pack(7, 0x8180, 1, 2, 1, 1)
    for _ in range(20_000):
        body = generator.randbytes(generator.randrange(0, 120))
        _inspect_or_wire_error(body)
        _inspect_or_wire_error(header + body)
        _inspect_or_wire_error(SAMPLE_RESPONSES[0][:40] + body)


# -- answers -----------------------------------------------------------------------------------


def test_answer_for_splices_the_clients_id_bits_and_question() -> None:
    upstream_query = query_wire("www.example.test.", query_id=1)
    response = SAMPLE_RESPONSES[0]
    client_wire = bytearray(query_wire("WwW.EXAMPLE.test.", query_id=0xBEEF))
    client_wire[3] |= 0x10  # CD
    client_wire[2] &= ~0x01  # no RD
    client = parsed(bytes(client_wire))
    answer = answer_for(bytes(client_wire), client, response)
    message = dns.message.from_wire(answer)
    assert message.id == 0xBEEF
    assert message.flags & dns.flags.CD
    assert not message.flags & dns.flags.RD
    assert message.flags & dns.flags.QR
    assert answer[12 : client.question_end] == bytes(client_wire[12 : client.question_end])
    assert str(message.question[0].name) == "WwW.EXAMPLE.test."
    assert answer[client.question_end :] == response[client.question_end :]
    assert len(answer) == len(response)
    assert upstream_query != bytes(client_wire)


def test_answer_for_removes_the_opt_for_a_client_without_edns() -> None:
    response = SAMPLE_RESPONSES[0]
    client_wire = query_wire(edns=False)
    answer = answer_for(client_wire, parsed(client_wire), response)
    message = dns.message.from_wire(answer)
    assert message.edns == -1
    assert HEADER.unpack_from(answer)[5] == 1  # the glue stays
    assert [rrset.ttl for rrset in message.additional] == [90]


def test_answer_for_adds_an_opt_for_a_client_with_edns() -> None:
    response = response_to(query_wire(edns=False), [("www.example.test.", "A", 300, ["192.0.2.1"])])
    client_wire = query_wire(dnssec=True)
    message = dns.message.from_wire(answer_for(client_wire, parsed(client_wire), response))
    assert message.edns == 0
    assert message.payload == 1232
    assert message.ednsflags & dns.flags.DO


def test_answer_for_another_question_is_servfail() -> None:
    client_wire = query_wire("mail.example.test.", query_id=77)
    client = parsed(client_wire)
    for response in (SAMPLE_RESPONSES[0], query_wire("mail.example.test."), b"", SAMPLE_RESPONSES[0][:20]):
        assert not answers_query(client, response)
        message = dns.message.from_wire(answer_for(client_wire, client, response))
        assert (message.id, message.rcode()) == (77, dns.rcode.SERVFAIL)
        assert str(message.question[0].name) == "mail.example.test."
        truncated = dns.message.from_wire(truncated_answer(client_wire, client, response))
        assert truncated.rcode() == dns.rcode.SERVFAIL


def test_truncated_answer_keeps_header_question_and_opt() -> None:
    response = SAMPLE_RESPONSES[0]
    client_wire = query_wire("WWW.example.test.", query_id=9)
    client = parsed(client_wire)
    truncated = truncated_answer(client_wire, client, response)
    message = dns.message.from_wire(truncated)
    assert message.id == 9
    assert message.flags & dns.flags.TC
    assert HEADER.unpack_from(truncated)[2:] == (1, 0, 0, 1)
    assert not message.answer and not message.authority and not message.additional
    assert message.edns == 0
    assert truncated[client.question_end :] == response[inspect_response(response).opt_start :]
    plain_wire = query_wire(edns=False)
    plain = dns.message.from_wire(truncated_answer(plain_wire, parsed(plain_wire), response))
    assert plain.edns == -1
    assert plain.flags & dns.flags.TC


@pytest.mark.parametrize(
    "build, rcode", [(servfail_for, dns.rcode.SERVFAIL), (refused_for, dns.rcode.REFUSED)]
)
@pytest.mark.parametrize("edns, dnssec", [(False, False), (True, False), (True, True)])
def test_built_answers(build: object, rcode: int, edns: bool, dnssec: bool) -> None:
    client_wire = query_wire("Www.Example.Test.", "AAAA", edns=edns, dnssec=dnssec, query_id=4242)
    client = parsed(client_wire)
    assert callable(build)
    message = dns.message.from_wire(build(client_wire, client))
    assert (message.id, message.rcode()) == (4242, rcode)
    assert message.flags & dns.flags.QR and message.flags & dns.flags.RD
    assert str(message.question[0].name) == "Www.Example.Test."
    assert message.question[0].rdtype == dns.rdatatype.AAAA
    assert message.edns == (0 if edns else -1)
    if edns:
        assert message.payload == 1232
        assert bool(message.ednsflags & dns.flags.DO) == dnssec


def test_formerr_for() -> None:
    assert formerr_for(b"") is None
    assert formerr_for(b"\x00" * 11) is None
    garbage = b"\xab\xcd\x01\x00" + b"\xff" * 20
    message = dns.message.from_wire(formerr_for(garbage) or b"")
    assert (message.id, message.rcode()) == (0xABCD, dns.rcode.FORMERR)
    assert message.flags & dns.flags.QR and message.flags & dns.flags.RD
    assert formerr_for(b"\xab\xcd\x81\x00" + b"\x00" * 8) is None  # a response: never answered


@fuzz_settings(scale=2)
@given(st.data())
def test_answers_never_raise_on_any_response(data: st.DataObject) -> None:
    client_wire = data.draw(st.sampled_from(SAMPLE_QUERIES))
    client = parsed(client_wire)
    response = data.draw(
        st.one_of(st.binary(max_size=300), mutations(data.draw(st.sampled_from(SAMPLE_RESPONSES))))
    )
    answer = answer_for(client_wire, client, response)
    truncated = truncated_answer(client_wire, client, response)
    for built in (answer, truncated):
        assert built[:2] == client_wire[:2]
        assert built[12 : client.question_end] == client_wire[12 : client.question_end]
    dns.message.from_wire(truncated)  # always a well-formed message
