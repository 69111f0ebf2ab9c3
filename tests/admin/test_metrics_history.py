"""Metrics history: the bounded rings and sampler (in process), and /api/metrics/list and
/api/metrics/history through the real gateway under uvicorn, sampling every 0.2 s."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.observability.history import (
    MAX_POINTS,
    SERIES,
    MetricsHistory,
    Reading,
    Ring,
    rfc3339,
    to_micros,
)
from kairos.observability.requests import RequestTotals
from tests.processes import Server, backend, gateway_server, route

KAIROS_RS_SERIES = ["requests_total", "requests_error", "active_connections", "response_time_avg"]


# -- in process: rings, sampler, aggregation ---------------------------------------------------


class Clock:
    """A wall clock the test moves (the sampler's only input besides the counters)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Counters:
    """Cumulative request counters the test sets, read by the sampler like the gateway's."""

    def __init__(self) -> None:
        self.totals = RequestTotals()
        self.active = 0

    def read(self) -> Reading:
        t = self.totals
        copy = RequestTotals(
            t.requests, t.success, t.errors, t.http_4xx, t.http_5xx, t.timed, t.duration_seconds
        )
        return Reading(copy, self.active, websockets=0, upstream_errors=0, rate_limited=0)

    def add(self, ok: int, failed: int, seconds_each: float) -> None:
        t = self.totals
        t.requests += ok + failed
        t.success += ok
        t.errors += failed
        t.http_5xx += failed
        t.timed += ok + failed
        t.duration_seconds += (ok + failed) * seconds_each


def test_a_ring_keeps_the_newest_points_in_order_and_never_more_than_its_capacity() -> None:
    ring = Ring(5)
    for i in range(12):
        ring.append(i * 10, float(i))
    assert len(ring) == 5
    assert list(ring.between(0, 10_000)) == [(70, 7.0), (80, 8.0), (90, 9.0), (100, 10.0), (110, 11.0)]
    assert list(ring.between(80, 100)) == [(80, 8.0), (90, 9.0), (100, 10.0)]  # both ends inclusive
    ring.drop_before(95)
    assert [t for t, _ in ring.between(0, 10_000)] == [100, 110]
    ring.append(120, 12.0)
    ring.append(130, 13.0)
    assert [t for t, _ in ring.between(0, 10_000)] == [100, 110, 120, 130]
    assert ring.last() == (130, 13.0)
    ring.drop_before(10_000)
    assert len(ring) == 0 and ring.last() is None and list(ring.between(0, 10_000)) == []
    ring.append(20_000, 1.0)  # an emptied ring fills again
    assert list(ring.between(0, 30_000)) == [(20_000, 1.0)]


def test_a_ring_trimmed_while_still_growing_stays_in_order() -> None:
    ring = Ring(4)
    ring.append(1, 1.0)
    ring.append(2, 2.0)
    ring.drop_before(2)
    for t in (3, 4, 5, 6):
        ring.append(t, float(t))
    assert [t for t, _ in ring.between(0, 100)] == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        Ring(0)


def test_memory_is_bounded_whatever_the_uptime() -> None:
    """A year of 5 s samples keeps 10,000 points a series in 16 bytes a point, and allocates
    nothing more after the rings are full."""
    clock, counters = Clock(), Counters()
    history = MetricsHistory(counters.read, interval=5.0, clock=clock)
    history.baseline()

    def run(samples: int) -> None:
        for _ in range(samples):
            clock.now += 5.0
            counters.add(3, 1, 0.01)
            history.sample()

    run(MAX_POINTS + 500)  # every ring full
    for name, ring in history.series.items():
        assert len(ring) == MAX_POINTS, name
    full = history.nbytes
    assert full <= len(SERIES) * MAX_POINTS * 16 * 1.2  # 16 bytes a point (+ array growth slack)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(12_000)  # ~17 more hours of samples
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert history.nbytes == full
    assert grown < 64 * 1024, f"history grew by {grown} bytes after its rings were full"
    assert all(len(ring) == MAX_POINTS for ring in history.series.values())


def test_points_older_than_the_retention_are_dropped() -> None:
    clock, counters = Clock(), Counters()
    history = MetricsHistory(counters.read, interval=600.0, clock=clock)
    for _ in range(200):  # 200 samples 10 minutes apart = 33 h
        clock.now += 600
        history.sample()
    ring = history.series["requests_total"]
    assert len(ring) == 24 * 6 + 1  # 24 h of 10-minute samples, both ends included
    oldest = next(iter(ring.between(0, 2**62)))[0]
    assert oldest >= int((clock.now - 24 * 3600) * 1_000_000)


def test_response_time_avg_is_the_mean_of_the_last_interval_not_since_start() -> None:
    clock, counters = Clock(), Counters()
    history = MetricsHistory(counters.read, interval=5.0, clock=clock)
    history.baseline()
    counters.add(100, 0, 0.010)  # 100 requests of 10 ms
    clock.now += 5
    history.sample()
    counters.add(10, 10, 0.500)  # then 20 requests of 500 ms
    clock.now += 5
    history.sample()
    clock.now += 5
    history.sample()  # an idle interval: no average point
    start, end = 0, 2**62
    averages = [p["value"]["value"] for p in history.points("response_time_avg", start, end)]
    assert averages == pytest.approx([10.0, 500.0])  # the all-time mean would say 90 ms
    rates = [p["value"]["value"] for p in history.points("requests_per_second", start, end)]
    assert rates == pytest.approx([20.0, 4.0, 0.0])
    totals = history.points("requests_total", start, end)
    assert [p["value"] for p in totals] == [{"type": "Counter", "value": n} for n in (100, 120, 120)]
    errors = history.points("requests_error", start, end)
    assert [p["value"]["value"] for p in errors] == [0, 10, 10]
    assert history.points("nope", start, end) == []


def test_aggregation_windows_start_at_start_skip_empty_windows_and_drop_the_partial_last_one() -> None:
    clock, counters = Clock(1_800_000_000.0), Counters()
    history = MetricsHistory(counters.read, interval=10.0, clock=clock)
    start = to_micros(datetime.fromtimestamp(clock.now, UTC))
    # Points at +10 s .. +50 s (window 0), none in window 1, +130 .. +170 s (window 2), +190 s (window 3).
    for offset in (10, 20, 30, 40, 50, 130, 150, 170, 190):
        clock.now = 1_800_000_000.0 + offset
        counters.add(offset, 0, 0.001)
        history.sample()
    end = start + 210 * 1_000_000  # window 3 would end at +240 s, past the end: dropped
    windows = history.aggregate("requests_total", start, end, 60)
    assert [w["start_time"] for w in windows] == [rfc3339(start), rfc3339(start + 120_000_000)]
    assert [w["end_time"] for w in windows] == [rfc3339(start + 60_000_000), rfc3339(start + 180_000_000)]
    first, second = windows
    values = [p["value"]["value"] for p in history.points("requests_total", start, end)]
    assert first == {
        "start_time": rfc3339(start),
        "end_time": rfc3339(start + 60_000_000),
        "count": 5,
        "sum": float(sum(values[:5])),
        "min": float(values[0]),
        "max": float(values[4]),
        "avg": sum(values[:5]) / 5,
    }
    assert second["count"] == 3 and second["min"] == values[5] and second["max"] == values[7]
    assert (
        history.aggregate("requests_total", start, start + 59 * 1_000_000, 60) == []
    )  # only a partial window
    assert history.aggregate("nope", start, end, 60) == []
    # A range of centuries is one pass over the points, not one step per window.
    began = time.perf_counter()
    assert len(history.aggregate("requests_total", 0, 2**62, 60)) >= 3
    assert time.perf_counter() - began < 5


def test_timestamps_round_trip_exactly() -> None:
    moment = to_micros(datetime(2026, 11, 24, 6, 0, 0, 123456, tzinfo=UTC))
    text = rfc3339(moment)
    assert text == "2026-11-24T06:00:00.123456Z"
    assert to_micros(datetime.fromisoformat(text)) == moment


# -- through the real gateway ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {"version": 1, "routers": [route("/items/{id}", "/echo/items/{id}", [backend(upstream)])]}
    env = {"KAIROS_METRICS_HISTORY_INTERVAL": "0.2"}
    with gateway_server(module_tmp, config, env=env) as server:
        yield server


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def history(client: httpx.Client, **params: str) -> Any:
    response = client.get("/api/metrics/history", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_total(client: httpx.Client, at_least: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The requests_total points, once the sampler has recorded ``at_least`` requests."""
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.now(UTC)
        points = history(client, name="requests_total", start=iso(now - timedelta(hours=1)), end=iso(now))
        if points and points[-1]["value"]["value"] >= at_least:
            return list(points)
        assert time.monotonic() < deadline, f"requests_total never reached {at_least}: {points[-3:]}"
        time.sleep(0.1)


def test_list_names_the_kairos_rs_series_and_ours(client: httpx.Client) -> None:
    response = client.get("/api/metrics/list")
    assert response.status_code == 200
    names = response.json()
    assert names[:4] == KAIROS_RS_SERIES
    assert set(names) == set(SERIES)


def test_history_fills_from_real_traffic_and_answers_kairos_rs_shapes(client: httpx.Client) -> None:
    for i in range(6):
        assert client.get(f"/items/{i}").status_code == 200
    assert client.get("/nowhere").status_code == 404
    points = wait_for_total(client, 7)
    for point in points:
        assert set(point) == {"timestamp", "value"}
        assert point["value"]["type"] == "Counter" and isinstance(point["value"]["value"], int)
        assert datetime.fromisoformat(point["timestamp"]).tzinfo is not None
    values = [p["value"]["value"] for p in points]
    assert values == sorted(values) and values[-1] == 7  # the admin calls themselves are not counted
    stamps = [p["timestamp"] for p in points]
    assert stamps == sorted(stamps)

    now = datetime.now(UTC)
    hour = {"start": iso(now - timedelta(hours=1)), "end": iso(now)}
    errors = history(client, name="requests_error", **hour)
    assert errors[-1]["value"] == {"type": "Counter", "value": 1}  # the 404
    gauges = history(client, name="active_connections", **hour)
    assert gauges and all(p["value"]["type"] == "Gauge" for p in gauges)
    averages = history(client, name="response_time_avg", **hour)
    assert averages and all(p["value"]["value"] > 0 for p in averages)  # only intervals with requests

    # A point's own timestamp, given back as start and end, selects exactly that point.
    one = history(client, name="requests_total", start=stamps[-1], end=stamps[-1])
    assert one == [points[-1]]
    assert history(client, name="no_such_series", **hour) == []


def test_history_with_an_interval_answers_windows(client: httpx.Client) -> None:
    points = wait_for_total(client, 1)
    # Not rounded down to the second: right after startup every point may lie in the current second,
    # which would then fall in the trailing partial window (dropped).
    now = datetime.now(UTC)
    start = now - timedelta(minutes=10)
    windows = history(
        client,
        name="requests_total",
        start=iso(start),
        end=iso(now + timedelta(seconds=1)),
        interval="one_minute",
    )
    assert windows, "the points of the last minute make one window"
    for window in windows:
        assert set(window) == {"start_time", "end_time", "count", "sum", "min", "max", "avg"}
        begin, end = datetime.fromisoformat(window["start_time"]), datetime.fromisoformat(window["end_time"])
        assert end - begin == timedelta(minutes=1) and (begin - start) % timedelta(minutes=1) == timedelta(0)
        assert window["min"] <= window["avg"] <= window["max"]
        assert window["avg"] == pytest.approx(window["sum"] / window["count"])
    last = windows[-1]
    inside = history(client, name="requests_total", start=last["start_time"], end=last["end_time"])
    inside = [p for p in inside if p["timestamp"] != last["end_time"]]  # windows exclude their end
    assert last["count"] == len(inside) and last["max"] == max(p["value"]["value"] for p in inside)
    assert points  # and a window shorter than the interval is dropped:
    short = {"start": iso(now - timedelta(seconds=30)), "end": iso(now)}
    assert history(client, name="requests_total", interval="one_minute", **short) == []
    for interval in ("five_minutes", "one_hour", "one_day"):
        assert isinstance(history(client, name="requests_total", interval=interval, **short), list)


def test_a_plus_sign_sent_unencoded_is_understood(client: httpx.Client) -> None:
    wait_for_total(client, 1)
    now = datetime.now(UTC)
    start = (now - timedelta(hours=1)).isoformat()  # ...+00:00
    end = now.isoformat()
    raw = f"/api/metrics/history?name=requests_total&start={start}&end={end}"  # "+" arrives as " "
    response = client.get(raw)
    assert response.status_code == 200, response.text
    assert response.json()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}, "`name`"),
        ({"name": "", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}, "`name`"),
        ({"name": "requests_total", "end": "2026-01-02T00:00:00Z"}, "`start`"),
        ({"name": "requests_total", "start": "2026-01-01T00:00:00Z"}, "`end`"),
        ({"name": "requests_total", "start": "yesterday", "end": "2026-01-02T00:00:00Z"}, "`start`"),
        (
            {"name": "requests_total", "start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"},
            "time zone",
        ),
        (
            {"name": "requests_total", "start": "2026-01-03T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
            "after `end`",
        ),
        (
            {
                "name": "requests_total",
                "start": "2026-01-01T00:00:00Z",
                "end": "2026-01-02T00:00:00Z",
                "interval": "one_week",
            },
            "`interval`",
        ),
    ],
)
def test_bad_parameters_get_a_400_naming_the_parameter(
    client: httpx.Client, params: dict[str, str], named: str
) -> None:
    response = client.get("/api/metrics/history", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "type", "timestamp", "request_id"}
    assert body["type"] == "bad_request" and named in body["error"]
    assert response.headers["x-request-id"] == body["request_id"]
