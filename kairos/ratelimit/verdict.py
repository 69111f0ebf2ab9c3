"""What a store says about one request against one limit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int  # requests still admitted after this one (0 when refused)
    reset: float  # seconds until the window ends / the bucket is full again
    retry_after: float  # seconds until a refused request could pass (0 when allowed)
