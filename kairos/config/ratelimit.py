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
        return limits


class RateLimitConfig(ConfigModel):
    strategy: SimpleStrategy | CompositeStrategy = "PerIP"
    requests_per_window: PositiveInt
    window_duration: PositiveInt = Field(description="seconds")
    burst_allowance: NonNegativeInt = 0
    window_type: WindowType = "SlidingWindow"
    enable_redis: Bool = False
    redis_key_prefix: Str = "kairos_rl"

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
        if "burst_size" in data and "burst_allowance" not in data:
            data["burst_allowance"] = data.pop("burst_size")
        window_type = data.get("window_type")
        if isinstance(window_type, str) and window_type.lower() in _WINDOW_NAMES:
            data["window_type"] = _WINDOW_NAMES[window_type.lower()]
        return data


CompositeStrategy.model_rebuild()
