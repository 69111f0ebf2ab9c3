"""Compiled rate-limit policies: what is counted (the key) and how (the algorithm).

A ``RateLimitConfig`` compiles once into a ``Policy`` of one or more ``Limit``s (``Composite``
gives several). Each limit has a fingerprint of its numbers and algorithm that goes into its
storage key, so a changed policy never reads state written under other rules, and a scope:
``global`` for the top-level policy (PerIP then means one counter per client across every route
that uses it, as kairos-rs meant it) or the route's stable key for a route's own policy, so two
routes never share a counter by accident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from kairos.config.ratelimit import CompositeStrategy, RateLimitConfig

Algorithm = Literal["fixed", "sliding", "bucket"]

_ALGORITHMS: dict[str, Algorithm] = {
    "FixedWindow": "fixed",
    "SlidingWindow": "sliding",
    "TokenBucket": "bucket",
}
_MAX_SUBJECT = 128  # longer identities (e.g. an e-mail as sub) are hashed to keep keys bounded


@dataclass(frozen=True, slots=True)
class Limit:
    """One enforced limit. ``capacity`` is the most a window admits (fixed / sliding) or the bucket
    size (token bucket, refilled at ``requests_per_window / window_duration`` per second); see
    ``capacity_of`` for how the config's burst keys make it."""

    name: str  # the IETF RateLimit-Policy item name
    strategy: str  # PerIP, PerUser, PerRoute, PerIPAndRoute, PerUserAndRoute
    algorithm: Algorithm
    capacity: int
    window: float  # seconds
    refill_per_second: float
    fingerprint: str
    capacity_header: bytes = b""  # precomputed header pieces
    name_header: bytes = b""  # '"name";r=' of the RateLimit field

    @property
    def lifetime(self) -> float:
        """How long a key's state matters after its last admitted request."""
        if self.algorithm == "fixed":
            return self.window
        if self.algorithm == "sliding":
            return 2 * self.window
        return self.capacity / self.refill_per_second


@dataclass(frozen=True, slots=True)
class Policy:
    limits: tuple[Limit, ...]
    prefix: str
    wants_redis: bool
    storage_uri: str | None
    fail_closed: bool
    policy_header: bytes  # RateLimit-Policy, precomputed
    key_heads: tuple[str, ...]  # "prefix:fingerprint" per limit, precomputed

    def keys(self, scope_key: str, client_ip: str, user: str | None, route_key: str) -> list[str]:
        """One storage key per limit: ``prefix:fingerprint:scope:subject``."""
        tail = ":" + scope_key + ":"
        return [
            head + tail + subject(limit.strategy, client_ip, user, route_key)
            for head, limit in zip(self.key_heads, self.limits, strict=True)
        ]


def subject(strategy: str, client_ip: str, user: str | None, route_key: str) -> str:
    """Who a limit counts. Prefixes keep a user called "1.2.3.4" apart from the client at 1.2.3.4."""
    if strategy == "PerIP":
        return "ip=" + client_ip  # the common case first; an IP is always short
    who = (
        f"u={user}" if user is not None and strategy in ("PerUser", "PerUserAndRoute") else f"ip={client_ip}"
    )
    if strategy == "PerRoute":
        return "route=" + _bounded(route_key)
    if strategy in ("PerIPAndRoute", "PerUserAndRoute"):
        return _bounded(who) + "|route=" + _bounded(route_key)
    return _bounded(who)


def _bounded(text: str) -> str:
    if len(text) <= _MAX_SUBJECT:
        return text
    return "h=" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def compile_policy(config: RateLimitConfig) -> Policy:
    if isinstance(config.strategy, CompositeStrategy):
        parts = config.strategy.composite
        limits = tuple(
            _limit(part, f"{_strategy_name(part)}-{number}") for number, part in enumerate(parts, 1)
        )
    else:
        limits = (_limit(config, config.strategy.lower()),)
    header = ", ".join(f'"{limit.name}";q={limit.capacity};w={_seconds(limit.window)}' for limit in limits)
    return Policy(
        limits=limits,
        prefix=config.redis_key_prefix,
        wants_redis=config.uses_redis,
        storage_uri=config.storage_uri,
        fail_closed=config.fail_closed,
        policy_header=header.encode(),
        key_heads=tuple(f"{config.redis_key_prefix}:{limit.fingerprint}" for limit in limits),
    )


def _strategy_name(config: RateLimitConfig) -> str:
    return config.strategy.lower() if isinstance(config.strategy, str) else "composite"


def capacity_of(config: RateLimitConfig) -> int:
    """The most requests one key may have admitted at once.

    ``burst_size`` (the README shape) is that number itself: a token bucket's size, refilled at the
    rate, so ``requests_per_second: 2, burst_size: 3`` admits 3 at once and then 2 per second
    (actix-governor's and Go x/time/rate's reading); a window admits ``burst_size`` but never fewer
    than ``requests_per_window``. ``burst_allowance`` (kairos-rs's code shape) is added to the quota.
    """
    assert config.requests_per_window is not None  # validated
    if config.burst_size is not None:
        if config.window_type == "TokenBucket":
            return config.burst_size
        return max(config.requests_per_window, config.burst_size)
    return config.requests_per_window + config.burst_allowance


def _limit(config: RateLimitConfig, name: str) -> Limit:
    if isinstance(config.strategy, CompositeStrategy):
        raise ValueError("a Composite strategy cannot be nested inside another")
    assert config.requests_per_window is not None and config.window_duration is not None  # validated
    algorithm = _ALGORITHMS[config.window_type]
    capacity = capacity_of(config)
    window = float(config.window_duration)
    refill = config.requests_per_window / window
    fingerprint = hashlib.blake2b(
        f"{name}|{config.strategy}|{algorithm}|{capacity}|{window}|{refill}".encode(), digest_size=4
    ).hexdigest()
    return Limit(
        name,
        config.strategy,
        algorithm,
        capacity,
        window,
        refill,
        fingerprint,
        str(capacity).encode(),
        f'"{name}";r='.encode(),
    )


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"
