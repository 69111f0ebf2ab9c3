"""The gateway's DNS side: the DNS routes of the running config, and the one answer path the UDP
and TCP listener and the DNS-over-HTTPS endpoint share.

Owned by the Gateway: ``update()`` on every config apply builds the new routes' run-time objects
(reusing the cache of a route whose DNS settings did not change, so a reload does not empty it)
and swaps them in; the listener reads the current ones per query. Upstream sockets and health are
kept by backend (scheme, host, port) across routes and reloads, like the HTTP backends' state.

The answer path, in order: parse (the wire fast path, else dnspython for the unusual queries it
can still answer: TSIG-signed, EDNS with extra records; else FORMERR, or a silent drop over UDP);
the route (the query name's most specific zone, or the DoH route, which must serve the name); the
client's rate limit; the cache; the route's upstreams. A cached answer over UDP is sent from
``datagram_received`` itself, without a task: that path is what ``make bench`` measures against
dnsdist.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import httpx

from kairos.config.dns import DEFAULT_DNS_TIMEOUT_MS, STRATEGY_POLICIES, DnsConfig
from kairos.config.policies import CircuitBreakerConfig
from kairos.dns.forwarder import DnsRoute, Upstream, UpstreamHealth, probe
from kairos.dns.metrics import DnsStats
from kairos.dns.upstream import UdpUpstream
from kairos.dns.wire import Query, answer_for, formerr_for, parse_query, refused_for, truncated_answer
from kairos.observability.accesslog import AccessLog
from kairos.proxy.tls import client_context
from kairos.ratelimit.memory import MemoryStore
from kairos.ratelimit.policy import Limit
from kairos.routing.matcher import RouteTable
from kairos.routing.route import Route

logger = logging.getLogger("kairos.dns")

NO_ROUTE = "(none)"  # the route label of queries no DNS route serves (answered REFUSED)
DOH_DEFAULT_PATH = "/dns-query"


def dns_config(route: Route) -> DnsConfig:
    return route.config.dns or DnsConfig()


def query_timeout(route: Route) -> float:
    """Seconds one query may take across its upstreams: the route's ``timeout_ms`` when set (and not
    0), else ``DEFAULT_DNS_TIMEOUT_MS``."""
    config = route.config
    if "timeout_ms" in config.model_fields_set and config.timeout_ms > 0:
        return config.timeout_ms / 1000
    return DEFAULT_DNS_TIMEOUT_MS / 1000


def serves(zones: tuple[str, ...], qname: str) -> bool:
    return any(zone == "." or qname == zone or qname.endswith("." + zone) for zone in zones)


class DnsService:
    def __init__(self, access_log: AccessLog | None = None) -> None:
        self.stats = DnsStats()
        self.access_log = access_log
        self.routes: dict[str, DnsRoute] = {}  # by route key
        self._zones: dict[str, DnsRoute] = {}
        self._health: dict[str, UpstreamHealth] = {}
        self._udp: dict[tuple[str, int], UdpUpstream] = {}
        self._tls: dict[tuple[str | None, bool], ssl.SSLContext] = {}
        self._http: dict[tuple[str | None, bool], httpx.AsyncClient] = {}
        self._limiter = MemoryStore(clock=time.monotonic)
        self._limits: dict[str, Limit] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_routes: Callable[[], None] | None = None  # the gateway's hook: start the listener

    # -- configuration -------------------------------------------------------------------------

    def update(self, table: RouteTable, breaker: Callable[[], CircuitBreakerConfig | None]) -> None:
        """Build the DNS routes of a new route table and swap them in (on every config apply)."""
        previous = self.routes
        routes: dict[str, DnsRoute] = {}
        zones: dict[str, DnsRoute] = {}
        limits: dict[str, Limit] = {}
        for route in table.routes:
            if route.config.protocol != "dns":
                continue
            config = dns_config(route)
            if config.policy is None:
                config = config.model_copy(
                    update={"policy": STRATEGY_POLICIES[route.config.load_balancing_strategy]}
                )
            old = previous.get(route.key)
            cache = (
                old.cache
                if old is not None and old.config.cache == config.cache
                else DnsRoute.make_cache(config)
            )
            runtime = DnsRoute(
                route,
                config,
                [self._upstream(backend, route) for backend in route.backends],
                query_timeout(route),
                self.stats,
                _breaker_of(route, breaker),
                self._mark_down,
                cache,
            )
            routes[route.key] = runtime
            for zone in config.zones:
                zones.setdefault(zone, runtime)  # the first route (config order) holding a zone has it
            if config.client_rate_limit is not None:
                limit = config.client_rate_limit
                capacity = max(1, int(limit.capacity))
                limits[route.key] = Limit(
                    name="dns",
                    strategy="PerIP",
                    algorithm="bucket",
                    capacity=capacity,
                    window=capacity / limit.queries_per_second,
                    refill_per_second=limit.queries_per_second,
                    fingerprint=f"dns {route.key} {limit.queries_per_second} {capacity}",
                )
        self.routes, self._zones, self._limits = routes, zones, limits
        used = {backend.key for runtime in routes.values() for backend in runtime.route.backends}
        for key in [key for key in self._health if key not in used]:
            task = self._health.pop(key).prober
            if task is not None:
                task.cancel()
        if routes and self.on_routes is not None:
            self.on_routes()

    def _upstream(self, backend: Any, route: Route) -> Upstream:
        health = self._health.get(backend.key)
        if health is None:
            health = self._health[backend.key] = UpstreamHealth(backend.key)
        udp = None
        if backend.scheme in ("dns", "udp"):
            address = (backend.host, backend.port)
            udp = self._udp.get(address)
            if udp is None:
                udp = self._udp[address] = UdpUpstream(backend.host, backend.port, self._stray)
        config = route.config.upstreams[backend.index]
        tls_key = (config.tls_ca_file, config.tls_verify)
        tls = None
        if backend.scheme in ("tls", "https"):
            tls = self._tls.get(tls_key)
            if tls is None:
                tls = client_context(config.tls_ca_file, config.tls_verify) or ssl.create_default_context()
                self._tls[tls_key] = tls
        internal = route.config.internal_path
        return Upstream(
            backend,
            health,
            udp,
            lambda: self._http_client(tls_key),
            internal if internal != "/" else DOH_DEFAULT_PATH,
            tls,
        )

    def _http_client(self, tls_key: tuple[str | None, bool]) -> httpx.AsyncClient:
        """One pooled client per TLS setting (CA file, verify) of DNS-over-HTTPS upstreams."""
        client = self._http.get(tls_key)
        if client is None:
            client = self._http[tls_key] = httpx.AsyncClient(
                verify=self._tls[tls_key], limits=httpx.Limits(max_keepalive_connections=20)
            )
        return client

    def _stray(self, reason: str) -> None:
        self.stats.dropped[("upstream", reason)] += 1

    def _mark_down(self, upstream: Upstream, config: DnsConfig) -> None:
        health = upstream.health
        health.down = True
        logger.warning("DNS upstream %s is down after %d failures: probing it", upstream.name, health.fails)
        if health.prober is None or health.prober.done():
            health.prober = self.spawn(self._probe(upstream, config.health_check_ms / 1000))

    async def _probe(self, upstream: Upstream, interval: float) -> None:
        await probe(upstream, interval)
        logger.warning("DNS upstream %s answers again", upstream.name)

    # -- lookups ---------------------------------------------------------------------------------

    def route_for_name(self, qname: str) -> DnsRoute | None:
        """The route whose zone is the longest suffix of ``qname`` (lower case, absolute)."""
        zones = self._zones
        name = qname
        while True:
            runtime = zones.get(name)
            if runtime is not None:
                return runtime
            if name == ".":
                return None
            dot = name.find(".")
            name = name[dot + 1 :] or "."

    def runtime_for(self, route: Route) -> DnsRoute | None:
        return self.routes.get(route.key)

    def cache_entries(self) -> dict[str, int]:
        return {
            runtime.name: len(runtime.cache) for runtime in self.routes.values() if runtime.cache is not None
        }

    def upstream_health(self) -> dict[str, bool]:
        return {key: not health.down for key, health in self._health.items()}

    # -- the answer path ---------------------------------------------------------------------------

    def admit(self, runtime: DnsRoute, client_ip: str) -> bool:
        limit = self._limits.get(runtime.route.key)
        if limit is None:
            return True
        if self._limiter.acquire_one(client_ip, limit)[0]:
            return True
        config = runtime.config.client_rate_limit
        action = config.action if config is not None else "refuse"
        self.stats.ratelimited[(runtime.name, action)] += 1
        return False

    def cached(self, runtime: DnsRoute, wire: bytes, query: Query) -> bytes | None:
        cache = runtime.cache
        if cache is None:
            return None
        answer = cache.get(wire, query)
        if answer is None:
            self.stats.cache_misses[runtime.name] += 1
            return None
        denial = (answer[3] & 0x0F) == 3 or answer[6:8] == b"\x00\x00"
        self.stats.cache_hits[(runtime.name, "denial" if denial else "success")] += 1
        return answer

    def finish(
        self,
        route: str,
        proto: str,
        query: Query | None,
        answer: bytes,
        started: float,
        client_ip: str,
        source: str,
        size_in: int,
    ) -> None:
        elapsed = time.perf_counter() - started
        rcode = answer[3] & 0x0F if len(answer) >= 4 else 2
        self.stats.answered(route, proto, query.qtype if query is not None else 0, rcode, elapsed)
        log = self.access_log
        if log is not None:
            log.put(
                (
                    time.time(),
                    {
                        "client_ip": client_ip,
                        "request_id": None,
                        "method": f"DNS/{proto}",
                        "path": f"{query.qname} {query.qtype}" if query is not None else "-",
                        "status": dns.rcode.to_text(dns.rcode.Rcode(rcode)) if rcode <= 5 else rcode,
                        "source": source,
                        "duration_ms": elapsed * 1000,
                        "upstream_ms": None,
                        "route": route,
                        "backend": None,
                        "bytes_in": size_in,
                        "bytes_out": len(answer),
                        "user_agent": None,
                    },
                )
            )

    async def answer(
        self, wire: bytes, client_ip: str, proto: str, route: DnsRoute | None = None
    ) -> tuple[bytes | None, bool]:
        """The answer to one query over TCP or DoH (``route``: the DoH route), and whether it came
        from the cache. None: nothing to send (a client over a ``drop`` rate limit)."""
        started = time.perf_counter()
        query = parse_query(wire)
        if query is None:
            query, rewritten = _slow_parse(wire)
            if query is None:
                reply = rewritten or formerr_for(wire)  # over a stream a malformed query is told so
                if reply is None:
                    self.stats.dropped[(proto, "malformed")] += 1
                    return None, False
                name = route.name if route is not None else NO_ROUTE
                self.finish(name, proto, None, reply, started, client_ip, "gateway", len(wire))
                return reply, False
            assert rewritten is not None
            wire = rewritten
        if route is None:
            route = self.route_for_name(query.qname)
        elif not serves(route.config.zones, query.qname):
            route = None
        if route is None:
            reply = refused_for(wire, query)
            self.finish(NO_ROUTE, proto, query, reply, started, client_ip, "gateway", len(wire))
            return reply, False
        if not self.admit(route, client_ip):
            config = route.config.client_rate_limit
            if config is not None and config.action == "drop":
                return None, False
            reply = refused_for(wire, query)
            self.finish(route.name, proto, query, reply, started, client_ip, "ratelimit", len(wire))
            return reply, False
        hit = self.cached(route, wire, query)
        if hit is not None:
            self.finish(route.name, proto, query, hit, started, client_ip, "cache", len(wire))
            return hit, True
        answer, source = await route.resolve(wire, query, client_ip)
        reply = answer_for(wire, query, answer)
        self.finish(route.name, proto, query, reply, started, client_ip, source, len(wire))
        return reply, False

    def on_datagram(self, data: bytes, addr: tuple[Any, ...], transport: asyncio.DatagramTransport) -> None:
        """A UDP query: answered here and now from the cache, else by a task."""
        started = time.perf_counter()
        query = parse_query(data)
        if query is None:
            self.spawn(self._udp_slow(data, addr, transport, started))
            return
        client_ip = addr[0]
        route = self.route_for_name(query.qname)
        if route is None:
            reply = refused_for(data, query)
            transport.sendto(reply, addr)
            self.finish(NO_ROUTE, "udp", query, reply, started, client_ip, "gateway", len(data))
            return
        if self._limits and not self.admit(route, client_ip):
            config = route.config.client_rate_limit
            if config is None or config.action != "drop":
                reply = refused_for(data, query)
                transport.sendto(reply, addr)
                self.finish(route.name, "udp", query, reply, started, client_ip, "ratelimit", len(data))
            return
        hit = self.cached(route, data, query)
        if hit is not None:
            transport.sendto(hit if len(hit) <= query.udp_size else truncated_answer(data, query, hit), addr)
            self.finish(route.name, "udp", query, hit, started, client_ip, "cache", len(data))
            return
        self.spawn(self._udp_forward(route, data, query, addr, transport, started))

    async def _udp_forward(
        self,
        route: DnsRoute,
        data: bytes,
        query: Query,
        addr: tuple[Any, ...],
        transport: asyncio.DatagramTransport,
        started: float,
    ) -> None:
        answer, source = await route.resolve(data, query, addr[0])
        reply = answer_for(data, query, answer)
        if len(reply) > query.udp_size:
            reply = truncated_answer(data, query, reply)
        if not transport.is_closing():
            transport.sendto(reply, addr)
        self.finish(route.name, "udp", query, reply, started, addr[0], source, len(data))

    async def _udp_slow(
        self, data: bytes, addr: tuple[Any, ...], transport: asyncio.DatagramTransport, started: float
    ) -> None:
        query, rewritten = _slow_parse(data)
        if query is None:
            if rewritten is None:  # not DNS: dropped, never answered (no reflection of garbage)
                self.stats.dropped[("udp", "malformed")] += 1
                return
            # A query it cannot take (another opcode, several questions): told so, as servers do.
            transport.sendto(rewritten, addr)
            self.finish(NO_ROUTE, "udp", None, rewritten, started, addr[0], "gateway", len(data))
            return
        assert rewritten is not None
        wire = rewritten
        answer, _ = await self.answer(wire, addr[0], "udp")
        if answer is not None and not transport.is_closing():
            transport.sendto(
                answer if len(answer) <= query.udp_size else truncated_answer(wire, query, answer), addr
            )

    # -- tasks -------------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("DNS query failed inside the gateway", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for udp in self._udp.values():
            udp.close()
        self._udp.clear()
        for client in self._http.values():
            await client.aclose()
        self._http.clear()


def _breaker_of(
    route: Route, default: Callable[[], CircuitBreakerConfig | None]
) -> Callable[[], CircuitBreakerConfig | None]:
    """The route's ``circuit_breaker`` block, else the top-level one as it is now."""
    own = route.config.circuit_breaker
    return (lambda: own) if own is not None else default


def _slow_parse(wire: bytes) -> tuple[Query | None, bytes | None]:
    """A query the fast path did not take, through dnspython: (the query, its plain re-encoding)
    when it can be answered — the question, EDNS size and DO bit kept, the rest (TSIG, extra
    records) dropped, so it goes on as a plain query; (None, an error answer) when it cannot
    (FORMERR, NOTIMP for other opcodes); (None, None) when it is not a DNS query at all."""
    try:
        message = dns.message.from_wire(wire, ignore_trailing=True)
    except Exception:  # dnspython raises many kinds on hostile input; none may escape
        return None, None
    if message.flags & dns.flags.QR:
        return None, None  # a response sent to the listener: never answered (reflection)
    response = dns.message.make_response(message)
    if message.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return None, response.to_wire()
    if len(message.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return None, response.to_wire()
    question = message.question[0]
    plain = dns.message.make_query(
        question.name,
        question.rdtype,
        question.rdclass,
        use_edns=message.edns if message.edns >= 0 else False,
        payload=message.payload,
        want_dnssec=bool(message.ednsflags & dns.flags.DO),
    )
    plain.id = message.id
    plain.flags = message.flags
    plain_wire = plain.to_wire()
    query = parse_query(plain_wire)
    if query is None:
        response.set_rcode(dns.rcode.FORMERR)
        return None, response.to_wire()
    return query, plain_wire


def reuse_port_socket(host: str, port: int, kind: int, reuse_port: bool) -> socket.socket:
    """A bound socket for the listener; ``SO_REUSEPORT`` when several workers share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
