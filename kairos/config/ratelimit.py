"""`rate_limit`, global or per route, in both shapes kairos-rs users have.

kairos-rs's code reads ``{strategy, requests_per_window, window_duration, burst_allowance,
window_type, enable_redis, redis_key_prefix}`` with PascalCase enums; its README and
config_multi_protocol.json use ``{algorithm|strategy: "sliding_window", requests_per_second|
requests_per_minute, burst_size}``, which kairos-rs itself rejects. Both normalise to one model.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from kairos.config.base import Bool, ConfigModel, NonNegativeInt, PositiveInt, Str, also_spelled
from kairos.config.storage_uri import check_storage_uri, limits_storage, redacted, scheme_of

SimpleStrategy = Literal["PerIP", "PerUser", "PerRoute", "PerIPAndRoute", "PerUserAndRoute"]
WindowType = Literal["FixedWindow", "SlidingWindow", "TokenBucket"]

_WINDOW_NAMES = {
    "fixed_window": "FixedWindow",
    "sliding_window": "SlidingWindow",
    "token_bucket": "TokenBucket",
    "fixedwindow": "FixedWindow",
    "slidingwindow": "SlidingWindow",
    "tokenbucket": "TokenBucket",
}
# README shape: a quota per unit of time, as requests_per_window with window_duration in seconds.
_PER_UNIT = {"requests_per_second": 1, "requests_per_minute": 60, "requests_per_hour": 3600}
_STRATEGY_NAMES = {
    "perip": "PerIP",
    "per_ip": "PerIP",
    "peruser": "PerUser",
    "per_user": "PerUser",
    "perroute": "PerRoute",
    "per_route": "PerRoute",
    "peripandroute": "PerIPAndRoute",
    "per_ip_and_route": "PerIPAndRoute",
    "peruserandroute": "PerUserAndRoute",
    "per_user_and_route": "PerUserAndRoute",
}


_MEMCACHED_TTL = 30 * 86_400  # the longest relative expiry memcached takes (seconds)

# The snake_case spellings, listed in the schema beside the canonical names (any case is accepted).
_SNAKE_WINDOWS = tuple(name for name in _WINDOW_NAMES if "_" in name)
_SNAKE_STRATEGIES = tuple(name for name in _STRATEGY_NAMES if "_" in name)


class CompositeStrategy(ConfigModel):
    """`{"Composite": [limit, ...]}` as a `strategy`: every listed limit applies, each with its own
    strategy and numbers; a request is admitted only if all of them admit it, and only then counted."""

    composite: tuple[RateLimitConfig, ...] = Field(
        alias="Composite",
        description="The limits, at least one; each is a rate limit of its own (not another Composite).",
    )

    @field_validator("composite")
    @classmethod
    def _not_empty(cls, limits: tuple[RateLimitConfig, ...]) -> tuple[RateLimitConfig, ...]:
        # Checked after the items (a Field min_length would call [{bad}] "empty" as well).
        if not limits:
            raise ValueError("must list at least one rate limit")
        if any(isinstance(limit.strategy, CompositeStrategy) for limit in limits):
            raise ValueError("a Composite limit cannot contain another Composite")
        return limits


class RateLimitConfig(ConfigModel):
    """A rate limit, top level (every route) or per route (replacing the top-level one there). Both
    kairos-rs shapes are accepted: `requests_per_window` + `window_duration` (+ `burst_allowance`),
    or the README's `requests_per_second`, `_minute` or `_hour` (+ `burst_size`, `algorithm`). Every
    answer on a limited route carries `X-RateLimit-*` and `RateLimit-Policy`/`RateLimit` headers; a
    refused request gets 429 `rate_limit_error` with `Retry-After`. Only admitted requests count."""

    input_optional = ("requests_per_window", "window_duration")
    input_keys = {
        **{
            key: {
                "type": "integer",
                "minimum": 1,
                "description": f"README shape: the quota per {seconds} s, i.e. `requests_per_window` with "
                f"`window_duration: {seconds}`.",
            }
            for key, seconds in _PER_UNIT.items()
        },
        "algorithm": {
            "type": "string",
            "enum": [*get_args(WindowType), *_SNAKE_WINDOWS],
            "description": "README shape: the same as `window_type` (any case).",
        },
    }

    enabled: Bool = Field(
        True,
        description="`false` turns the limit off; on a route, it exempts the route from the top-level limit.",
    )
    strategy: SimpleStrategy | CompositeStrategy = Field(
        "PerIP",
        description="What is counted: `PerIP` the client IP (after `trusted_proxies`), `PerUser` the "
        "verified JWT `sub` or API-key consumer (anonymous requests by IP), `PerRoute` the route, "
        "`PerIPAndRoute`, `PerUserAndRoute`, or a Composite. snake_case and lower-case spellings "
        "(`per_ip`) are accepted; an algorithm name here (`sliding_window`) is read as `algorithm`.",
        json_schema_extra=also_spelled(*_SNAKE_STRATEGIES, *_SNAKE_WINDOWS),
    )
    # Required (a missing key is reported at its own path) but None when unused: see _readme_shape.
    requests_per_window: PositiveInt | None = Field(
        description="The quota: requests admitted per window. Required unless the README shape, a Composite "
        "strategy or `enabled: false` is used.",
    )
    window_duration: PositiveInt | None = Field(
        description="The window, in seconds. Required with `requests_per_window`."
    )
    burst_allowance: NonNegativeInt = Field(
        0,
        description="kairos-rs shape: extra requests on top of the quota (a window admits "
        "`requests_per_window + burst_allowance`; a token bucket holds that many). Not with `burst_size`.",
    )
    burst_size: PositiveInt | None = Field(
        None,
        description="README shape: the most requests admitted at once. A token bucket's capacity (refilled "
        "at the rate, as actix-governor and Go's x/time/rate read it); for the window algorithms the most "
        "a window admits, never below `requests_per_window`. Not with `burst_allowance`.",
    )
    window_type: WindowType = Field(
        "SlidingWindow",
        description="`FixedWindow` windows aligned to the clock; `SlidingWindow` a sliding-window counter "
        "(the previous window's count weighs in by the share of it still inside the window); "
        "`TokenBucket` starts full and refills at `requests_per_window / window_duration` per second.",
        json_schema_extra=also_spelled(*_SNAKE_WINDOWS),
    )
    enable_redis: Bool = Field(
        False,
        description="Keep the counters in Redis (`KAIROS_REDIS_URL`, default `redis://127.0.0.1:6379/0`), "
        "so replicas share one limit.",
    )
    redis_key_prefix: Str = Field("kairos_rl", min_length=1, description="Prefix of the keys in Redis.")
    storage_uri: Str | None = Field(
        None,
        description="Where this limit's counters live; wins over `enable_redis` and `KAIROS_REDIS_URL`. "
        "`memory://` (this process), Redis (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`, "
        "`redis+cluster://`: one Lua script per decision), or a storage of the `limits` library "
        "(`memcached://`, `mongodb://`, `valkey://`, or any of its `async+...://` schemes, "
        "`async+redis://` included), which takes `FixedWindow` and `SlidingWindow` but not "
        "`TokenBucket`. Unset: Redis when `enable_redis` or `KAIROS_REDIS_URL` says so, else memory.",
    )
    fail_closed: Bool = Field(
        False,
        description="While the shared store (Redis, memcached, ...) is unreachable: `false` admits "
        "requests, `true` answers 503 `rate_limit_unavailable`.",
    )

    @field_validator("storage_uri")
    @classmethod
    def _storage_scheme(cls, uri: str | None) -> str | None:
        return None if uri is None else check_storage_uri(uri, with_limits=True)

    @model_validator(mode="after")
    def _numbers_present(self) -> RateLimitConfig:
        if self.burst_size is not None and self.burst_allowance:
            raise ValueError(
                "set burst_size (the most admitted at once) or burst_allowance (added to the quota), not both"
            )
        self._limits_algorithms()
        if not self.enabled or isinstance(self.strategy, CompositeStrategy):
            return self
        if self.requests_per_window is None or self.window_duration is None:
            raise ValueError("requests_per_window and window_duration must be numbers")
        return self

    def _limits_algorithms(self) -> None:
        """A storage of the ``limits`` library runs limits' own strategies: fixed window and
        sliding-window counter. It has no token bucket, so one is refused here rather than
        enforced as something else. memcached reads an expiry above 30 days as a date in 1970 (its
        protocol), so a key meant to last longer would vanish at once and never limit anything: a
        window whose keys would outlive that is refused too."""
        storage = limits_storage(self.storage_uri)
        if not self.enabled or storage is None:
            return
        assert self.storage_uri is not None
        where = f"storage_uri {redacted(self.storage_uri)!r}"
        if isinstance(self.strategy, CompositeStrategy):
            named = [(f"strategy.Composite[{n}].", part) for n, part in enumerate(self.strategy.composite)]
        else:
            named = [("", self)]
        for field, limit in named:
            if limit.window_type == "TokenBucket":
                raise ValueError(
                    f"{field}window_type: TokenBucket has no counterpart among the strategies of the limits "
                    f"library, which {where} uses: use FixedWindow or SlidingWindow, or a memory:// or "
                    "Redis storage_uri"
                )
            lives = 2 if limit.window_type == "SlidingWindow" else 1  # a sliding window keeps two windows
            if storage.scheme == "async+memcached" and (limit.window_duration or 0) * lives > _MEMCACHED_TTL:
                raise ValueError(
                    f"{field}window_duration: {limit.window_duration} s is too long for memcached ({where}), "
                    f"whose keys cannot be kept more than 30 days: a {limit.window_type} keeps "
                    f"{lives} window(s), so at most {_MEMCACHED_TTL // lives} s"
                )

    @property
    def uses_redis(self) -> bool:
        """Whether this policy asks for a shared store itself (the process's KAIROS_REDIS_URL may too)."""
        if self.storage_uri is not None:
            return scheme_of(self.storage_uri) != "memory"
        return self.enable_redis

    @model_validator(mode="before")
    @classmethod
    def _readme_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        algorithm = data.pop("algorithm", None)
        strategy = data.get("strategy")
        if isinstance(strategy, str) and strategy.lower() in _WINDOW_NAMES:
            # config_multi_protocol.json puts the algorithm name in `strategy`.
            algorithm = algorithm or strategy
            data.pop("strategy")
        elif isinstance(strategy, str) and strategy.lower() in _STRATEGY_NAMES:
            data["strategy"] = _STRATEGY_NAMES[strategy.lower()]
        if isinstance(algorithm, str):
            data.setdefault("window_type", _WINDOW_NAMES.get(algorithm.lower(), algorithm))
        elif algorithm is not None:
            data.setdefault("window_type", algorithm)
        for key, seconds in _PER_UNIT.items():
            if key in data and "requests_per_window" not in data:
                data["requests_per_window"] = data.pop(key)
                data.setdefault("window_duration", seconds)
        if data.get("enabled") is False or (isinstance(strategy, dict) and "Composite" in strategy):
            data.setdefault("requests_per_window", None)
            data.setdefault("window_duration", None)
        window_type = data.get("window_type")
        if isinstance(window_type, str) and window_type.lower() in _WINDOW_NAMES:
            data["window_type"] = _WINDOW_NAMES[window_type.lower()]
        return data


CompositeStrategy.model_rebuild()
