"""`rate_limit`, global or per route, in both shapes kairos-rs users have.

kairos-rs's code reads ``{strategy, requests_per_window, window_duration, burst_allowance,
window_type, enable_redis, redis_key_prefix}`` with PascalCase enums; its README and
config_multi_protocol.json use ``{algorithm|strategy: "sliding_window", requests_per_second|
requests_per_minute, burst_size}``, which kairos-rs itself rejects. Both normalise to one model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kairos.config.base import Bool, ConfigModel, NonNegativeInt, PositiveInt, Str

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


class CompositeStrategy(ConfigModel):
    composite: tuple[RateLimitConfig, ...] = Field(alias="Composite")

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
    """One policy. Kairos adds ``enabled`` (``false`` on a route exempts it from the global policy),
    ``storage_uri`` (``memory://`` or ``redis://…``; wins over ``enable_redis`` and
    ``KAIROS_REDIS_URL``) and ``fail_closed`` (reject instead of admit while the store is down).

    With a ``Composite`` strategy every listed limit applies with its own numbers; the outer
    ``requests_per_window``/``window_duration`` are then optional and unused.
    """

    enabled: Bool = True
    strategy: SimpleStrategy | CompositeStrategy = "PerIP"
    # Required (a missing key is reported at its own path) but None when unused: see _unused_numbers.
    requests_per_window: PositiveInt | None
    window_duration: PositiveInt | None = Field(description="seconds")
    burst_allowance: NonNegativeInt = Field(
        0,
        description="kairos-rs's shape: extra requests on top of the quota (a window admits "
        "requests_per_window + burst_allowance; a token bucket holds that many).",
    )
    burst_size: PositiveInt | None = Field(
        None,
        description="README shape: the most requests admitted at once. A token bucket's capacity "
        "(refilled at the rate, as actix-governor and Go's x/time/rate read it); for the window "
        "algorithms the most a window admits, never below requests_per_window.",
    )
    window_type: WindowType = "SlidingWindow"
    enable_redis: Bool = False
    redis_key_prefix: Str = Field("kairos_rl", min_length=1)
    storage_uri: Str | None = None
    fail_closed: Bool = False

    @field_validator("storage_uri")
    @classmethod
    def _storage_scheme(cls, uri: str | None) -> str | None:
        if uri is not None and not uri.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("must start with memory://, redis://, rediss:// or unix://")
        return uri

    @model_validator(mode="after")
    def _numbers_present(self) -> RateLimitConfig:
        if self.burst_size is not None and self.burst_allowance:
            raise ValueError(
                "set burst_size (the most admitted at once) or burst_allowance (added to the quota), not both"
            )
        if not self.enabled or isinstance(self.strategy, CompositeStrategy):
            return self
        if self.requests_per_window is None or self.window_duration is None:
            raise ValueError("requests_per_window and window_duration must be numbers")
        return self

    @property
    def uses_redis(self) -> bool:
        """Whether this policy asks for Redis itself (the process's KAIROS_REDIS_URL may too)."""
        if self.storage_uri is not None:
            return not self.storage_uri.startswith("memory://")
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
        for key, seconds in (
            ("requests_per_second", 1),
            ("requests_per_minute", 60),
            ("requests_per_hour", 3600),
        ):
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
