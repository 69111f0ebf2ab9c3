"""The answer cache of a DNS route: upstream answers kept as bytes, served with their TTLs aged.

Why bytes: a hit must not touch dnspython (see :mod:`kairos.dns.wire` for what that would cost).
Everything a hit needs is worked out once, in :meth:`DnsCache.put`: where each TTL sits, the
header flags without the client's bits, the counts for a client with and without EDNS. A hit then
joins the client's ID and flags, the counts, the client's own question bytes and the stored rest.
TTLs are counted down by the whole seconds since the answer was stored, each record on its own
(RFC 1035 4.1.3: a cached record is served with its remaining TTL); the aged bytes are kept with the
entry, so a popular name costs one re-patch per second rather than one per hit.

How long an answer lives (CoreDNS ``cache`` and RFC 2308):

- NOERROR with answers: the lowest TTL of the answer and authority records, within
  [``min_ttl``, ``max_ttl``];
- NXDOMAIN, and NOERROR without answers (NODATA): min(SOA TTL, SOA MINIMUM) of the authority
  section's SOA (RFC 2308 5), at most ``negative_ttl_cap`` and ``max_ttl``, and at most the TTL of
  any answer record (the CNAME that led to the denial); not cached without an SOA;
- SERVFAIL: ``servfail_ttl`` (RFC 2308 7.1 allows up to five minutes; 0 turns it off);
- nothing else: truncated answers, REFUSED, FORMERR, NOTIMP, extended rcodes, zone transfers,
  answers to another question and anything :func:`~kairos.dns.wire.inspect_response` cannot walk.

What a stored answer loses: the options of its OPT record. They belonged to the one exchange that
fetched it (a client's DNS cookie, RFC 7873, which every other client would have to discard the
answer for; padding; NSID; extended errors), not to the clients that get the copy.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kairos.dns.wire import (
    CLIENT_FLAGS,
    MAX_MESSAGE_SIZE,
    MAX_TTL_VALUE,
    NOERROR,
    NXDOMAIN,
    OPCODE_MASK,
    SERVFAIL,
    TC,
    Query,
    ResponseInfo,
    WireError,
    answers_query,
    built_opt,
    inspect_response,
)

# IXFR and AXFR: a zone transfer may take several messages and is never one cacheable answer.
UNCACHED_QTYPES = frozenset({251, 252})

_U32_PACK_INTO = struct.Struct("!I").pack_into
_ID_FLAGS_PACK = struct.Struct("!HH").pack

_SUCCESS = 0
_DENIAL = 1  # NXDOMAIN, NODATA and SERVFAIL, as CoreDNS counts them


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long answers live (seconds) and how many are kept; see the module docstring."""

    max_entries: int = 10_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_ttl_cap: int = 3_600  # NXDOMAIN / NODATA: min(SOA rules, cap)
    servfail_ttl: int = 5  # 0: never cache SERVFAIL

    def __post_init__(self) -> None:
        if min(self.max_entries, self.min_ttl, self.max_ttl, self.negative_ttl_cap, self.servfail_ttl) < 0:
            raise ValueError("cache limits cannot be negative")
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl cannot be above max_ttl")


@dataclass(slots=True)
class CacheStats:
    """Counters since the cache was made (``clear`` keeps them); ``hits`` = success + denial."""

    entries: int
    max_entries: int
    hits: int
    misses: int
    success_hits: int
    denial_hits: int  # NXDOMAIN, NODATA and SERVFAIL answers served from the cache
    evictions: int  # entries dropped to make room (expired ones are not counted)
    inserts: int


class _Entry:
    """One stored answer, split where a hit splices in the client's parts.

    ``tail`` is everything after the question; ``ttl_offsets`` are relative to it. ``opt_at`` is
    where the OPT record starts in ``tail`` (always the last record), -1 without one.
    """

    __slots__ = (
        "counts",
        "counts_with_added_opt",
        "counts_without_opt",
        "expires_at",
        "flags",
        "kind",
        "opt_at",
        "served_elapsed",
        "served_tail",
        "stored_at",
        "tail",
        "ttl_offsets",
        "ttls",
    )

    def __init__(
        self,
        stored_at: float,
        lifetime: int,
        kind: int,
        flags: int,
        counts: bytes,
        tail: bytes,
        opt_at: int,
        ttl_offsets: tuple[int, ...],
        ttls: tuple[int, ...],
    ) -> None:
        self.stored_at = stored_at
        self.expires_at = stored_at + lifetime
        self.kind = kind
        self.flags = flags
        self.counts = counts
        additional = counts[6] << 8 | counts[7]
        self.counts_without_opt = counts[:6] + (additional - 1).to_bytes(2, "big") if opt_at >= 0 else counts
        self.counts_with_added_opt = (
            counts[:6] + (additional + 1).to_bytes(2, "big") if opt_at < 0 else counts
        )
        self.tail = tail
        self.opt_at = opt_at
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.served_elapsed = 0
        self.served_tail = tail

    def age(self, elapsed: int) -> bytes:
        """``tail`` with every TTL lowered by ``elapsed`` seconds (never below 0), memoised."""
        served = bytearray(self.tail)
        if elapsed > 0:
            for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                _U32_PACK_INTO(served, offset, ttl - elapsed if ttl > elapsed else 0)
        self.served_tail = tail = bytes(served)
        self.served_elapsed = elapsed
        return tail


class DnsCache:
    """A bounded LRU of ready-to-serve answers, keyed by :attr:`Query.key`.

    Not thread-safe (one event loop owns it). ``clock`` is injectable for tests; it must not go
    backwards (a clock that does only stops the countdown).
    """

    def __init__(
        self,
        policy: CachePolicy = CachePolicy(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._success_hits = 0
        self._denial_hits = 0
        self._misses = 0
        self._evictions = 0
        self._inserts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query_wire: bytes, query: Query) -> bytes | None:
        """The stored answer for ``query``, ready to send (as :func:`~kairos.dns.wire.answer_for`
        would make it), TTLs aged; None on a miss or when the entry has expired (it is removed)."""
        key = query.key
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        now = self._clock()
        if now >= entry.expires_at:
            del self._entries[key]
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        if entry.kind == _SUCCESS:
            self._success_hits += 1
        else:
            self._denial_hits += 1
        elapsed = int(now - entry.stored_at)
        tail = entry.served_tail if elapsed == entry.served_elapsed else entry.age(elapsed)
        header = _ID_FLAGS_PACK(query.id, entry.flags | query.flags & CLIENT_FLAGS)
        question = query_wire[12 : query.question_end]
        if query.edns:
            if entry.opt_at < 0:  # RFC 6891 7: a query with OPT gets an answer with OPT
                return header + entry.counts_with_added_opt + question + tail + built_opt(query.do)
            return header + entry.counts + question + tail
        if entry.opt_at >= 0:  # ... and a query without one an answer without
            return header + entry.counts_without_opt + question + tail[: entry.opt_at]
        return header + entry.counts + question + tail

    def put(self, query: Query, response: bytes) -> int | None:
        """Store ``response`` (an upstream's answer to ``query``) if the rules allow; the seconds it
        will be served for, or None when it is not cacheable. Never raises on any bytes."""
        policy = self.policy
        if policy.max_entries < 1 or query.qtype in UNCACHED_QTYPES:
            return None
        if len(response) > MAX_MESSAGE_SIZE or not answers_query(query, response):
            return None  # (no DNS message is longer: its counts could not be re-encoded either)
        try:
            info = inspect_response(response)
        except WireError:
            return None
        if (response[2] << 8 | response[3]) & (OPCODE_MASK | TC):
            return None
        lifetime, kind = _lifetime(policy, info)
        if lifetime <= 0:
            return None
        question_end = query.question_end
        opt_start = info.opt_start
        if opt_start is None:
            opt_at = -1
            tail = bytearray(response[question_end:])
        elif info.opt_end != len(response):
            return None  # an OPT before other records: it could not be cut out without a full rewrite
        else:
            opt_at = opt_start - question_end
            tail = bytearray(response[question_end : opt_start + 9])  # up to its RDLENGTH
            tail += b"\x00\x00"  # no options
        ttl_offsets = tuple(offset - question_end for offset in info.ttl_offsets)
        ttls = tuple(ttl if ttl <= MAX_TTL_VALUE else 0 for ttl in info.ttls)
        if ttls != info.ttls:  # RFC 2181 8: a TTL with the top bit set means 0; serve it so
            for offset, ttl in zip(ttl_offsets, ttls, strict=True):
                _U32_PACK_INTO(tail, offset, ttl)
        flags = (response[2] << 8 | response[3]) & ~CLIENT_FLAGS
        entry = _Entry(
            self._clock(),
            lifetime,
            kind,
            flags,
            bytes(response[4:12]),
            bytes(tail),
            opt_at,
            ttl_offsets,
            ttls,
        )
        entries = self._entries
        entries[query.key] = entry
        entries.move_to_end(query.key)
        self._inserts += 1
        while len(entries) > policy.max_entries:
            entries.popitem(last=False)
            self._evictions += 1
        return lifetime

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            max_entries=self.policy.max_entries,
            hits=self._success_hits + self._denial_hits,
            misses=self._misses,
            success_hits=self._success_hits,
            denial_hits=self._denial_hits,
            evictions=self._evictions,
            inserts=self._inserts,
        )

    def cleanup(self) -> int:
        """Drop every expired entry (those nobody asks for again would stay until evicted)."""
        now = self._clock()
        expired = [key for key, entry in self._entries.items() if now >= entry.expires_at]
        for key in expired:
            del self._entries[key]
        return len(expired)

    def clear(self) -> None:
        """Drop every entry; the counters go on."""
        self._entries.clear()


def _lifetime(policy: CachePolicy, info: ResponseInfo) -> tuple[int, int]:
    """Seconds the answer may be served for (0: not cacheable), and whether it is a denial."""
    rcode = info.rcode
    if rcode == NOERROR and info.answer_count and info.min_answer_ttl is not None:
        return min(max(info.min_answer_ttl, policy.min_ttl), policy.max_ttl), _SUCCESS
    if rcode in (NOERROR, NXDOMAIN):
        if info.soa_negative_ttl is None:
            return 0, _DENIAL
        lifetime = min(info.soa_negative_ttl, policy.negative_ttl_cap, policy.max_ttl)
        if info.min_answer_ttl is not None:
            lifetime = min(lifetime, info.min_answer_ttl)
        return lifetime, _DENIAL
    if rcode == SERVFAIL:
        return min(policy.servfail_ttl, policy.max_ttl), _DENIAL
    return 0, _DENIAL
