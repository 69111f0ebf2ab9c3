"""A DNS route at run time: its cache, its upstreams and how a query that misses goes to them.

- **One upstream query per question in flight.** Identical concurrent misses (same cache key)
  wait for the first one's answer instead of each asking upstream (CoreDNS's and dnsdist's
  behaviour; a popular name expiring under load otherwise stampedes the upstreams).
- **Order and failover.** ``policy`` orders the usable upstreams; a timeout, a connection error or
  an answer code in ``failover_rcodes`` moves to the next one, within the route's deadline (each
  attempt gets a share of it, so one dead upstream cannot eat the whole budget).
- **Health in-band.** ``max_fails`` consecutive failures (timeouts, errors, SERVFAIL) mark an
  upstream down; a prober asks it ``. IN NS`` every ``health_check_ms`` and brings it back on the
  first reply (CoreDNS ``forward``'s rule). When every upstream is down (or its circuit is open) the
  answer is SERVFAIL at once: a client waiting for a timeout per query helps nobody.
- **Circuit breakers** as for HTTP backends when a ``circuit_breaker`` block applies: the breaker
  of the backend (shared across routes by scheme, host and port) sees each attempt's outcome.
- **EDNS.** The client's query goes upstream as it came (ID aside), with its EDNS payload size
  raised to at least 1232 bytes (the DNS flag day 2020 value) so answers rarely truncate; a
  truncated UDP answer is fetched again over TCP.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from kairos.config.dns import DnsConfig
from kairos.config.policies import CircuitBreakerConfig
from kairos.dns.cache import CachePolicy, DnsCache
from kairos.dns.metrics import DnsStats, rcode_label
from kairos.dns.upstream import UdpUpstream, UpstreamError, https_exchange, stream_exchange
from kairos.dns.wire import Query, servfail_for
from kairos.routing.route import Backend, Route

UPSTREAM_PAYLOAD = 1232  # EDNS0 payload size asked of upstreams at least
SERVFAIL = 2
# ". IN NS" with RD, ID 0: the health probe (any reply means the server is answering again).
PROBE = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)
PROBE_QUESTION = PROBE[12:]


@dataclass(slots=True)
class UpstreamHealth:
    """In-band health of one upstream, shared by every route that uses it and kept across reloads."""

    name: str
    fails: int = 0
    down: bool = False
    in_flight: int = 0
    prober: asyncio.Task[None] | None = field(default=None, repr=False)


class Upstream:
    """One backend of a DNS route: how to reach it (by its scheme) and its shared health."""

    def __init__(
        self,
        backend: Backend,
        health: UpstreamHealth,
        udp: UdpUpstream | None,
        http: Callable[[], httpx.AsyncClient],
        doh_path: str,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.backend = backend
        self.name = backend.key
        self.health = health
        self.scheme = backend.scheme
        self._udp = udp
        self._http = http
        self._tls = tls
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        self._url = f"https://{host}:{backend.port}{doh_path}"

    async def exchange(self, wire: bytes, question: bytes, within: float) -> bytes:
        backend = self.backend
        if self._udp is not None:
            started = time.monotonic()
            answer = await self._udp.exchange(wire, question, within)
            if answer[2] & 0x02:  # TC: the whole answer over TCP
                left = max(0.05, within - (time.monotonic() - started))
                answer = await stream_exchange(backend.host, backend.port, wire, question, left)
            return answer
        if self.scheme == "tcp":
            return await stream_exchange(backend.host, backend.port, wire, question, within)
        if self.scheme == "tls":
            return await stream_exchange(
                backend.host,
                backend.port,
                wire,
                question,
                within,
                tls=self._tls,
                server_hostname=backend.host,
            )
        return await https_exchange(self._http(), self._url, wire, question, within)


class DnsRoute:
    """The run-time side of one ``protocol: dns`` route."""

    def __init__(
        self,
        route: Route,
        config: DnsConfig,
        upstreams: Sequence[Upstream],
        timeout: float,
        stats: DnsStats,
        breaker: Callable[[], CircuitBreakerConfig | None],
        mark_down: Callable[[Upstream, DnsConfig], None],
        cache: DnsCache | None = None,
    ) -> None:
        self.route = route
        self.name = route.name
        self.config = config
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.stats = stats
        self._breaker = breaker
        self._mark_down = mark_down
        self.cache = cache
        self.failover_rcodes = frozenset(config.failover_rcodes)
        self.policy = config.policy or "round_robin"
        self._next = 0
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}

    @staticmethod
    def make_cache(config: DnsConfig) -> DnsCache | None:
        settings = config.cache
        if not settings.enabled:
            return None
        return DnsCache(
            CachePolicy(
                max_entries=settings.max_entries,
                min_ttl=settings.min_ttl,
                max_ttl=settings.max_ttl,
                negative_ttl_cap=settings.negative_ttl_cap,
                servfail_ttl=settings.servfail_ttl,
            )
        )

    # -- a query that missed the cache ---------------------------------------------------------

    async def resolve(self, wire: bytes, query: Query, client_ip: str) -> tuple[bytes, str]:
        """The answer (still with the upstream's ID: the caller applies the query's) and where it
        came from: ``upstream``, ``coalesced`` (another query's upstream answer) or ``gateway``
        (SERVFAIL built here: no upstream could answer)."""
        waiting = self._inflight.get(query.key)
        if waiting is not None:
            try:
                return await asyncio.shield(waiting), "coalesced"
            except UpstreamError:  # the query it waited for was cancelled (its client left)
                return servfail_for(wire, query), "gateway"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[query.key] = future
        try:
            answer, source = await self._ask_upstreams(_upstream_query(wire, query), query, client_ip)
            if self.cache is not None:
                self.cache.put(query, answer)
            future.set_result(answer)
            return answer, source
        except BaseException:  # followers must not wait forever on a cancelled or failed leader
            future.set_exception(UpstreamError("error", "the upstream query this one waited for ended"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[query.key]

    async def _ask_upstreams(self, wire: bytes, query: Query, client_ip: str) -> tuple[bytes, str]:
        question = wire[12 : query.question_end]
        breaker = self._breaker()
        order = self._order(breaker)
        if not order:  # every upstream down or open: fail fast
            return servfail_for(wire, query), "gateway"
        deadline = time.monotonic() + self.timeout
        share = self.timeout / min(len(order), 3)
        last: bytes | None = None
        for upstream in order:
            left = deadline - time.monotonic()
            if left <= 0.001:
                break
            answer = await self._attempt(upstream, wire, question, min(share, left), breaker)
            if answer is None:
                continue
            if rcode_label(answer[3] & 0x0F) in self.failover_rcodes:
                last = answer
                continue
            return answer, "upstream"
        if last is not None:
            return last, "upstream"
        return servfail_for(wire, query), "gateway"

    async def _attempt(
        self,
        upstream: Upstream,
        wire: bytes,
        question: bytes,
        within: float,
        breaker: CircuitBreakerConfig | None,
    ) -> bytes | None:
        health = upstream.health
        circuit = upstream.backend.state.breaker
        ticket = circuit.acquire(breaker, time.monotonic()) if breaker is not None else None
        health.in_flight += 1
        started = time.perf_counter()
        try:
            answer = await upstream.exchange(wire, question, within)
        except UpstreamError as exc:
            self.stats.upstream_exchange(upstream.name, exc.kind, time.perf_counter() - started)
            self._failed(upstream, breaker, ticket)
            return None
        except BaseException:
            if breaker is not None:
                circuit.release(ticket)
            raise
        finally:
            health.in_flight -= 1
        rcode = answer[3] & 0x0F
        self.stats.upstream_exchange(upstream.name, rcode_label(rcode), time.perf_counter() - started)
        if rcode == SERVFAIL:
            self._failed(upstream, breaker, ticket)
        else:
            health.fails = 0
            if breaker is not None:
                circuit.record(breaker, False, time.monotonic(), ticket)
        return answer

    def _failed(self, upstream: Upstream, breaker: CircuitBreakerConfig | None, ticket: int | None) -> None:
        health = upstream.health
        health.fails += 1
        if breaker is not None:
            upstream.backend.state.breaker.record(breaker, True, time.monotonic(), ticket)
        if health.fails >= self.config.max_fails and not health.down:
            self._mark_down(upstream, self.config)

    def _order(self, breaker: CircuitBreakerConfig | None) -> list[Upstream]:
        now = time.monotonic()
        usable = [
            upstream
            for upstream in self.upstreams
            if not upstream.health.down
            and (breaker is None or not upstream.backend.state.breaker.blocks(now))
        ]
        if len(usable) < 2:
            return usable
        policy = self.policy
        if policy == "sequential":
            return usable
        if policy == "random":
            return random.sample(usable, len(usable))
        start = self._next % len(usable)
        self._next += 1
        rotated = usable[start:] + usable[:start]
        if policy == "least_outstanding":
            rotated.sort(key=lambda upstream: upstream.health.in_flight)  # stable: ties keep the rotation
        return rotated


def _upstream_query(wire: bytes, query: Query) -> bytes:
    """The client's query with its EDNS payload size raised to ``UPSTREAM_PAYLOAD``.

    The fast-path parser only takes queries whose one additional record is the OPT, right after the
    question, with the root name: its CLASS field (the payload size) is 3 bytes past the question."""
    if not query.edns or query.udp_size >= UPSTREAM_PAYLOAD:
        return wire
    at = query.question_end + 3
    if len(wire) < at + 2 or wire[query.question_end] != 0:
        return wire
    return wire[:at] + UPSTREAM_PAYLOAD.to_bytes(2, "big") + wire[at + 2 :]


async def probe(upstream: Upstream, interval: float) -> None:
    """Ask a down upstream ``. IN NS`` every ``interval`` until it answers; then it is up again."""
    health = upstream.health
    while health.down:
        await asyncio.sleep(interval)
        try:
            await upstream.exchange(PROBE, PROBE_QUESTION, max(0.2, min(2.0, interval * 2)))
        except UpstreamError:
            continue
        health.down = False
        health.fails = 0
