"""The AI router's own state: the decision cache and the peak-EWMA latency estimates."""

from __future__ import annotations

from kairos.ai.cache import DecisionCache
from kairos.ai.latency import PeakEwma
from kairos.routing.backend import Backend, BackendState


def test_cache_expires_and_stays_bounded() -> None:
    cache = DecisionCache(max_entries=2)
    cache.put(("r", b"a"), 1, expires=10.0)
    assert cache.get(("r", b"a"), now=9.9) == 1
    assert cache.get(("r", b"a"), now=10.0) is None  # expired, and dropped
    cache.put(("r", b"a"), 0, 100.0)
    cache.put(("r", b"b"), 1, 100.0)
    assert cache.get(("r", b"a"), 1.0) == 0  # a is now the most recently used
    cache.put(("r", b"c"), 1, 100.0)
    assert cache.get(("r", b"b"), 1.0) is None and len(cache) == 2 and cache.evictions == 1


def test_peak_ewma_believes_a_slow_sample_at_once_and_recovers_gradually() -> None:
    ewma = PeakEwma()
    ewma.observe("b", 0.010, now=0.0)
    ewma.observe("b", 0.500, now=1.0)
    assert ewma.estimate("b", 1.0) == 0.5  # the peak
    ewma.observe("b", 0.010, now=1.1)  # a fast sample right after: mostly the old value
    assert 0.4 < (ewma.estimate("b", 1.1) or 0) < 0.5
    ewma.observe("b", 0.010, now=60.0)  # a fast sample long after: mostly the new one
    assert (ewma.estimate("b", 60.0) or 1) < 0.02


def backend(key: str) -> Backend:
    """A backend known by ``key`` alone (the estimates are keyed by it); the address is never used."""
    return Backend(
        index=0,
        key=key,
        scheme="http",
        host="127.0.0.1",
        port=9,
        weight=1,
        http2=False,
        health_check_path=None,
        http_base="http://127.0.0.1:9",
        ws_base="ws://127.0.0.1:9",
        state=BackendState(key),
    )


def test_pick_weighs_latency_by_load_and_explores_unsampled_backends() -> None:
    ewma = PeakEwma()
    fast, slow, fresh = backend("fast"), backend("slow"), backend("fresh")
    ewma.observe("fast", 0.010, 0.0)
    ewma.observe("slow", 0.100, 0.0)
    assert ewma.pick([fast, slow, fresh], 0.0) == 2  # never measured: tried first
    fresh.state.in_flight = 1
    assert ewma.pick([fast, slow, fresh], 0.0) == 0  # its one probe is in flight: wait for it
    fast.state.in_flight = 20  # 0.010 x 21 > 0.100 x 1
    assert ewma.pick([fast, slow, fresh], 0.0) == 1
