"""Passive outlier ejection, driven by a controlled clock (plain floats, in seconds)."""

from __future__ import annotations

from typing import Any

from kairos.config.policies import PassiveHealthConfig
from kairos.resilience.outlier import OutlierDetector, may_eject


def config(**overrides: Any) -> PassiveHealthConfig:
    return PassiveHealthConfig.model_validate(overrides)


def fail(
    detector: OutlierDetector, cfg: PassiveHealthConfig, now: float, peers: list[OutlierDetector]
) -> bool:
    return detector.failure(cfg, now, peers)


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    cfg = config(consecutive_failures=3, base_ejection_ms=1000)
    a, b = OutlierDetector(), OutlierDetector()
    peers = [a, b]
    assert not fail(a, cfg, 0.0, peers)
    assert not fail(a, cfg, 0.0, peers)
    a.success()
    assert not fail(a, cfg, 0.0, peers)
    assert not fail(a, cfg, 0.0, peers)
    assert fail(a, cfg, 0.0, peers)  # the third in a row
    assert a.ejected(0.0) and a.ejected(0.999) and not a.ejected(1.0)
    assert a.ejections == 1


def test_ejection_time_grows_with_times_ejected_up_to_the_cap() -> None:
    cfg = config(consecutive_failures=1, base_ejection_ms=1000, max_ejection_ms=2500)
    a, b = OutlierDetector(), OutlierDetector()
    now = 0.0
    durations = []
    for _ in range(4):
        assert fail(a, cfg, now, [a, b])
        durations.append(a.ejected_until - now)
        now = a.ejected_until  # fails again the moment it is back
    assert durations == [1.0, 2.0, 2.5, 2.5]


def test_the_multiplier_decays_while_the_backend_is_in_service() -> None:
    cfg = config(consecutive_failures=1, base_ejection_ms=1000, max_ejection_ms=60000)
    a, b = OutlierDetector(), OutlierDetector()
    fail(a, cfg, 0.0, [a, b])  # 1 s
    fail(a, cfg, 1.0, [a, b])  # 2 s, until 3.0
    assert a.times_ejected == 2
    fail(a, cfg, 4.5, [a, b])  # 1.5 s in service: one step of decay, then the third ejection
    assert a.times_ejected == 2 and a.ejected_until == 6.5
    fail(a, cfg, 106.5, [a, b])  # long in service: back to the base time
    assert a.times_ejected == 1 and a.ejected_until == 107.5


def test_outcomes_while_ejected_change_nothing() -> None:
    cfg = config(consecutive_failures=2, base_ejection_ms=1000)
    a, b = OutlierDetector(), OutlierDetector()
    fail(a, cfg, 0.0, [a, b])
    fail(a, cfg, 0.0, [a, b])
    until = a.ejected_until
    for _ in range(5):  # panic-mode traffic failing on the ejected backend
        assert not fail(a, cfg, 0.5, [a, b])
    assert a.ejected_until == until and a.consecutive == 0


def test_max_ejection_percent_caps_ejections_and_never_ejects_the_last_backend() -> None:
    cfg = config(consecutive_failures=1, base_ejection_ms=1000, max_ejection_percent=50)
    four = [OutlierDetector() for _ in range(4)]
    assert [fail(d, cfg, 0.0, four) for d in four] == [True, True, False, False]  # 2 of 4
    one = [OutlierDetector()]
    assert not fail(one[0], cfg, 0.0, one)  # a single backend is never ejected
    everything = config(consecutive_failures=1, max_ejection_percent=100)
    two = [OutlierDetector(), OutlierDetector()]
    assert [fail(d, everything, 0.0, two) for d in two] == [True, False]  # 100%: all but one
    none = config(consecutive_failures=1, max_ejection_percent=0)
    pair = [OutlierDetector(), OutlierDetector()]
    assert not fail(pair[0], none, 0.0, pair)


def test_a_refused_ejection_is_tried_again_on_the_next_failure() -> None:
    cfg = config(consecutive_failures=3, base_ejection_ms=1000, max_ejection_percent=50)
    a, b = OutlierDetector(), OutlierDetector()
    for _ in range(3):
        fail(b, cfg, 0.0, [a, b])
    assert b.ejected(0.0)
    for _ in range(3):
        assert not fail(a, cfg, 0.5, [a, b])  # b is out: ejecting a would exceed 50%
    assert a.consecutive == 3
    assert fail(a, cfg, 1.0, [a, b])  # b is back: a single further failure ejects a


def test_may_eject_counts_a_shared_backend_once() -> None:
    cfg = config(max_ejection_percent=50)
    a, b = OutlierDetector(), OutlierDetector()
    assert may_eject(cfg, [a, b], 0.0)
    assert not may_eject(cfg, [a, a], 0.0)  # one backend listed twice is still one backend
