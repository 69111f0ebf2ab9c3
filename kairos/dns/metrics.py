"""The DNS families of /metrics, with CoreDNS-like names, kept as plain counters on the hot path.

- ``kairos_dns_requests_total{route,proto,qtype,rcode}`` (proto: udp, tcp, doh; qtype: the common
  types by name, ``other`` for the rest so a client cannot create series at will);
- ``kairos_dns_request_duration_seconds{route,proto}``: query in to answer out;
- ``kairos_dns_upstream_duration_seconds{upstream,rcode}``: one upstream exchange (``timeout`` and
  ``error`` as the rcode of those that got no answer);
- ``kairos_dns_cache_hits_total{route,type}`` (type: success, denial), ``kairos_dns_cache_misses_total``,
  ``kairos_dns_cache_entries{route}``;
- ``kairos_dns_upstream_healthy{upstream}``, ``kairos_dns_ratelimited_total{route,action}``,
  ``kairos_dns_dropped_total{proto,reason}`` (malformed packets, spoofed or unmatched upstream
  answers) and ``kairos_dns_listener_up{proto}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from kairos.observability.requests import Histogram

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily

# Query types with a label of their own; the rest are counted as "other".
QTYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
    257: "CAA",
}
RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}


def qtype_label(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, "other")


@dataclass(slots=True)
class DnsStats:
    """Owned by the DnsService; the listener, the DoH endpoint and the forwarder add to it."""

    requests: defaultdict[tuple[str, str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    upstream: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    cache_hits: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    cache_misses: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    ratelimited: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    dropped: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def answered(self, route: str, proto: str, qtype: int, rcode: int, seconds: float) -> None:
        self.requests[(route, proto, qtype_label(qtype), rcode_label(rcode))] += 1
        key = (route, proto)
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = Histogram()
        histogram.observe(seconds)

    def upstream_exchange(self, upstream: str, outcome: str, seconds: float) -> None:
        key = (upstream, outcome)
        histogram = self.upstream.get(key)
        if histogram is None:
            histogram = self.upstream[key] = Histogram()
        histogram.observe(seconds)


def dns_families(
    stats: DnsStats,
    cache_entries: Callable[[], dict[str, int]],
    upstream_health: Callable[[], dict[str, bool]],
    listeners: Callable[[], dict[str, bool]],
) -> Iterator[Family]:
    requests = CounterMetricFamily(
        "kairos_dns_requests",
        "DNS queries answered, by route, transport, type and answer code",
        labels=["route", "proto", "qtype", "rcode"],
    )
    for labels, count in sorted(stats.requests.items()):
        requests.add_metric(list(labels), count)
    yield requests
    duration = HistogramMetricFamily(
        "kairos_dns_request_duration_seconds",
        "Time from a DNS query in to its answer out",
        labels=["route", "proto"],
    )
    for (route, proto), histogram in sorted(stats.durations.items()):
        duration.add_metric([route, proto], histogram.cumulative(), histogram.sum)
    yield duration
    upstream = HistogramMetricFamily(
        "kairos_dns_upstream_duration_seconds",
        "One exchange with an upstream DNS server, by its answer code (timeout / error: none came)",
        labels=["upstream", "rcode"],
    )
    for (name, outcome), histogram in sorted(stats.upstream.items()):
        upstream.add_metric([name, outcome], histogram.cumulative(), histogram.sum)
    yield upstream
    hits = CounterMetricFamily(
        "kairos_dns_cache_hits",
        "DNS answers served from the cache (success or denial)",
        labels=["route", "type"],
    )
    for (route, kind), count in sorted(stats.cache_hits.items()):
        hits.add_metric([route, kind], count)
    yield hits
    misses = CounterMetricFamily(
        "kairos_dns_cache_misses", "DNS queries the cache could not answer", labels=["route"]
    )
    for route, count in sorted(stats.cache_misses.items()):
        misses.add_metric([route], count)
    yield misses
    entries = GaugeMetricFamily(
        "kairos_dns_cache_entries", "Answers in a DNS route's cache", labels=["route"]
    )
    for route, count in sorted(cache_entries().items()):
        entries.add_metric([route], count)
    yield entries
    healthy = GaugeMetricFamily(
        "kairos_dns_upstream_healthy",
        "1 while an upstream DNS server is up, 0 while it is down",
        labels=["upstream"],
    )
    for name, is_up in sorted(upstream_health().items()):
        healthy.add_metric([name], 1 if is_up else 0)
    yield healthy
    limited = CounterMetricFamily(
        "kairos_dns_ratelimited", "DNS queries over their client's rate limit", labels=["route", "action"]
    )
    for (route, action), count in sorted(stats.ratelimited.items()):
        limited.add_metric([route, action], count)
    yield limited
    dropped = CounterMetricFamily(
        "kairos_dns_dropped",
        "DNS packets dropped: malformed queries over UDP, upstream answers that match no query",
        labels=["proto", "reason"],
    )
    for (proto, reason), count in sorted(stats.dropped.items()):
        dropped.add_metric([proto, reason], count)
    yield dropped
    listening = GaugeMetricFamily(
        "kairos_dns_listener_up", "1 while the DNS listener serves this transport", labels=["proto"]
    )
    for proto, running in sorted(listeners().items()):
        listening.add_metric([proto], 1 if running else 0)
    yield listening
