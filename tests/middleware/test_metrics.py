"""MetricsMiddleware and RequestMetrics on their own: bucket math, labels, exposition validity."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.types import Message, Receive, Scope, Send

from kairos.errors import reject
from kairos.gateway import Gateway
from kairos.middleware.metrics import MetricsMiddleware
from kairos.observability.metrics import MetricsEndpoint
from kairos.observability.requests import BUCKETS, Histogram, RequestMetrics
from kairos.settings import load_settings


def test_a_value_on_a_bound_belongs_to_that_bucket_and_beyond_the_last_to_inf() -> None:
    histogram = Histogram()
    for value in (0.0, 0.0005, 0.0006, 0.001, 0.3, 10.0, 10.5, 99.0):
        histogram.observe(value)
    cumulative = dict(histogram.cumulative())
    assert list(cumulative) == [*(repr(bound) for bound in BUCKETS), "+Inf"]
    assert cumulative["0.0005"] == 2  # 0 and 0.0005 (le is inclusive)
    assert cumulative["0.001"] == 4
    assert cumulative["0.25"] == 4 and cumulative["0.5"] == 5
    assert cumulative["10.0"] == 6
    assert cumulative["+Inf"] == histogram.count == 8
    assert histogram.sum == pytest.approx(0.0005 + 0.0006 + 0.001 + 0.3 + 10 + 10.5 + 99)
    values = list(cumulative.values())
    assert values == sorted(values)  # cumulative: never decreasing


def test_record_keeps_counts_by_source_and_the_overhead_of_proxied_requests() -> None:
    metrics = RequestMetrics()
    metrics.record("/a", "GET", 200, "upstream", 0.010, 0.004)
    metrics.record("/a", "GET", 200, "upstream", 0.020, 0.015)
    metrics.record("/a", "GET", 404, "gateway", 0.001, None)
    metrics.record("/b", "POST", 502, "gateway", 0.002, None)
    assert list(metrics.requests_by_label()) == [
        (["/a", "GET", "404", "gateway"], 1),
        (["/a", "GET", "200", "upstream"], 2),
        (["/b", "POST", "502", "gateway"], 1),
    ]
    assert metrics.overhead.count == 2
    assert metrics.overhead.sum == pytest.approx(0.006 + 0.005)
    assert set(metrics.upstream_by_route()) == {"/a"}  # /b never reached an upstream


def scrape(gateway: Gateway) -> dict[str, list[Sample]]:
    text = generate_latest(MetricsEndpoint(gateway).registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_exposition_is_valid_and_histograms_are_consistent() -> None:
    gateway = Gateway(load_settings(), {"version": 1, "routers": []})
    metrics = gateway.request_metrics
    for seconds in (0.0002, 0.003, 0.04, 0.7, 12.0):
        metrics.record("/users/{id}", "GET", 200, "upstream", seconds, seconds / 2)
    metrics.record("/users/{id}", "PUT", 200, "upstream", 0.01, 0.002)
    metrics.record("(unmatched)", "GET", 404, "gateway", 0.0001, None)
    families = scrape(gateway)

    requests = {
        (s.labels["route"], s.labels["method"], s.labels["code"], s.labels["source"]): s.value
        for s in families["kairos_requests"]
    }
    assert requests[("/users/{id}", "GET", "200", "upstream")] == 5
    assert requests[("(unmatched)", "GET", "404", "gateway")] == 1
    assert [s.value for s in families["kairos_requests_in_flight"]] == [0]

    for name, expected_series in (
        ("kairos_request_duration_seconds", 3),
        ("kairos_upstream_duration_seconds", 1),
        ("kairos_overhead_duration_seconds", 1),
    ):
        samples = families[name]
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            entry = series.setdefault(labels, {"buckets": []})
            if sample.name.endswith("_bucket"):
                entry["buckets"].append((float(sample.labels["le"]), sample.value))
            else:
                entry[sample.name.rsplit("_", 1)[1]] = sample.value
        assert len(series) == expected_series, name
        for entry in series.values():
            bounds = [le for le, _ in entry["buckets"]]
            counts = [count for _, count in entry["buckets"]]
            assert bounds == sorted(bounds) and bounds[-1] == float("inf")
            assert counts == sorted(counts)  # cumulative
            assert counts[-1] == entry["count"]  # +Inf == _count
            assert "sum" in entry
    upstream = {s.name: s.value for s in families["kairos_upstream_duration_seconds"] if "le" not in s.labels}
    assert upstream["kairos_upstream_duration_seconds_count"] == 6  # GET and PUT merged per route
    assert upstream["kairos_upstream_duration_seconds_sum"] == pytest.approx(
        (0.0002 + 0.003 + 0.04 + 0.7 + 12.0) / 2 + 0.002
    )
    durations = [s for s in families["kairos_request_duration_seconds"] if s.labels.get("method") == "GET"]
    inf = [s.value for s in durations if s.labels.get("le") == "+Inf" and s.labels["route"] == "/users/{id}"]
    slow = [s.value for s in durations if s.labels.get("le") == "10.0" and s.labels["route"] == "/users/{id}"]
    assert inf == [5] and slow == [4]  # 12 s lands in +Inf only


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/refuse":
        await reject(scope, send, "authentication_error", "who are you", "rid-1")
        return
    if scope["path"] == "/silent":
        return  # e.g. the client left before anything was sent
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"made"})


def call(app: Any, method: str, path: str) -> None:
    """Raw ASGI (no client library): a silent app or an escaping exception is what it is."""
    scope = {"type": "http", "method": method, "path": path, "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    async def go() -> None:
        with contextlib.suppress(RuntimeError):  # /boom's exception escapes, as it would to a server
            await app(scope, receive, send)

    asyncio.run(go())


def test_standalone_labels_status_source_and_method() -> None:
    app = MetricsMiddleware(answer)
    call(app, "GET", "/ok")
    call(app, "BREW", "/ok")
    call(app, "POST", "/refuse")
    call(app, "GET", "/silent")
    call(app, "GET", "/boom")
    assert dict((tuple(labels), count) for labels, count in app.metrics.requests_by_label()) == {
        ("(unmatched)", "GET", "499", "gateway"): 1,
        ("(unmatched)", "GET", "500", "gateway"): 1,
        ("(unmatched)", "GET", "201", "upstream"): 1,
        ("(unmatched)", "OTHER", "201", "upstream"): 1,
        ("(unmatched)", "POST", "401", "gateway"): 1,
    }
    assert app.metrics.in_flight == 0
    assert sum(series.duration.count for series in app.metrics.series.values()) == 5
    assert app.metrics.overhead.count == 0  # no Exchange, no upstream time


def test_websocket_counts_the_upgrade_outcome_only() -> None:
    async def accept(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hi"})
        await send({"type": "websocket.close", "code": 1000})

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await reject(scope, send, "rate_limit_error", "slow down", "rid-2")

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    metrics = RequestMetrics()
    scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(MetricsMiddleware(accept, metrics)(dict(scope), receive, send))
    with_extension = {**scope, "extensions": {"websocket.http.response": {}}}
    asyncio.run(MetricsMiddleware(refuse, metrics)(with_extension, receive, send))
    asyncio.run(MetricsMiddleware(refuse, metrics)(dict(scope), receive, send))  # close before accept
    assert dict((tuple(labels), count) for labels, count in metrics.requests_by_label()) == {
        ("(unmatched)", "GET", "101", "upstream"): 1,
        ("(unmatched)", "GET", "429", "gateway"): 1,
        ("(unmatched)", "GET", "403", "gateway"): 1,
    }
    assert not any(series.duration.count for series in metrics.series.values())
