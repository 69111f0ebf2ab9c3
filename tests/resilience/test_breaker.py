"""The circuit breaker's state machine, driven by a controlled clock (plain floats, in seconds)."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config.policies import CircuitBreakerConfig
from kairos.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, FailureWindow


def config(**overrides: Any) -> CircuitBreakerConfig:
    return CircuitBreakerConfig.model_validate(overrides)


def call(breaker: CircuitBreaker, cfg: CircuitBreakerConfig, now: float, failed: bool) -> bool:
    """One call as the middleware makes it; False when the breaker refused it."""
    if breaker.blocks(now):
        return False
    ticket = breaker.acquire(cfg, now)
    breaker.record(cfg, failed, now, ticket)
    return True


def trip(breaker: CircuitBreaker, cfg: CircuitBreakerConfig, now: float = 0.0) -> None:
    for _ in range(cfg.failure_threshold):
        assert call(breaker, cfg, now, failed=True)
    assert breaker.state == OPEN


def test_defaults_match_the_documented_ones() -> None:
    cfg = CircuitBreakerConfig()
    assert (cfg.failure_threshold, cfg.success_threshold, cfg.reset_timeout_ms) == (5, 3, 30000)
    assert cfg.half_open_max_calls == 1
    assert cfg.failure_status_codes == (500, 502, 503, 504)
    assert cfg.failure_rate_threshold is None


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=3)
    for _ in range(5):  # two failures, a success: never three in a row
        assert call(breaker, cfg, 0.0, failed=True)
        assert call(breaker, cfg, 0.0, failed=True)
        assert call(breaker, cfg, 0.0, failed=False)
    assert breaker.state == CLOSED and not breaker.blocks(0.0)
    for _ in range(3):
        assert call(breaker, cfg, 1.0, failed=True)
    assert breaker.state == OPEN
    assert breaker.opened == 1


def test_open_blocks_until_the_reset_timeout_and_reports_the_wait() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=2, reset_timeout_ms=500)
    trip(breaker, cfg, now=10.0)
    assert breaker.blocks(10.0) and breaker.blocks(10.499)
    assert breaker.retry_after(10.1) == pytest.approx(0.4)
    assert breaker.state_at(10.4) == OPEN
    assert not breaker.blocks(10.5)
    assert breaker.retry_after(10.5) == 0.0
    assert breaker.state_at(10.5) == HALF_OPEN  # as an observer (metrics) sees it


def test_half_open_lets_exactly_max_calls_probes_through_at_a_time() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=1, reset_timeout_ms=100, half_open_max_calls=2)
    trip(breaker, cfg)
    first = breaker.acquire(cfg, 0.2)
    assert breaker.state == HALF_OPEN and first is not None
    assert not breaker.blocks(0.2)
    second = breaker.acquire(cfg, 0.2)
    assert breaker.blocks(0.2)  # both slots taken
    assert breaker.retry_after(0.2) == 0.0
    breaker.record(cfg, False, 0.3, first)
    assert not breaker.blocks(0.3)  # a slot is free again
    breaker.release(second)  # ended without an outcome (the client left): slot given back
    assert breaker.probes == 0


def test_success_threshold_probe_successes_close_it() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=1, success_threshold=3, reset_timeout_ms=100)
    trip(breaker, cfg)
    for n in range(3):
        assert breaker.state in (OPEN, HALF_OPEN)
        assert call(breaker, cfg, 0.2 + n, failed=False)
    assert breaker.state == CLOSED and breaker.failures == 0
    assert call(breaker, cfg, 5.0, failed=True)  # a fresh count after closing
    assert breaker.state == OPEN


def test_a_failed_probe_reopens_for_another_reset_timeout() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=1, success_threshold=2, reset_timeout_ms=1000)
    trip(breaker, cfg)
    assert call(breaker, cfg, 1.0, failed=False)  # one good probe...
    assert call(breaker, cfg, 1.5, failed=True)  # ...then a bad one
    assert breaker.state == OPEN
    assert breaker.blocks(2.4) and not breaker.blocks(2.5)
    assert breaker.retry_after(2.0) == pytest.approx(0.5)
    assert breaker.opened == 2
    assert call(breaker, cfg, 2.5, failed=False)
    assert breaker.state == HALF_OPEN and breaker.successes == 1  # the count started over


def test_outcomes_of_calls_from_before_the_circuit_opened_are_ignored() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=2, reset_timeout_ms=100)
    slow = breaker.acquire(cfg, 0.0)  # a slow call sent while closed
    assert slow is None
    trip(breaker, cfg)
    breaker.record(cfg, False, 0.05, slow)  # its success changes nothing while open
    assert breaker.state == OPEN
    probe = breaker.acquire(cfg, 0.2)
    breaker.record(cfg, False, 0.2, None)  # nor does a pre-open call ending in half-open
    assert breaker.successes == 0 and breaker.probes == 1
    breaker.record(cfg, True, 0.3, probe)  # the probe's failure re-opens
    assert breaker.state == OPEN
    breaker.release(probe)  # a stale ticket gives nothing back
    assert breaker.probes == 0


def test_a_stale_probe_of_an_earlier_half_open_period_is_ignored() -> None:
    breaker = CircuitBreaker()
    cfg = config(failure_threshold=1, reset_timeout_ms=100, half_open_max_calls=2, success_threshold=1)
    trip(breaker, cfg)
    first = breaker.acquire(cfg, 0.2)
    second = breaker.acquire(cfg, 0.2)
    breaker.record(cfg, True, 0.25, first)  # re-opens
    third = breaker.acquire(cfg, 0.4)  # next half-open period
    breaker.record(cfg, True, 0.45, second)  # late failure of the old period: ignored
    assert breaker.state == HALF_OPEN
    breaker.record(cfg, False, 0.5, third)
    assert breaker.state == CLOSED


def test_ratio_mode_needs_the_minimum_volume_then_opens_on_the_rate() -> None:
    breaker = CircuitBreaker()
    cfg = config(failure_rate_threshold=0.5, window_ms=1000, minimum_requests=10, failure_threshold=1)
    for _ in range(6):  # 6 failures but only 6 requests: below the minimum volume
        assert call(breaker, cfg, 0.0, failed=True)
    assert breaker.state == CLOSED  # the ratio mode replaces the consecutive count
    for _ in range(3):
        assert call(breaker, cfg, 0.1, failed=False)
    assert breaker.state == CLOSED  # 6/9: still below the volume
    assert call(breaker, cfg, 0.2, failed=True)  # 7/10 >= 50%
    assert breaker.state == OPEN


def test_ratio_mode_forgets_outcomes_older_than_the_window() -> None:
    breaker = CircuitBreaker()
    cfg = config(failure_rate_threshold=0.5, window_ms=1000, minimum_requests=4)
    for _ in range(3):
        call(breaker, cfg, 0.0, failed=True)
    for _ in range(4):
        call(breaker, cfg, 1.5, failed=False)  # the failures are out of the window by now
    assert call(breaker, cfg, 1.6, failed=True)  # 1/5
    assert breaker.state == CLOSED
    for _ in range(3):
        call(breaker, cfg, 1.7, failed=True)  # 4/8 = 50%
    assert breaker.state == OPEN


def test_failure_window_counts_are_bounded_and_slide() -> None:
    window = FailureWindow(1.0)
    for step in range(1000):
        window.add(step * 0.01, failed=step % 2 == 0)
    assert 90 <= window.total <= 101  # ~ the last second, at 100 outcomes per second
    assert abs(window.failures - window.total / 2) <= 1
    window.expire(100.0)
    assert (window.total, window.failures) == (0, 0)


def test_config_changes_between_calls_apply_at_once() -> None:
    breaker = CircuitBreaker()
    call(breaker, config(failure_threshold=5), 0.0, failed=True)
    call(breaker, config(failure_threshold=5), 0.0, failed=True)
    call(breaker, config(failure_threshold=3), 0.0, failed=True)  # a reload lowered the threshold
    assert breaker.state == OPEN


def test_reset_closes_it() -> None:
    breaker, cfg = CircuitBreaker(), config(failure_threshold=1)
    trip(breaker, cfg)
    breaker.reset()
    assert breaker.state == CLOSED and not breaker.blocks(0.0)
