"""The retry policy's pure rules: what may be retried, backoff, Retry-After, the budget."""

from __future__ import annotations

import pytest

from kairos.config.retry import RetryConfig
from kairos.resilience.retry import (
    FAILOVER_ONLY,
    MIN_RETRIES,
    RetryBudget,
    backoff_seconds,
    may_retry,
    parse_retry_after,
)

DEFAULT = RetryConfig()


@pytest.mark.parametrize(
    ("method", "key", "status", "failure", "expected"),
    [
        ("GET", False, 503, None, True),
        ("GET", False, 500, None, False),  # not in retry_on_status_codes by default
        ("GET", False, 504, "timeout", True),
        ("GET", False, 502, "error", True),
        ("DELETE", False, 502, None, True),
        ("POST", False, 503, None, False),  # may have reached the upstream: never duplicated
        ("POST", False, 504, "timeout", False),
        ("PATCH", False, 502, "error", False),
        ("POST", True, 503, None, True),  # the client made it safe with an Idempotency-Key
        ("POST", False, 502, "connect", True),  # nothing was sent
    ],
)
def test_what_may_be_retried(
    method: str, key: bool, status: int, failure: str | None, expected: bool
) -> None:
    assert may_retry(DEFAULT, method, key, status, failure) is expected


def test_retry_non_idempotent_and_connection_errors_are_configurable() -> None:
    assert may_retry(RetryConfig(retry_non_idempotent=True), "POST", False, 503, None)
    assert not may_retry(RetryConfig(retry_on_connection_error=False), "GET", False, 502, "connect")


def test_failover_only_retries_connect_errors() -> None:
    assert may_retry(FAILOVER_ONLY, "POST", False, 502, "connect")
    assert not may_retry(FAILOVER_ONLY, "GET", False, 503, None)
    assert not may_retry(FAILOVER_ONLY, "GET", False, 504, "timeout")


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    config = RetryConfig(initial_backoff_ms=100, max_backoff_ms=500, backoff_multiplier=2.0, jitter=False)
    assert [backoff_seconds(config, n, None) for n in range(4)] == [0.1, 0.2, 0.4, 0.5]
    jittered = RetryConfig(initial_backoff_ms=100, max_backoff_ms=500)
    assert backoff_seconds(jittered, 2, None, rand=lambda: 0.25) == pytest.approx(0.1)
    assert backoff_seconds(jittered, 2, None, rand=lambda: 0.0) == 0.0


def test_retry_after_is_honoured_up_to_max_backoff() -> None:
    config = RetryConfig(initial_backoff_ms=10, max_backoff_ms=2000, jitter=False)
    assert backoff_seconds(config, 0, 1.0) == 1.0
    assert backoff_seconds(config, 0, 30.0) == 2.0


def test_parse_retry_after() -> None:
    assert parse_retry_after(b"3") == 3.0
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after(b"soon") is None


def test_budget_allows_a_share_of_recent_requests() -> None:
    now = [1000.0]
    budget = RetryBudget(clock=lambda: now[0])
    for _ in range(200):
        budget.request()
    assert sum(budget.try_retry(20) for _ in range(60)) == 40
    now[0] += 5  # next half-window: the last one still counts
    assert not budget.try_retry(20)
    now[0] += 10  # both buckets aged out
    assert sum(budget.try_retry(20) for _ in range(10)) == MIN_RETRIES
