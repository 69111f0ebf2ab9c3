"""Every method of ``KairosClient`` and ``AsyncKairosClient`` (the ``flavour`` fixture runs each
test with both) against a real gateway and a real upstream on 127.0.0.1: what it returns, and that
what it changes is what the gateway then does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from kairos import __version__
from kairos.client import (
    AsyncKairosClient,
    Backends,
    Conflict,
    Explanation,
    HealthStatus,
    KairosClient,
    MetricPoint,
    MetricsSnapshot,
    NotFound,
    ReadyStatus,
    RouteConfig,
    RouteFigures,
    StreamEvent,
    ValidationFailed,
    histogram_quantile,
)
from tests.client.conftest import Flavour, Gateway
from tests.processes import Server, backend, route

HISTORY_SERIES = {
    "requests_total",
    "requests_error",
    "active_connections",
    "response_time_avg",
    "requests_success",
    "requests_per_second",
    "upstream_errors",
    "rate_limited",
    "websocket_connections",
}


def proxied(gateway: Gateway, path: str, method: str = "GET", **params: str) -> httpx.Response:
    """A request through the gateway (not the admin API)."""
    return httpx.request(method, f"{gateway.url}{path}", params=params, timeout=10)


def has_problem(problems: list[str], start: str) -> bool:
    """Whether a ``path: message`` problem starts so (messages end with what was given)."""
    return any(problem.startswith(start) for problem in problems)


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text
    return moment


def take(events: Iterator[StreamEvent], count: int) -> list[StreamEvent]:
    """The first ``count`` events of a stream (fewer if it ends), the stream closed after."""
    taken: list[StreamEvent] = []
    try:
        for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return taken


# -- the gateway -------------------------------------------------------------------------------


def test_health(kairos: KairosClient) -> None:
    health = kairos.health()
    assert isinstance(health, HealthStatus)
    assert health.status == "healthy"
    assert health.version == __version__
    assert health.admin_prefix == "/api"
    assert health.uptime is not None and health.uptime > 0
    parse_time(health.timestamp)


def test_ready(kairos: KairosClient) -> None:
    ready = kairos.ready()
    assert ready.status == "ready"
    assert ready.config_generation == kairos.config.status().generation
    assert ready.routes == len(kairos.routes.list())
    parse_time(ready.timestamp)


def test_metrics_per_route_figures_match_the_requests_sent(kairos: KairosClient, gateway: Gateway) -> None:
    before = {figures.route: figures for figures in kairos.metrics().routes()}
    for number in range(6):
        assert proxied(gateway, f"/fast/{number}").status_code == 200
    for _ in range(2):
        assert proxied(gateway, "/broken").status_code == 503
    for _ in range(3):
        assert proxied(gateway, "/slow", delay="0.12").status_code == 200
    assert proxied(gateway, "/no/route/here").status_code == 404
    snapshot = kairos.metrics()
    after = {figures.route: figures for figures in snapshot.routes()}

    def moved(name: str) -> tuple[int, int, int]:
        old = before.get(name, RouteFigures(name, 0, 0, 0, None, None))
        new = after[name]
        return (
            new.requests - old.requests,
            new.errors - old.errors,
            new.client_errors - old.client_errors,
        )

    assert moved("/fast/{id}") == (6, 0, 0)
    assert moved("/broken") == (2, 2, 0)
    assert moved("/slow") == (3, 0, 0)
    assert moved("(unmatched)") == (1, 0, 1)
    broken = after["/broken"]
    assert broken.error_rate == 1.0 and after["/fast/{id}"].error_rate == 0.0
    # The figures are the samples' own numbers.
    assert snapshot.total("kairos_requests_total", route="/fast/{id}") == after["/fast/{id}"].requests
    assert snapshot.value("kairos_requests_total", route="/broken", code="503") == broken.requests
    slow, fast = after["/slow"], after["/fast/{id}"]
    assert snapshot.total("kairos_request_duration_seconds_count", route="/slow") == slow.requests
    # Every /slow answer took at least 120 ms: its median lies in the (100 ms, ...] buckets.
    assert slow.p50_ms is not None and slow.p99_ms is not None
    assert 100 <= slow.p50_ms <= slow.p99_ms <= 2500, slow
    assert fast.p50_ms is not None and fast.p99_ms is not None
    assert fast.p50_ms <= fast.p99_ms and fast.p50_ms < slow.p50_ms, (fast, slow)
    assert snapshot.text.startswith("#") and "kairos_requests_total" in snapshot.text


def test_histogram_quantile_interpolates_like_promql() -> None:
    cumulative = [(0.1, 0.0), (0.25, 4.0), (float("inf"), 4.0)]
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.175)
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 2.0)]) == 0.1  # +Inf: the last bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_metric_names(kairos: KairosClient) -> None:
    names = kairos.metric_names()
    assert set(names) >= HISTORY_SERIES, names


def latest(points: list[MetricPoint]) -> float:
    return points[-1].value.value if points else 0.0


def test_metrics_history_records_the_requests(kairos: KairosClient, gateway: Gateway) -> None:
    before = latest(kairos.metrics_history("requests_total"))
    for number in range(5):
        assert proxied(gateway, f"/fast/h{number}").status_code == 200
    sent_at = datetime.now(UTC)

    def recorded(points: list[MetricPoint]) -> bool:
        return bool(points) and parse_time(points[-1].timestamp) > sent_at

    deadline = time.monotonic() + 15
    points = kairos.metrics_history("requests_total")
    while not recorded(points) and time.monotonic() < deadline:
        time.sleep(0.25)  # the gateway samples every second (KAIROS_METRICS_HISTORY_INTERVAL=1)
        points = kairos.metrics_history("requests_total")
    assert recorded(points), points[-3:]
    assert latest(points) >= before + 5, points[-3:]
    assert all(point.value.type == "Counter" for point in points)
    moments = [parse_time(point.timestamp) for point in points]
    assert moments == sorted(moments) and len(set(moments)) == len(moments)
    values = [point.value.value for point in points]
    assert values == sorted(values)  # a counter never goes down
    # Only the points inside the window asked for.
    early = kairos.metrics_history("requests_total", start=sent_at - timedelta(hours=1), end=sent_at)
    assert all(parse_time(point.timestamp) <= sent_at for point in early)
    assert len(early) < len(points)
    gauges = kairos.metrics_history("active_connections")
    assert gauges and {point.value.type for point in gauges} == {"Gauge"}


def test_metrics_windows_aggregate_the_last_minute(kairos: KairosClient) -> None:
    deadline = time.monotonic() + 10
    while not kairos.metrics_history("requests_total") and time.monotonic() < deadline:
        time.sleep(0.25)
    end = datetime.now(UTC)
    start = end - timedelta(seconds=60)
    windows = kairos.metrics_windows("requests_total", "one_minute", start=start, end=end)
    assert len(windows) == 1, windows  # [start, end) is exactly one complete minute
    window = windows[0]
    assert parse_time(window.start_time) == start
    assert parse_time(window.end_time) == start + timedelta(seconds=60)
    assert 1 <= window.count <= 61
    assert window.min <= window.avg <= window.max
    assert window.sum == pytest.approx(window.avg * window.count)
    # A window that would pass `end` is dropped: five minutes do not fit in one.
    assert kairos.metrics_windows("requests_total", "five_minutes", start=start, end=end) == []
    with pytest.raises(ValueError, match="interval"):
        kairos.metrics_windows("requests_total", "one_week")
    with pytest.raises(ValueError, match="time zone"):
        kairos.metrics_history("requests_total", start=datetime(2026, 1, 1))


def test_explain_a_matched_request(kairos: KairosClient, upstream: Server) -> None:
    explained = kairos.explain("get", "/users/42?expand=1")
    assert isinstance(explained, Explanation)
    assert explained.matched is True and explained.served_by == "proxy" and explained.status is None
    assert explained.request.method == "GET" and explained.request.path == "/users/42"
    assert explained.request.query == "expand=1" and explained.request.websocket is False
    assert explained.route is not None
    assert explained.route.external_path == "/users/{id}" and explained.route.protocol == "http"
    assert explained.params == {"id": "42"}
    assert [b.url for b in explained.backends] == [f"http://127.0.0.1:{upstream.port}/echo/users/42?expand=1"]
    assert explained.backends[0].available is True and explained.backends[0].circuit.state == "closed"
    assert explained.generation == kairos.config.status().generation


def test_explain_what_matches_nothing(kairos: KairosClient) -> None:
    missing = kairos.explain("GET", "/nothing/here")
    assert missing.matched is False and missing.served_by == "gateway"
    assert missing.status == 404 and missing.type == "route_not_found" and missing.route is None
    wrong_method = kairos.explain("DELETE", "/users/1")
    assert wrong_method.matched is False and wrong_method.status == 405
    assert wrong_method.allow is not None and "GET" in wrong_method.allow
    admin = kairos.explain("GET", "/api/routes")
    assert admin.matched is False and admin.served_by == "admin"


def test_explain_takes_the_host_and_upgrade_headers(kairos: KairosClient, upstream: Server) -> None:
    keyed = kairos.explain("GET", "/cached/7", headers={"Host": "api.example"})
    assert keyed.request.host == "api.example"
    assert keyed.policies["cache"]["purge_key_prefix"] == "api.example/cached/7"
    plain = kairos.explain("GET", "/cached/7")
    assert plain.request.host is None and "purge_key_prefix" not in plain.policies["cache"]

    upgrade = kairos.explain("GET", "/socket", headers={"upgrade": "WebSocket", "Connection": "Upgrade"})
    assert upgrade.request.websocket is True and upgrade.matched is True
    assert upgrade.route is not None and upgrade.route.protocol == "websocket"
    assert upgrade.backends[0].url == f"ws://127.0.0.1:{upstream.port}/ws"
    # Without the upgrade the same route takes it (no HTTP route there), as plain HTTP.
    without = kairos.explain("GET", "/socket")
    assert without.request.websocket is False
    assert without.backends[0].url == f"http://127.0.0.1:{upstream.port}/ws"


def test_backends(kairos: KairosClient, upstream: Server) -> None:
    answer = kairos.backends()
    assert isinstance(answer, Backends)
    assert answer.success is True and answer.generation == kairos.config.status().generation
    assert [b.key for b in answer.backends] == [f"http://127.0.0.1:{upstream.port}"]
    only = answer.backends[0]
    assert (only.scheme, only.host, only.port) == ("http", "127.0.0.1", upstream.port)
    assert only.healthy is True and only.circuit.state == "closed" and only.outlier.ejected is False
    assert {use.external_path for use in only.routes} == {r.external_path for r in kairos.routes.list()}


# -- routes ------------------------------------------------------------------------------------


def test_routes_list_and_documents(kairos: KairosClient, upstream: Server) -> None:
    listed = kairos.routes.list()
    assert all(isinstance(item, RouteConfig) for item in listed)
    assert [item.external_path for item in listed][:3] == ["/users/{id}", "/dup", "/dup"]
    users = listed[0]
    assert users.methods == ("GET",) and users.backends is not None
    assert users.backends[0].port == upstream.port
    documents = kairos.routes.list_documents()
    assert documents.success is True
    assert documents.generation == kairos.config.status().generation
    assert [document["external_path"] for document in documents.routes] == [
        item.external_path for item in listed
    ]
    assert [RouteConfig.model_validate(document) for document in documents.routes] == listed


def test_routes_get_by_external_path_and_selectors(kairos: KairosClient) -> None:
    users = kairos.routes.get("/users/{id}")
    assert isinstance(users, RouteConfig) and users.internal_path == "/echo/users/{id}"
    with pytest.raises(Conflict) as ambiguous:
        kairos.routes.get("/dup")
    assert ambiguous.value.status == 409 and "ambiguous" in ambiguous.value.message
    assert kairos.routes.get("/dup", method="POST").internal_path == "/echo/dup-post"
    assert kairos.routes.get("/dup", method="get").internal_path == "/echo/dup-get"
    assert kairos.routes.get("/dup", index=2).internal_path == "/echo/dup-post"
    assert kairos.routes.get("/socket", protocol="websocket").protocol == "websocket"
    with pytest.raises(NotFound) as missing:
        kairos.routes.get("/not/a/route")
    assert missing.value.status == 404 and "/not/a/route" in missing.value.message
    with pytest.raises(ValueError, match="starts with '/'"):
        kairos.routes.get("users/{id}")


def test_routes_get_document(kairos: KairosClient, upstream: Server) -> None:
    users = kairos.routes.get_document("/users/{id}")
    assert users.success is True and users.index == 0
    assert users.route["internal_path"] == "/echo/users/{id}"
    assert users.route["backends"][0]["port"] == upstream.port
    assert RouteConfig.model_validate(users.route) == kairos.routes.get("/users/{id}")
    post = kairos.routes.get_document("/dup", method="POST")
    assert post.index == 2 and post.route["internal_path"] == "/echo/dup-post"
    with pytest.raises(NotFound):
        kairos.routes.get_document("/dup", protocol="websocket")


def test_routes_create_update_delete(kairos: KairosClient, flavour: Flavour, gateway: Gateway) -> None:
    path = f"/crud-{flavour.name}/{{id}}"
    generation = kairos.config.status().generation
    count = len(kairos.routes.list())
    created = kairos.routes.create(
        {
            "external_path": path,
            "internal_path": "/echo/first/{id}",
            "methods": ["GET"],
            "backends": [{"host": "http://127.0.0.1", "port": gateway_upstream_port(kairos)}],
        }
    )
    assert created.success is True and created.index == count
    assert created.generation is not None and created.generation > generation
    assert created.route["external_path"] == path
    assert proxied(gateway, f"/crud-{flavour.name}/7").json()["path"] == "/echo/first/7"

    with pytest.raises(Conflict, match="already exists"):
        kairos.routes.create(created.route)

    current = kairos.routes.get(path)
    assert current.internal_path == "/echo/first/{id}"
    updated = kairos.routes.update(current.model_copy(update={"internal_path": "/echo/second/{id}"}))
    assert updated.index == count and updated.generation == created.generation + 1
    assert kairos.routes.get(path).internal_path == "/echo/second/{id}"
    assert proxied(gateway, f"/crud-{flavour.name}/7").json()["path"] == "/echo/second/7"

    deleted = kairos.routes.delete(path)
    assert deleted.success is True and deleted.route["internal_path"] == "/echo/second/{id}"
    with pytest.raises(NotFound):
        kairos.routes.get(path)
    assert proxied(gateway, f"/crud-{flavour.name}/7").status_code == 404
    assert len(kairos.routes.list()) == count
    with pytest.raises(NotFound):
        kairos.routes.delete(path)


def gateway_upstream_port(kairos: KairosClient) -> int:
    backends = kairos.routes.get("/users/{id}").backends
    assert backends is not None
    return backends[0].port


def test_routes_create_from_a_route_config(kairos: KairosClient, flavour: Flavour, gateway: Gateway) -> None:
    path = f"/model-{flavour.name}"
    model = RouteConfig.model_validate(
        route(
            path,
            "/echo/from-model",
            [backend(gateway_upstream_port(kairos), weight=2)],
            methods=("GET", "POST"),
        )
    )
    created = kairos.routes.create(model)
    try:
        assert created.route["methods"] == ["GET", "POST"]
        assert kairos.routes.get(path) == model
        answer = proxied(gateway, path, "POST")
        assert answer.status_code == 200 and answer.json()["path"] == "/echo/from-model"
    finally:
        kairos.routes.delete(path)


def test_routes_update_picks_one_of_several_routes(kairos: KairosClient, gateway: Gateway) -> None:
    original = kairos.routes.get("/dup", method="POST")
    changed = original.model_copy(update={"internal_path": "/echo/dup-post-changed"})
    with pytest.raises(Conflict, match="ambiguous"):
        kairos.routes.update(changed)
    answer = kairos.routes.update(changed, method="POST")
    try:
        assert answer.index == 2
        assert proxied(gateway, "/dup", "POST").json()["path"] == "/echo/dup-post-changed"
        assert proxied(gateway, "/dup").json()["path"] == "/echo/dup-get"
    finally:
        kairos.routes.update(original, index=2)
    assert kairos.routes.get("/dup", method="POST") == original


def test_routes_validate_changes_nothing(kairos: KairosClient) -> None:
    generation = kairos.config.status().generation
    good = route("/validated", "/echo/v", [backend(gateway_upstream_port(kairos))])
    checked = kairos.routes.validate(good)
    assert checked.valid is True and checked.errors == [] and checked.error is None
    assert kairos.routes.validate(RouteConfig.model_validate(good)).valid is True
    bad = route("/validated", "/echo/v", [{"host": "http://127.0.0.1", "port": 70000}], methods=("GRAB",))
    refused = kairos.routes.validate(bad)
    assert refused.valid is False
    assert has_problem(refused.errors, "backends[0].port: must be between 1 and 65535"), refused.errors
    assert has_problem(refused.errors, "methods[0]: not an HTTP method"), refused.errors
    assert refused.error is not None and "backends[0].port" in refused.error
    assert kairos.config.status().generation == generation
    with pytest.raises(NotFound):
        kairos.routes.get("/validated")


def test_routes_replace_dry_run_stale_generation_and_validation(
    kairos: KairosClient, flavour: Flavour, gateway: Gateway
) -> None:
    documents = kairos.routes.list_documents()
    models = kairos.routes.list()
    generation = documents.generation
    extra_path = f"/replaced-{flavour.name}"
    extra = route(extra_path, "/echo/replaced", [backend(gateway_upstream_port(kairos))])
    wanted = [*documents.routes, extra]

    dry = kairos.routes.replace(wanted, generation=generation, dry_run=True)
    assert dry.dry_run is True and dry.routes == len(wanted) and dry.generation == generation
    assert kairos.routes.list_documents() == documents  # nothing changed
    assert proxied(gateway, extra_path).status_code == 404

    try:
        replaced = kairos.routes.replace(wanted, generation=generation)
        assert replaced.dry_run is False and replaced.routes == len(wanted)
        assert replaced.generation == generation + 1
        assert proxied(gateway, extra_path).json()["path"] == "/echo/replaced"
        after = kairos.routes.list_documents()
        assert after.routes == wanted and after.generation == replaced.generation

        with pytest.raises(Conflict) as stale:
            kairos.routes.replace(documents.routes, generation=generation)
        assert stale.value.status == 409 and f"generation {generation}" in stale.value.message
        assert kairos.routes.list_documents() == after

        broken = route("/broken-replace", "/echo/x", [{"host": "http://127.0.0.1", "port": 70000}])
        with pytest.raises(ValidationFailed) as invalid:
            kairos.routes.replace([*documents.routes, broken], generation=after.generation)
        problems = invalid.value.problems
        assert invalid.value.status == 400
        start = f"routers[{len(documents.routes)}].backends[0].port: must be between 1 and 65535"
        assert has_problem(problems, start), problems
        assert all(re.fullmatch(r"\S+: .+", problem) for problem in problems), problems
        assert kairos.routes.list_documents() == after
    finally:
        # Back as it was, sent as RouteConfig models this time.
        restored = kairos.routes.replace(
            [model for model in kairos.routes.list() if model.external_path != extra_path],
            generation=kairos.routes.list_documents().generation,
        )
    assert restored.routes == len(documents.routes)
    assert kairos.routes.list() == models
    assert proxied(gateway, extra_path).status_code == 404


def test_route_secrets_survive_a_get_then_update(
    kairos: KairosClient, flavour: Flavour, gateway: Gateway
) -> None:
    """The admin API shows secrets as "***" and keeps the running secret when "***" is sent back;
    ``routes.get`` then ``routes.update`` must send back what it was shown, not pydantic's
    ``SecretStr`` rendering ("**********"), which would replace the key with stars."""
    path = f"/secret-{flavour.name}"
    key = f"sk-route-fallback-key-{flavour.name}"
    document = route(
        path,
        "/echo/secret",
        [backend(gateway_upstream_port(kairos))],
        ai_policy={
            "enabled": False,
            "strategy": "latency_prediction",
            "fallback_providers": [{"provider": "openai", "model": "gpt-4o-mini", "api_key": key}],
        },
    )
    kairos.routes.create(document)
    try:
        shown = kairos.routes.list_documents().routes[-1]
        assert shown["ai_policy"]["fallback_providers"][0]["api_key"] == "***"
        kairos.routes.update(kairos.routes.get(path))
        saved = json.loads(gateway.config_file.read_text())
        [written] = [item for item in saved["routers"] if item["external_path"] == path]
        assert written["ai_policy"]["fallback_providers"][0]["api_key"] == key
    finally:
        kairos.routes.delete(path)


# -- config ------------------------------------------------------------------------------------


def test_config_get_and_status(kairos: KairosClient, gateway: Gateway) -> None:
    config = kairos.config.get()
    assert config["version"] == 1
    assert [item["external_path"] for item in config["routers"]] == [
        item.external_path for item in kairos.routes.list()
    ]
    status = kairos.config.status()
    assert status.success is True and status.version == status.generation >= 1
    assert status.config_file == str(gateway.config_file)
    assert status.routes == len(config["routers"])
    assert status.last_result in ("success", "failure")


def test_config_reload_and_a_broken_file(kairos: KairosClient, gateway: Gateway) -> None:
    text = gateway.config_file.read_text()
    before = kairos.config.status().generation
    reloaded = kairos.config.reload()
    assert reloaded.success is True and reloaded.generation == before + 1
    assert reloaded.last_trigger == "api" and reloaded.last_result == "success"

    broken = json.loads(text)
    broken["routers"][0]["backends"][0]["port"] = 70000
    try:
        gateway.config_file.write_text(json.dumps(broken))
        with pytest.raises(ValidationFailed) as failed:
            kairos.config.reload()
        assert failed.value.status == 422 and failed.value.type == "config"
        problems = failed.value.problems
        assert has_problem(problems, "routers[0].backends[0].port: must be between 1 and 65535"), problems
        assert "still serving generation" in failed.value.message
        # The old config keeps serving.
        assert proxied(gateway, "/users/5").json()["path"] == "/echo/users/5"
        status = kairos.config.status()
        assert status.generation == reloaded.generation and status.last_result == "failure"
        assert status.last_errors == failed.value.problems
    finally:
        gateway.config_file.write_text(text)
    assert kairos.config.reload().generation == reloaded.generation + 1


# -- cache -------------------------------------------------------------------------------------


def test_cache_purge(kairos: KairosClient, flavour: Flavour, gateway: Gateway) -> None:
    path = f"/cached/{flavour.name}"
    assert proxied(gateway, path).headers["x-cache"] == "MISS"
    assert proxied(gateway, path).headers["x-cache"] == "HIT"
    by_route = kairos.cache.purge(route="/cached/{id}")
    assert by_route.success is True and by_route.purged == 1
    assert by_route.route == "/cached/{id}" and by_route.key_prefix is None and by_route.warning is None
    assert proxied(gateway, path).headers["x-cache"] == "MISS"
    by_prefix = kairos.cache.purge(key_prefix=f"127.0.0.1:{gateway.port}/cached/{flavour.name}")
    assert by_prefix.purged == 1
    assert proxied(gateway, path).headers["x-cache"] == "MISS"
    everything = kairos.cache.purge()
    assert everything.purged >= 1 and everything.seconds >= 0
    assert kairos.cache.purge().purged == 0
    unknown = kairos.cache.purge(route="/nope")
    assert unknown.purged == 0 and unknown.warning is not None and "/nope" in unknown.warning


# -- streams -----------------------------------------------------------------------------------


def test_stream_metrics_starts_with_a_snapshot(kairos: KairosClient) -> None:
    [first] = take(kairos.stream_metrics(), 1)
    assert first.type == "Snapshot"
    assert first.requests_total is not None and first.requests_total >= 0
    assert first.success_rate is not None


def test_stream_metrics_subscription_sends_the_history(kairos: KairosClient) -> None:
    events = take(kairos.stream_metrics({"metrics": ["requests_total"], "include_history": True}), 4)
    assert events[0].type == "Snapshot"
    series = [event for event in events if event.type == "TimeSeries"]
    assert series and series[0].metric_name == "requests_total"
    assert series[0].data_points is not None and series[0].data_points
    answered = take(kairos.stream_metrics({"interval_seconds": 0}), 3)
    errors = [event for event in answered if event.type == "Error"]
    assert errors and errors[0].message is not None and "interval_seconds" in errors[0].message


Answers = tuple[HealthStatus, ReadyStatus, list[RouteConfig], Backends, MetricsSnapshot]


def test_async_client_natively(gateway: Gateway) -> None:
    """The async client as asyncio code uses it: concurrent calls on one client, and the metrics
    stream read with ``async for``."""

    async def scenario() -> tuple[Answers, StreamEvent]:
        async with AsyncKairosClient(gateway.url) as kairos:
            answers = await asyncio.gather(
                kairos.health(), kairos.ready(), kairos.routes.list(), kairos.backends(), kairos.metrics()
            )
            stream = kairos.stream_metrics()
            async with contextlib.aclosing(stream), asyncio.timeout(15):
                async for event in stream:
                    return answers, event
        raise AssertionError("the stream ended before its first event")

    answers, event = asyncio.run(scenario())
    health, ready, listed, backends, metrics = answers
    assert health.status == "healthy" and ready.status == "ready"
    assert ready.routes == len(listed) and backends.success is True and metrics.samples
    assert event.type == "Snapshot"


def test_metrics_summary_counts_what_metrics_counts(kairos: KairosClient, gateway: Gateway) -> None:
    for number in range(4):
        assert proxied(gateway, f"/fast/s{number}").status_code == 200
    assert proxied(gateway, "/broken").status_code == 503
    summary = kairos.metrics_summary(top=50)
    snapshot = kairos.metrics()  # read right after: no request in between on this gateway's client
    figures = {f.route: f for f in snapshot.routes()}
    routes = {r.route: r for r in summary.routes}
    for name in ("/fast/{id}", "/broken"):
        assert (routes[name].requests, routes[name].errors) == (figures[name].requests, figures[name].errors)
        assert len(routes[name].buckets) == len(summary.bounds) + 1
        assert routes[name].buckets[-1] == routes[name].requests  # every proxied request timed
    assert summary.total_routes == len(figures)
    assert summary.requests >= sum(r.requests for r in summary.routes)
    assert [r.requests for r in summary.routes] == sorted((r.requests for r in summary.routes), reverse=True)
    assert len(kairos.metrics_summary(top=1).routes) == 1


def test_metrics_with_a_prefix_keeps_only_those_families(kairos: KairosClient, gateway: Gateway) -> None:
    only = kairos.metrics(prefix="kairos_config_")
    names = {sample.name for sample in only.samples}
    assert names and all(name.startswith("kairos_config_") for name in names)
    assert "kairos_requests_total" not in only.text  # filtered by the gateway, not only here
    raw = httpx.get(f"{gateway.url}/metrics", params={"prefix": "kairos_config_"}, timeout=10)
    assert "kairos_request_duration_seconds" not in raw.text and "kairos_config_generation" in raw.text
