"""The RateLimiter: picks the store for a policy, asks it, and turns the verdicts into headers.

Owned by the Gateway (one per process, closed in the lifespan) or created by a standalone
``RateLimitMiddleware``. Policies compile once per distinct config. A policy uses Redis when its
``storage_uri`` says so, when it sets ``enable_redis``, or when the process has
``KAIROS_REDIS_URL``; ``storage_uri: "memory://"`` keeps one policy in process regardless. A
``storage_uri`` of the ``limits`` library (``memcached://``, ``async+redis://``...) goes to
``LimitsStore``, one per URI like the Redis stores.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from kairos.compiled import PerConfig
from kairos.config.ratelimit import RateLimitConfig
from kairos.config.storage_uri import limits_storage, scheme_of
from kairos.ratelimit.memory import MemoryStore
from kairos.ratelimit.policy import Limit, Policy, compile_policy, subject
from kairos.ratelimit.redis_store import RedisStore, StoreUnavailable
from kairos.ratelimit.verdict import Verdict

if TYPE_CHECKING:
    from kairos.ratelimit.limits_store import LimitsStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_admitted = tuple.__new__

Headers = list[tuple[bytes, bytes]]
Store: TypeAlias = "MemoryStore | RedisStore | LimitsStore"


class Decision(NamedTuple):
    allowed: bool
    headers: Headers  # X-RateLimit-*, RateLimit-Policy, RateLimit (and Retry-After when refused)
    message: str = ""  # why a request was refused
    unavailable: bool = False  # refused because the store is down and the policy fails closed


class RateLimiter:
    def __init__(self, redis_url: str | None = None, memory: MemoryStore | None = None) -> None:
        self.redis_url = redis_url
        self.memory = memory if memory is not None else MemoryStore()
        self._redis: dict[str, RedisStore] = {}
        self._limits: dict[str, LimitsStore] = {}
        self._policies: PerConfig[RateLimitConfig, tuple[Policy, Store]] = PerConfig(self._compile)
        self.rejected: Counter[str] = Counter()  # refusals per route template (counted by the middleware)
        self.admitted_without_store = 0  # fail-open decisions while a store was down

    def compile(self, config: RateLimitConfig) -> tuple[Policy, Store]:
        """The compiled policy and the store it uses, once per distinct config object."""
        return self._policies.get(config)

    def _compile(self, config: RateLimitConfig) -> tuple[Policy, Store]:
        policy = compile_policy(config)
        return policy, self.store_for(policy)

    def store_for(self, policy: Policy) -> Store:
        uri = policy.storage_uri
        if uri is None and (policy.wants_redis or self.redis_url):
            uri = self.redis_url or DEFAULT_REDIS_URL
        if uri is None or scheme_of(uri) == "memory":
            return self.memory
        if limits_storage(uri) is not None:
            shared = self._limits.get(uri)
            if shared is None:
                # Imported here: `limits` takes about 0.1 s to import, paid only by a config that uses it.
                from kairos.ratelimit.limits_store import LimitsStore

                shared = self._limits[uri] = LimitsStore(uri)
            return shared
        store = self._redis.get(uri)
        if store is None:
            store = self._redis[uri] = RedisStore(uri)
        return store

    @property
    def store_failures(self) -> int:
        return sum(store.failures for store in self._redis.values()) + sum(
            store.failures for store in self._limits.values()
        )

    def check_now(
        self, config: RateLimitConfig, scope_key: str, client_ip: str, user: str | None, route_key: str
    ) -> Decision | None:
        """The decision without awaiting, for a one-limit policy kept in memory (the hot path, kept
        flat); None when the policy needs ``check`` (Redis, Composite)."""
        policy, store = self.compile(config)
        if store is not self.memory or len(policy.limits) != 1:
            return None
        limit = policy.limits[0]
        key = (
            policy.key_heads[0] + ":" + scope_key + ":" + subject(limit.strategy, client_ip, user, route_key)
        )
        verdict = self.memory.acquire_one(key, limit)
        return _decision(policy, [verdict], verdict[0])

    async def check(
        self, config: RateLimitConfig, scope_key: str, client_ip: str, user: str | None, route_key: str
    ) -> Decision:
        decision = self.check_now(config, scope_key, client_ip, user, route_key)
        if decision is not None:
            return decision
        policy, store = self.compile(config)
        keys = policy.keys(scope_key, client_ip, user, route_key)
        try:
            verdicts = await store.acquire(keys, policy.limits)
        except StoreUnavailable:
            if policy.fail_closed:
                return Decision(False, [(b"retry-after", b"1")], "rate limit store is unavailable", True)
            self.admitted_without_store += 1
            return Decision(True, [])
        allowed = all(verdict.allowed for verdict in verdicts)
        return _decision(policy, verdicts, allowed)

    async def close(self) -> None:
        for store in self._redis.values():
            await store.close()
        self._redis.clear()
        for shared in self._limits.values():
            await shared.close()
        self._limits.clear()


def _decision(policy: Policy, verdicts: list[Verdict], allowed: bool) -> Decision:
    # Report the limit that binds: the one refusing for longest, else the one with least room left.
    if len(verdicts) == 1:
        limit, verdict = policy.limits[0], verdicts[0]
    elif allowed:
        limit, verdict = min(zip(policy.limits, verdicts, strict=True), key=lambda pair: pair[1].remaining)
    else:
        refusing = [pair for pair in zip(policy.limits, verdicts, strict=True) if not pair[1].allowed]
        limit, verdict = max(refusing, key=lambda pair: pair[1].retry_after)
    reset = b"%d" % math.ceil(verdict.reset)
    remaining = b"%d" % verdict.remaining
    headers: Headers = [
        (b"x-ratelimit-limit", limit.capacity_header),
        (b"x-ratelimit-remaining", remaining),
        (b"x-ratelimit-reset", reset),
        (b"ratelimit-policy", policy.policy_header),
        (b"ratelimit", limit.name_header + remaining + b";t=" + reset),
    ]
    if allowed:
        return _admitted(Decision, (True, headers, "", False))  # NamedTuple's own __new__ costs twice as much
    retry_after = max(1, math.ceil(verdict.retry_after))
    headers.append((b"retry-after", b"%d" % retry_after))
    return Decision(False, headers, _refusal(limit, retry_after))


def _refusal(limit: Limit, retry_after: int) -> str:
    if limit.algorithm == "bucket":
        rule = f"bucket of {limit.capacity}, refilled at {limit.refill_per_second:g}/s"
    else:
        rule = f"{limit.capacity} requests per {limit.window:g}s"
    return f"Rate limit exceeded ({limit.strategy}: {rule}); retry in {retry_after}s"
