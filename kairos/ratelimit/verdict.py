"""What a store says about one request against one limit."""

from __future__ import annotations

from typing import NamedTuple


class Verdict(NamedTuple):
    """A tuple, not a dataclass: one is made per limit per request, and tuples are the cheapest.
    Build it with ``make_verdict`` on hot paths: NamedTuple's own ``__new__`` costs twice as much."""

    allowed: bool
    remaining: int  # requests still admitted after this one (0 when refused)
    reset: float  # seconds until the window ends / the bucket is full again
    retry_after: float  # seconds until a refused request could pass (0 when allowed)


_new = tuple.__new__


def make_verdict(allowed: bool, remaining: int, reset: float, retry_after: float) -> Verdict:
    return _new(Verdict, (allowed, remaining, reset, retry_after))
