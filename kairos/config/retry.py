"""`retry` on a route (kairos-rs names, plus the aliases its docs used and Kairos's additions)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from kairos.config.base import Bool, ConfigModel, Float, NonNegativeInt, PositiveInt, StatusCode


class RetryConfig(ConfigModel):
    max_retries: NonNegativeInt = Field(3, le=10)
    initial_backoff_ms: NonNegativeInt = Field(
        100, validation_alias=AliasChoices("initial_backoff_ms", "base_delay_ms")
    )
    max_backoff_ms: NonNegativeInt = Field(
        5000, validation_alias=AliasChoices("max_backoff_ms", "max_delay_ms")
    )
    backoff_multiplier: Float = Field(2.0, ge=1.0)
    retry_on_status_codes: tuple[StatusCode, ...] = Field(
        (502, 503, 504),
        validation_alias=AliasChoices("retry_on_status_codes", "retryable_status_codes"),
    )
    retry_on_connection_error: Bool = True
    jitter: Bool = True
    retry_non_idempotent: Bool = False
    per_try_timeout_ms: PositiveInt | None = None
    budget_percent: Float = Field(20.0, ge=0, le=100)
    max_replay_bytes: NonNegativeInt = 1024 * 1024

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryConfig:
        if self.initial_backoff_ms > self.max_backoff_ms:
            raise ValueError(
                f"initial_backoff_ms ({self.initial_backoff_ms}) cannot be greater than "
                f"max_backoff_ms ({self.max_backoff_ms})"
            )
        return self

    def backoff_ms(self, retry_number: int) -> int:
        """kairos-rs's formula: min(initial * multiplier^n, max), n counted from 0."""
        return int(min(self.initial_backoff_ms * self.backoff_multiplier**retry_number, self.max_backoff_ms))
