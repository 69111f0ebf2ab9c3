"""The `dns` section of a `"protocol": "dns"` route: which names it serves, its answer cache, how
it spreads queries over its upstream servers and when it asks the next one.

The keys may also be written flat on a DNS route (`"zones": [...]`, `"cache": {...}`, ...), as the
issue that introduced them spells them; the route model moves them into this section, so the
running config (and `/api/config`) always shows one shape. A flat `cache` on a DNS route is this
DNS cache, not the HTTP response cache of `http` routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, Strict, field_validator, model_validator

from kairos.config.base import Bool, ConfigModel, Float, NonNegativeInt, PositiveInt

DnsPolicy = Literal["round_robin", "random", "sequential", "least_outstanding"]
# What `load_balancing_strategy` means for a DNS route when `policy` is unset.
STRATEGY_POLICIES: dict[str, DnsPolicy] = {
    "round_robin": "round_robin",
    "weighted": "round_robin",
    "random": "random",
    "least_connections": "least_outstanding",
    "ip_hash": "sequential",
}
# Response codes after which the next upstream may be asked (the others are final answers).
FAILOVER_RCODES = ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR", "NXDOMAIN")
RcodeName = Literal["SERVFAIL", "REFUSED", "NOTIMP", "FORMERR", "NXDOMAIN"]
# Keys a DNS route may carry flat; the route model moves them into its `dns` section.
FLAT_KEYS = ("zones", "policy", "failover_rcodes", "client_rate_limit", "cache")


def _zone(text: str) -> str:
    """A zone as the listener compares it: lower case, absolute (trailing dot), labels of 1-63
    bytes and 255 bytes at most in all; `.` is the root (every name)."""
    zone = text.strip().lower()
    if zone in ("", "."):
        return "."
    if not zone.endswith("."):
        zone += "."
    labels = zone[:-1].split(".")
    if any(not 1 <= len(label.encode("idna" if not label.isascii() else "ascii")) <= 63 for label in labels):
        raise ValueError("every label must be 1 to 63 characters (e.g. `example.com`)")
    if len(zone) > 254:
        raise ValueError("a DNS name is at most 253 characters")
    if any(character in zone for character in " \t\r\n\\/"):
        raise ValueError("must be a domain name such as `example.com` or `.`")
    return zone


Zone = Annotated[str, Strict(), AfterValidator(_zone)]


class DnsCacheConfig(ConfigModel):
    """The answer cache of a DNS route (CoreDNS `cache`, RFC 2308 for negative answers). Entries are
    keyed by name (any case), type, class and the DNSSEC OK bit; served TTLs count down with age."""

    enabled: Bool = Field(True, description="`false`: every query goes to an upstream.")
    max_entries: PositiveInt = Field(
        10_000, description="Answers kept at most; the least recently used one goes first."
    )
    min_ttl: NonNegativeInt = Field(
        0, description="Seconds a positive answer is kept at least, even if its records say less."
    )
    max_ttl: NonNegativeInt = Field(
        86_400, description="Seconds an answer is kept at most, whatever its records say."
    )
    negative_ttl_cap: NonNegativeInt = Field(
        3_600,
        description="NXDOMAIN and NODATA answers live min(SOA TTL, SOA minimum) seconds, at most this; "
        "without an SOA they are not cached.",
    )
    servfail_ttl: NonNegativeInt = Field(
        5,
        description="Seconds a SERVFAIL answer is kept, so a broken name does not hammer the upstreams; "
        "0: never.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DnsCacheConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) must not be above max_ttl ({self.max_ttl})")
        return self


class DnsClientRateLimit(ConfigModel):
    """Queries per client address (a token bucket), over UDP, TCP and DNS-over-HTTPS together."""

    queries_per_second: Float = Field(gt=0, description="Sustained queries per second per client address.")
    burst: PositiveInt | None = Field(
        None, description="Queries a client may send at once above the rate. Unset: one second's worth."
    )
    action: Literal["refuse", "drop"] = Field(
        "refuse",
        description="What a client over its limit gets: `refuse` answers REFUSED (cheap, and the client "
        "stops waiting); `drop` sends nothing (what dnsdist's `DropAction` does against floods).",
    )

    @property
    def capacity(self) -> float:
        return float(self.burst) if self.burst is not None else max(1.0, self.queries_per_second)


class DnsConfig(ConfigModel):
    """How a DNS route answers: the listener (`KAIROS_DNS_PORT`) gives each query to the route whose
    zone is the longest suffix of the name, and DNS-over-HTTPS on `external_path` goes to this route."""

    zones: tuple[Zone, ...] = Field(
        (".",),
        description="The query-name suffixes this route serves (`example.com` serves it and every name "
        "below it); the most specific zone of all DNS routes wins, as CoreDNS server blocks do. `.`: "
        "every name.",
    )
    cache: DnsCacheConfig = Field(
        default_factory=DnsCacheConfig, description="The answer cache; on by default."
    )
    policy: DnsPolicy | None = Field(
        None,
        description="Which upstream is asked first: `round_robin`, `random`, `sequential` (the first "
        "healthy one in order; the others only on failure), `least_outstanding` (the fewest queries in "
        "flight). Unset: from `load_balancing_strategy` (`least_connections` → `least_outstanding`, "
        "`random` → `random`, `ip_hash` → `sequential`, else `round_robin`).",
    )
    failover_rcodes: tuple[RcodeName, ...] = Field(
        ("SERVFAIL",),
        description="Answer codes after which the next upstream is asked (a timeout or a connection error "
        "always is); the last answer is returned when every upstream gave one.",
    )
    client_rate_limit: DnsClientRateLimit | None = Field(
        None,
        description="Queries per client address. Unset: not limited (the HTTP rate limit still "
        "applies to DNS-over-HTTPS).",
    )
    max_fails: PositiveInt = Field(
        2,
        description="Consecutive failures (timeouts, connection errors, SERVFAIL) that mark an upstream "
        "down; while down it is probed every `health_check_ms` and used again after one good answer.",
    )
    health_check_ms: PositiveInt = Field(
        500, description="Milliseconds between probes (`. IN NS`) of an upstream that is down."
    )
    tcp_idle_timeout_ms: PositiveInt = Field(
        10_000, description="Milliseconds a client's idle TCP connection to the listener is kept open."
    )

    @field_validator("zones")
    @classmethod
    def _some_zones(cls, zones: tuple[str, ...]) -> tuple[str, ...]:
        if not zones:
            raise ValueError("must list at least one zone (`.` for every name)")
        return tuple(dict.fromkeys(zones))

    @field_validator("failover_rcodes", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [item.upper() if isinstance(item, str) else item for item in value]
        return value


# Upstream query timeout when a DNS route does not set `timeout_ms` (the HTTP default, 30 s, is
# far beyond what a DNS client waits: dig gives up after 5 s, glibc's resolver after 5 s per try).
DEFAULT_DNS_TIMEOUT_MS = 2_000
