"""`retry` on a route (kairos-rs names, plus the aliases its docs used and Kairos's additions)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from kairos.config.base import Bool, ConfigModel, Float, NonNegativeInt, PositiveInt, StatusCode


class RetryConfig(ConfigModel):
    """Retries of a route's failed attempts. Whatever the config: `POST` and `PATCH` are retried after
    they may have reached the upstream only with `retry_non_idempotent` or a client
    `Idempotency-Key`; nothing is retried once a response byte went to the client; each attempt goes
    to a backend the request has not tried yet when there is one; an upstream `Retry-After` is
    honoured (capped by `max_backoff_ms`); a retry that would not fit in the route's `timeout_ms` is
    not made. The wait before retry n is `min(initial_backoff_ms * backoff_multiplier^n,
    max_backoff_ms)`."""

    max_retries: NonNegativeInt = Field(3, le=10, description="Attempts after the first, at most 10.")
    initial_backoff_ms: NonNegativeInt = Field(
        100,
        validation_alias=AliasChoices("initial_backoff_ms", "base_delay_ms"),
        description="Wait before the first retry, in milliseconds. At most `max_backoff_ms`.",
    )
    max_backoff_ms: NonNegativeInt = Field(
        5000,
        validation_alias=AliasChoices("max_backoff_ms", "max_delay_ms"),
        description="Longest wait between two attempts, in milliseconds (an upstream `Retry-After` too).",
    )
    backoff_multiplier: Float = Field(
        2.0, ge=1.0, description="Factor by which the wait grows from one retry to the next (at least 1)."
    )
    retry_on_status_codes: tuple[StatusCode, ...] = Field(
        (502, 503, 504),
        validation_alias=AliasChoices("retry_on_status_codes", "retryable_status_codes"),
        description="Statuses worth another attempt: the upstream's, or the gateway's own 502 (connection "
        "reset, invalid response) and 504 (timeout) for an attempt.",
    )
    retry_on_connection_error: Bool = Field(
        True,
        description="Retry when the connection could not be made (nothing was sent, so any method).",
    )
    jitter: Bool = Field(
        True,
        description="Full jitter: wait a uniform random time between 0 and the computed backoff (spreads "
        "the retries of many clients).",
    )
    retry_non_idempotent: Bool = Field(
        False, description="Also retry `POST` and `PATCH` after they may have reached the upstream."
    )
    per_try_timeout_ms: PositiveInt | None = Field(
        None,
        description="Deadline of one attempt, in milliseconds; the route's `timeout_ms` still bounds all "
        "attempts together. Unset: only the route's `timeout_ms`.",
    )
    budget_percent: Float = Field(
        20.0,
        ge=0,
        le=100,
        description="Retries (except after connect failures) may be at most this share, in percent, of the "
        "route's requests in the last 10 s; 10 retries are always allowed.",
    )
    max_replay_bytes: NonNegativeInt = Field(
        1024 * 1024,
        description="Request bodies up to this many bytes are kept to be replayed; a larger body is sent "
        "once and its request never retried.",
    )

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
