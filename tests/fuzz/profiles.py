"""Hypothesis settings for the fuzz tests: one profile for every ``pytest`` run, one for long runs.

Why not ``settings.load_profile``: that changes the defaults of the whole session, so the other
Hypothesis users of the suite (schemathesis in tests/admin) would change with it. Each test here is
decorated with :func:`fuzz_settings` instead, which reads ``KAIROS_FUZZ_PROFILE`` (the harness sets
it to ``LONG``).

- ``CI`` (default): deterministic (``derandomize``: the same examples on every run and machine, so a
  red run is reproducible and a green one stays green), bounded (``max_examples`` per test keeps
  the whole directory well under a minute on 2 cores), no deadline (CI machines stall), no example
  database (nothing written next to the sources).
- ``LONG``: random, many examples; the harness calls the tests again and again until its time is
  up, so each call is a fresh random batch.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

CI = "kairos-fuzz-ci"
LONG = "kairos-fuzz-long"
ENV = "KAIROS_FUZZ_PROFILE"

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile(CI, max_examples=100, derandomize=True, **_COMMON)
settings.register_profile(LONG, max_examples=300, derandomize=False, **_COMMON)


def active_profile() -> str:
    return os.environ.get(ENV, CI)


def fuzz_settings(*, scale: float = 1.0) -> settings:
    """The active profile; ``scale`` weights a test's share (an expensive target runs fewer
    examples, a cheap one more) without losing the profile's other choices."""
    base = settings.get_profile(active_profile())
    return settings(base, max_examples=max(1, round(base.max_examples * scale)))
