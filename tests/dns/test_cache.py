"""kairos.dns.cache: what is kept, for how long, and what a hit sends, read back with dnspython.

Every served answer is parsed with ``dns.message.from_wire``: the ID and question (case included)
must be the asking client's, the TTLs those stored less the whole seconds elapsed, each record on
its own. A fake clock makes the ageing exact.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos.dns.cache import CachePolicy, CacheStats, DnsCache
from kairos.dns.wire import Query, inspect_response
from tests.dns.test_wire import (
    SAMPLE_QUERIES,
    SAMPLE_RESPONSES,
    mutations,
    parsed,
    query_wire,
    response_to,
    soa,
)
from tests.fuzz.profiles import fuzz_settings

NAME = "www.example.test."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(**policy: int) -> tuple[DnsCache, Clock]:
    clock = Clock()
    return DnsCache(CachePolicy(**policy), clock=clock), clock


def stored(cache: DnsCache, response: bytes, wire_bytes: bytes | None = None) -> int | None:
    return cache.put(parsed(wire_bytes or query_wire()), response)


def served(cache: DnsCache, wire_bytes: bytes) -> dns.message.Message | None:
    answer = cache.get(wire_bytes, parsed(wire_bytes))
    return None if answer is None else dns.message.from_wire(answer)


def record_ttls(message: dns.message.Message) -> dict[tuple[str, str], int]:
    return {
        (str(rrset.name).lower(), dns.rdatatype.to_text(rrset.rdtype)): rrset.ttl
        for section in (message.answer, message.authority, message.additional)
        for rrset in section
    }


POSITIVE = response_to(
    query_wire(),
    [(NAME, "A", 300, ["192.0.2.1", "192.0.2.2"]), (NAME, "TXT", 60, ['"short"'])],
    [("example.test.", "NS", 120, ["ns1.example.test."])],
    [("ns1.example.test.", "A", 30, ["192.0.2.53"])],
)


def test_a_hit_has_the_clients_id_and_question_and_aged_ttls() -> None:
    cache, clock = make_cache()
    assert stored(cache, POSITIVE) == 60  # min over answer and authority: the glue does not count
    client = query_wire("WWW.Example.Test.", query_id=0xCAFE)
    fresh = served(cache, client)
    assert fresh is not None
    assert fresh.id == 0xCAFE
    assert str(fresh.question[0].name) == "WWW.Example.Test."
    assert fresh.flags & dns.flags.QR and fresh.flags & dns.flags.RD
    assert record_ttls(fresh) == {
        ("www.example.test.", "A"): 300,
        ("www.example.test.", "TXT"): 60,
        ("example.test.", "NS"): 120,
        ("ns1.example.test.", "A"): 30,
    }
    clock.now += 10.9  # whole seconds only
    aged = served(cache, client)
    assert aged is not None
    assert record_ttls(aged) == {
        ("www.example.test.", "A"): 290,
        ("www.example.test.", "TXT"): 50,
        ("example.test.", "NS"): 110,
        ("ns1.example.test.", "A"): 20,
    }
    clock.now += 25  # 35 s: the glue's TTL stops at 0, the others go on
    later = served(cache, client)
    assert later is not None
    assert record_ttls(later)[("ns1.example.test.", "A")] == 0
    assert record_ttls(later)[("www.example.test.", "A")] == 265
    assert [rdata.address for rdata in later.answer[0]] == ["192.0.2.1", "192.0.2.2"]


def test_an_entry_expires_with_its_lowest_ttl() -> None:
    cache, clock = make_cache()
    stored(cache, POSITIVE)
    clock.now += 59.9
    assert served(cache, query_wire()) is not None
    clock.now += 0.1
    assert served(cache, query_wire()) is None
    assert len(cache) == 0  # removed on access
    assert cache.stats().misses == 1


def test_min_and_max_ttl_clamp_the_lifetime_not_the_records() -> None:
    cache, clock = make_cache(min_ttl=100)
    assert stored(cache, POSITIVE) == 100
    clock.now += 80
    message = served(cache, query_wire())
    assert message is not None
    assert record_ttls(message)[("www.example.test.", "TXT")] == 0
    assert record_ttls(message)[("www.example.test.", "A")] == 220
    capped, _ = make_cache(max_ttl=20)
    assert stored(capped, POSITIVE) == 20
    disabled, _ = make_cache(max_ttl=0)
    assert stored(disabled, POSITIVE) is None


def test_the_same_second_reuses_the_aged_bytes() -> None:
    cache, clock = make_cache()
    stored(cache, POSITIVE)
    clock.now += 5.2
    first = cache.get(query_wire(query_id=1), parsed(query_wire(query_id=1)))
    clock.now += 0.5
    second = cache.get(query_wire(query_id=2), parsed(query_wire(query_id=2)))
    assert first is not None and second is not None
    assert first[2:] == second[2:] and first[:2] != second[:2]


NXDOMAIN = response_to(query_wire(), [], [soa(900, 300)], rcode=dns.rcode.NXDOMAIN)
NODATA = response_to(query_wire(rdtype="AAAA"), [], [soa(60, 300)])


def test_negative_answers_live_by_the_soa() -> None:
    cache, clock = make_cache()
    assert stored(cache, NXDOMAIN) == 300  # min(SOA TTL 900, MINIMUM 300)
    assert stored(cache, NODATA, query_wire(rdtype="AAAA")) == 60  # min(SOA TTL 60, MINIMUM 300)
    clock.now += 30
    denial = served(cache, query_wire(query_id=5))
    assert denial is not None
    assert (denial.id, denial.rcode()) == (5, dns.rcode.NXDOMAIN)
    assert record_ttls(denial) == {("example.test.", "SOA"): 870}
    nodata = served(cache, query_wire(rdtype="AAAA"))
    assert nodata is not None
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    assert record_ttls(nodata) == {("example.test.", "SOA"): 30}
    clock.now += 30
    assert served(cache, query_wire(rdtype="AAAA")) is None
    assert served(cache, query_wire()) is not None
    stats = cache.stats()
    assert (stats.denial_hits, stats.success_hits) == (3, 0)


def test_negative_ttls_are_capped() -> None:
    cache, _ = make_cache(negative_ttl_cap=600)
    assert stored(cache, response_to(query_wire(), [], [soa(7200, 7200)], rcode=dns.rcode.NXDOMAIN)) == 600
    tight, _ = make_cache(negative_ttl_cap=600, max_ttl=100)
    assert stored(tight, response_to(query_wire(), [], [soa(7200, 7200)], rcode=dns.rcode.NXDOMAIN)) == 100


def test_a_denial_after_a_cname_lives_no_longer_than_the_cname() -> None:
    cache, _ = make_cache()
    response = response_to(
        query_wire(),
        [(NAME, "CNAME", 20, ["gone.example.test."])],
        [soa(900, 300)],
        rcode=dns.rcode.NXDOMAIN,
    )
    assert stored(cache, response) == 20


def test_denials_without_an_soa_are_not_cached() -> None:
    cache, _ = make_cache()
    assert stored(cache, response_to(query_wire(), rcode=dns.rcode.NXDOMAIN)) is None
    referral = response_to(query_wire(), [], [("example.test.", "NS", 3600, ["ns1.example.test."])])
    assert stored(cache, referral) is None
    assert len(cache) == 0


def test_servfail_lives_servfail_ttl() -> None:
    cache, clock = make_cache(servfail_ttl=5)
    assert stored(cache, response_to(query_wire(), rcode=dns.rcode.SERVFAIL)) == 5
    message = served(cache, query_wire(query_id=3))
    assert message is not None
    assert (message.id, message.rcode()) == (3, dns.rcode.SERVFAIL)
    clock.now += 5
    assert served(cache, query_wire()) is None
    never, _ = make_cache(servfail_ttl=0)
    assert stored(never, response_to(query_wire(), rcode=dns.rcode.SERVFAIL)) is None


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(response_to(query_wire(), rcode=dns.rcode.REFUSED), id="REFUSED"),
        pytest.param(response_to(query_wire(), rcode=dns.rcode.FORMERR), id="FORMERR"),
        pytest.param(response_to(query_wire(), rcode=dns.rcode.NOTIMP), id="NOTIMP"),
        pytest.param(response_to(query_wire(), rcode=dns.rcode.BADVERS), id="BADVERS"),
        pytest.param(response_to(query_wire(), [(NAME, "A", 300, ["192.0.2.1"])], truncated=True), id="TC"),
        pytest.param(response_to(query_wire(), [(NAME, "A", 0, ["192.0.2.1"])]), id="TTL 0"),
        pytest.param(POSITIVE[:-1], id="cut"),
        pytest.param(POSITIVE + b"\x00", id="trailing byte"),
        pytest.param(b"", id="empty"),
        pytest.param(query_wire(), id="the query itself"),
        pytest.param(
            response_to(query_wire("mail.example.test."), [("mail.example.test.", "A", 300, ["192.0.2.9"])]),
            id="another name",
        ),
        pytest.param(
            response_to(query_wire(rdtype="AAAA"), [(NAME, "AAAA", 300, ["2001:db8::1"])]), id="another type"
        ),
    ],
)
def test_what_is_not_cached(response: bytes) -> None:
    cache, _ = make_cache()
    assert stored(cache, response) is None
    assert len(cache) == 0
    assert cache.stats().inserts == 0


def test_a_message_longer_than_dns_allows_is_not_cached() -> None:
    """65,535 root-owned records walk fine, but no DNS message is that long (and ARCOUNT + 1, for
    a client with EDNS, would not fit its 16 bits)."""
    wire_bytes = query_wire(edns=False)
    query = parsed(wire_bytes)
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0xFFFF)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + b"\x01\x02\x03\x04"
    glue = b"\x00" + struct.pack("!HHIH", 1, 1, 300, 0)
    response = header + wire_bytes[12 : query.question_end] + answer + glue * 0xFFFF
    cache, _ = make_cache()
    assert cache.put(query, response) is None


def test_an_opt_before_other_records_is_not_cached() -> None:
    """Taking it out would shift the records after it (and any compression pointer into them)."""
    wire_bytes = query_wire()
    query = parsed(wire_bytes)
    a_record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + b"\x01\x02\x03\x04"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 2)
    response = header + wire_bytes[12 : query.question_end] + a_record + opt + a_record
    dns.message.from_wire(response)  # valid: RFC 6891 lets the OPT sit anywhere in additional
    cache, _ = make_cache()
    assert cache.put(query, response) is None
    assert cache.put(query, header + wire_bytes[12 : query.question_end] + a_record + a_record + opt) == 300


def test_zone_transfers_are_not_cached() -> None:
    cache, _ = make_cache()
    axfr = query_wire("example.test.", "AXFR")
    response = response_to(
        axfr, [soa(300, 60), ("example.test.", "NS", 300, ["ns1.example.test."]), soa(300, 60)]
    )
    assert cache.put(parsed(axfr), response) is None


def test_least_recently_used_goes_first() -> None:
    cache, _ = make_cache(max_entries=2)
    names = ["a.example.test.", "b.example.test.", "c.example.test."]
    wires = {name: query_wire(name) for name in names}
    for name in names[:2]:
        assert (
            cache.put(parsed(wires[name]), response_to(wires[name], [(name, "A", 300, ["192.0.2.1"])])) == 300
        )
    assert served(cache, wires["a.example.test."]) is not None  # a is now the most recent
    cache.put(
        parsed(wires["c.example.test."]),
        response_to(wires["c.example.test."], [("c.example.test.", "A", 300, ["192.0.2.3"])]),
    )
    assert served(cache, wires["b.example.test."]) is None
    assert served(cache, wires["a.example.test."]) is not None
    assert served(cache, wires["c.example.test."]) is not None
    assert cache.stats() == CacheStats(
        entries=2, max_entries=2, hits=3, misses=1, success_hits=3, denial_hits=0, evictions=1, inserts=3
    )


def test_storing_again_replaces_and_refreshes() -> None:
    cache, clock = make_cache(max_entries=2)
    stored(cache, POSITIVE)
    clock.now += 50
    assert stored(cache, response_to(query_wire(), [(NAME, "A", 500, ["192.0.2.7"])])) == 500
    assert len(cache) == 1
    message = served(cache, query_wire())
    assert message is not None
    assert record_ttls(message) == {("www.example.test.", "A"): 500}


def test_the_do_bit_separates_entries_and_case_does_not() -> None:
    cache, _ = make_cache()
    plain = query_wire("www.example.test.")
    dnssec = query_wire("www.example.test.", dnssec=True)
    stored(cache, response_to(plain, [(NAME, "A", 300, ["192.0.2.1"])]), plain)
    assert served(cache, dnssec) is None
    stored(cache, response_to(dnssec, [(NAME, "A", 300, ["192.0.2.2"])]), dnssec)
    assert len(cache) == 2
    shouting = served(cache, query_wire("WWW.EXAMPLE.TEST."))
    assert shouting is not None
    assert str(shouting.question[0].name) == "WWW.EXAMPLE.TEST."
    assert [rdata.address for rdata in shouting.answer[0]] == ["192.0.2.1"]
    signed = served(cache, query_wire("Www.Example.Test.", dnssec=True))
    assert signed is not None
    assert [rdata.address for rdata in signed.answer[0]] == ["192.0.2.2"]
    assert signed.ednsflags & dns.flags.DO


def test_the_answer_follows_the_clients_edns() -> None:
    cache, _ = make_cache()
    stored(cache, POSITIVE)  # stored with an OPT record
    without = served(cache, query_wire(edns=False))
    assert without is not None
    assert without.edns == -1
    assert record_ttls(without)[("ns1.example.test.", "A")] == 30  # the glue is still there
    plain_wire = query_wire("mail.example.test.", edns=False)
    cache.put(parsed(plain_wire), response_to(plain_wire, [("mail.example.test.", "A", 300, ["192.0.2.9"])]))
    with_edns = served(cache, query_wire("mail.example.test."))
    assert with_edns is not None
    assert (with_edns.edns, with_edns.payload) == (0, 1232)
    assert served(cache, plain_wire) is not None


def test_the_opt_options_of_the_upstream_exchange_are_not_served() -> None:
    cache, _ = make_cache()
    cookie = dns.edns.CookieOption(b"clientck", b"server-cookie-16")
    response = response_to(query_wire(), [(NAME, "A", 300, ["192.0.2.1"])], options=[cookie])
    assert dns.message.from_wire(response).options
    assert stored(cache, response) == 300
    message = served(cache, query_wire())
    assert message is not None
    assert (message.edns, message.options) == (0, ())


def test_a_ttl_with_the_top_bit_set_is_served_as_zero() -> None:
    cache, _ = make_cache(min_ttl=10)
    response = bytearray(response_to(query_wire(), [(NAME, "A", 300, ["192.0.2.1"])]))
    struct.pack_into("!I", response, inspect_response(response).ttl_offsets[0], 0xFFFFFFFF)
    assert stored(cache, bytes(response)) == 10
    message = served(cache, query_wire())
    assert message is not None
    assert message.answer[0].ttl == 0


def test_cleanup_and_clear() -> None:
    cache, clock = make_cache()
    stored(cache, POSITIVE)  # 60 s
    stored(cache, NXDOMAIN, query_wire("gone.example.test."))  # answers another question: not stored
    stored(
        cache,
        response_to(query_wire(rdtype="MX"), [(NAME, "MX", 600, ["10 mail.example.test."])]),
        query_wire(rdtype="MX"),
    )
    assert len(cache) == 2
    clock.now += 61
    assert cache.cleanup() == 1
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    assert cache.stats().inserts == 2


def test_a_disabled_or_invalid_policy() -> None:
    cache, _ = make_cache(max_entries=0)
    assert stored(cache, POSITIVE) is None
    with pytest.raises(ValueError):
        CachePolicy(min_ttl=10, max_ttl=5)
    with pytest.raises(ValueError):
        CachePolicy(servfail_ttl=-1)


def _put_never_raises(response: bytes, query: Query, wire_bytes: bytes) -> None:
    """Whatever ``put`` takes, a hit serves a message dnspython reads as well as the original."""
    cache = DnsCache(CachePolicy(min_ttl=1))
    lifetime = cache.put(query, response)
    answer = cache.get(wire_bytes, query)
    if lifetime is None:
        assert answer is None
        return
    assert answer is not None
    assert answer[:2] == wire_bytes[:2]
    assert answer[12 : query.question_end] == wire_bytes[12 : query.question_end]
    try:
        dns.message.from_wire(response)
    except Exception:  # what an upstream sent broken may be served broken, but never cached as other bytes
        return
    message = dns.message.from_wire(answer)
    assert message.id == query.id


@fuzz_settings(scale=2)
@given(st.integers(0, len(SAMPLE_QUERIES) - 1), st.binary(max_size=400))
def test_put_never_raises_on_any_bytes(index: int, rest: bytes) -> None:
    """Arbitrary bytes behind the right header and question, so they get past the question check."""
    wire_bytes = SAMPLE_QUERIES[index]
    query = parsed(wire_bytes)
    response = SAMPLE_RESPONSES[index][: query.question_end] + rest
    _put_never_raises(response, query, wire_bytes)
    _put_never_raises(rest, query, wire_bytes)


@fuzz_settings(scale=3)
@given(st.data())
def test_put_never_raises_on_mutated_answers(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(SAMPLE_QUERIES) - 1))
    wire_bytes = SAMPLE_QUERIES[index]
    response = data.draw(mutations(SAMPLE_RESPONSES[index]))
    _put_never_raises(response, parsed(wire_bytes), wire_bytes)
