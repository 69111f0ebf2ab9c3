"""The shared answer models (kairos/api_models.py) parse exactly what the gateway sends: for each
endpoint, ``Model.model_validate(raw).model_dump(mode="json", exclude_unset=True) == raw``, on
raw answers read with plain httpx and websockets from the real gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from websockets.sync.client import connect

from kairos.api_models import (
    Backends,
    ConfigStatus,
    ErrorBody,
    Explanation,
    HealthStatus,
    MetricPoint,
    MetricWindow,
    PurgeResult,
    ReadyStatus,
    RouteAnswer,
    RouteList,
    RoutesReplaced,
    RouteValidation,
    StreamEvent,
)
from tests.client.conftest import Gateway
from tests.processes import Server, backend, route


def same(model: type[BaseModel], raw: Any) -> None:
    """The model reads ``raw`` and writes back exactly ``raw``: nothing lost, nothing added."""
    assert isinstance(raw, dict), raw
    assert model.model_validate(raw).model_dump(mode="json", exclude_unset=True) == raw


def body(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


def test_health_and_ready(http: httpx.Client) -> None:
    same(HealthStatus, body(http.get("/health")))
    same(ReadyStatus, body(http.get("/ready")))


def test_config_status_and_reload(http: httpx.Client, gateway: Gateway) -> None:
    same(ConfigStatus, body(http.get("/api/config/status")))
    same(ConfigStatus, body(http.post("/api/config/reload")))
    text = gateway.config_file.read_text()
    broken = json.loads(text)
    broken["routers"][0]["methods"] = ["GRAB"]
    try:
        gateway.config_file.write_text(json.dumps(broken))
        failed = body(http.post("/api/config/reload"), 422)
        assert failed["errors"]
        same(ConfigStatus, failed)
        same(ConfigStatus, body(http.get("/api/config/status")))
    finally:
        gateway.config_file.write_text(text)
    body(http.post("/api/config/reload"))


def test_route_answers(http: httpx.Client, upstream: Server) -> None:
    same(RouteList, body(http.get("/api/routes")))
    same(RouteAnswer, body(http.get("/api/routes/users/%7Bid%7D")))
    same(RouteAnswer, body(http.get("/api/routes/dup", params={"method": "POST"})))
    same(ErrorBody, body(http.get("/api/routes/dup"), 409))
    same(ErrorBody, body(http.get("/api/routes/not/there"), 404))

    scratch = route("/roundtrip/{id}", "/echo/rt/{id}", [backend(upstream)])
    created = body(http.post("/api/routes", json=scratch), 201)
    same(RouteAnswer, created)
    try:
        same(ErrorBody, body(http.post("/api/routes", json=scratch), 409))
        changed = {**scratch, "internal_path": "/echo/rt2/{id}"}
        same(RouteAnswer, body(http.put("/api/routes/roundtrip/%7Bid%7D", json=changed)))
        bad = {**scratch, "backends": [{"host": "http://127.0.0.1", "port": 0}]}
        refused = body(http.put("/api/routes/roundtrip/%7Bid%7D", json=bad), 400)
        assert refused["errors"]
        same(ErrorBody, refused)
    finally:
        same(RouteAnswer, body(http.delete("/api/routes/roundtrip/%7Bid%7D")))


def test_route_validation(http: httpx.Client, upstream: Server) -> None:
    good = route("/validated/{id}", "/echo/{id}", [backend(upstream)])
    valid = body(http.post("/api/routes/validate", json={"route": good}))
    assert valid["valid"] is True
    same(RouteValidation, valid)
    # Shadowing an admin section: valid, with a warning.
    shadow = route("/api/{*rest}", "/echo/{rest}", [backend(upstream)])
    warned = body(http.post("/api/routes/validate", json={"route": shadow}))
    assert warned["warnings"]
    same(RouteValidation, warned)
    bad = route("/validated/{id}", "/echo/{nope}", [{"host": "http://127.0.0.1", "port": 70000}])
    invalid = body(http.post("/api/routes/validate", json={"route": bad}))
    assert invalid["valid"] is False and len(invalid["errors"]) >= 2
    same(RouteValidation, invalid)
    same(RouteValidation, body(http.post("/api/routes/validate", json={"nope": 1})))


def test_whole_list_replace(http: httpx.Client, upstream: Server) -> None:
    listed = body(http.get("/api/routes"))
    payload = {"routes": listed["routes"], "generation": listed["generation"]}
    dry = body(http.put("/api/routes", params={"dry_run": "true"}, json=payload))
    assert dry["dry_run"] is True
    same(RoutesReplaced, dry)
    applied = body(http.put("/api/routes", json=payload))
    assert applied["generation"] == listed["generation"] + 1
    same(RoutesReplaced, applied)
    same(ErrorBody, body(http.put("/api/routes", json=payload), 409))  # that generation is gone
    bad = {"routes": [*listed["routes"], route("/x", "/y", [{"host": "http://127.0.0.1", "port": 0}])]}
    same(ErrorBody, body(http.put("/api/routes", json=bad), 400))
    same(ErrorBody, body(http.put("/api/routes", json={"routes": "all"}), 400))


@pytest.mark.parametrize(
    "params",
    [
        {"method": "GET", "path": "/users/42?expand=1"},
        {"method": "GET", "path": "/cached/7", "host": "api.example"},
        {"method": "GET", "path": "/socket", "websocket": "true"},
        {"method": "GET", "path": "/nothing/here"},
        {"method": "DELETE", "path": "/users/1"},
        {"method": "GET", "path": "/api/routes"},
        {"method": "GET", "path": "/health"},
        {"method": "POST", "path": "/dup"},
    ],
    ids=["matched", "host", "websocket", "404", "405", "admin", "builtin", "selected"],
)
def test_explain(http: httpx.Client, params: dict[str, str]) -> None:
    same(Explanation, body(http.get("/api/explain", params=params)))


def test_explain_refusal(http: httpx.Client) -> None:
    same(ErrorBody, body(http.get("/api/explain", params={"method": "GET"}), 400))


def test_backends(http: httpx.Client) -> None:
    answer = body(http.get("/api/backends"))
    assert answer["backends"]
    same(Backends, answer)


def test_cache_purge(http: httpx.Client) -> None:
    same(PurgeResult, body(http.post("/api/cache/purge")))
    same(PurgeResult, body(http.post("/api/cache/purge", json={"route": "/cached/{id}"})))
    warned = body(http.post("/api/cache/purge", json={"route": "/nope", "key_prefix": "x"}))
    assert warned["warning"]
    same(PurgeResult, warned)
    same(ErrorBody, body(http.post("/api/cache/purge", json={"rout": "/x"}), 400))


def test_metrics_history(http: httpx.Client) -> None:
    """History is sampled every second (KAIROS_METRICS_HISTORY_INTERVAL=1): after a proxied request
    of its own (the test may be the first of its package to run, under xdist), points come within a
    few samples."""
    assert http.get("/users/history").status_code == 200
    points: list[Any] = []
    windows: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (points and windows):
        time.sleep(0.5)
        end = datetime.now(UTC)
        window = {"start": (end - timedelta(seconds=60)).isoformat(), "end": end.isoformat()}
        points = body(http.get("/api/metrics/history", params={"name": "requests_total", **window}))
        windows = body(
            http.get(
                "/api/metrics/history",
                params={"name": "response_time_avg", "interval": "one_minute", **window},
            )
        )
    assert points
    for point in points:
        same(MetricPoint, point)
    assert windows
    for item in windows:
        same(MetricWindow, item)
    same(ErrorBody, body(http.get("/api/metrics/history", params={"name": "requests_total"}), 400))


def test_stream_events(gateway: Gateway) -> None:
    with connect(f"ws://127.0.0.1:{gateway.port}/ws/metrics", open_timeout=10, close_timeout=5) as stream:
        first = json.loads(stream.recv(timeout=10))
        assert first["type"] == "Snapshot"
        same(StreamEvent, first)
        stream.send(json.dumps({"metrics": ["requests_total"], "include_history": True}))
        seen: list[dict[str, Any]] = []
        while not any(event["type"] == "TimeSeries" for event in seen) and len(seen) < 5:
            seen.append(json.loads(stream.recv(timeout=10)))
        stream.send(json.dumps({"interval_seconds": -1}))
        while not any(event["type"] == "Error" for event in seen) and len(seen) < 10:
            seen.append(json.loads(stream.recv(timeout=10)))
    assert {"Snapshot", "TimeSeries", "Error"} <= {event["type"] for event in [first, *seen]}
    for event in seen:
        same(StreamEvent, event)


def test_guard_refusal(guarded: Gateway) -> None:
    refused = body(httpx.get(f"{guarded.url}/admin/routes", timeout=10), 401)
    same(ErrorBody, refused)
