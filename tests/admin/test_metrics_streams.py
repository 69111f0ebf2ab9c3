"""/ws/metrics and /ws/admin/metrics through the real gateway under uvicorn, with the `websockets`
client: kairos-rs's event shapes, the subscription protocol and its validation, clean endings,
and the admin token (header or ?token=) checked before the upgrade is accepted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from kairos.admin.metrics_api import SEND_TIMEOUT_SECONDS, InvalidSubscription, parse_subscription
from kairos.observability.history import SERIES
from tests.processes import Server, backend, gateway_server, route, rss_bytes

TOKEN = "stream-test-token-0123456789"
SNAPSHOT_FIELDS = {
    "type",
    "timestamp",
    "requests_total",
    "requests_success",
    "requests_error",
    "active_connections",
    "avg_response_time",
    "success_rate",
}
ADMIN_FIELDS = {
    "requests_total",
    "active_connections",
    "requests_error",
    "success_rate",
    "uptime",
    "peak_connections",
}


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def open_stream(server: Server, path: str = "/ws/metrics", **kwargs: Any) -> ClientConnection:
    # With **kwargs (Any) both of connect's overloads can match, so mypy cannot pick the return type.
    stream: ClientConnection = connect(ws_url(server, path), proxy=None, open_timeout=10, **kwargs)
    return stream


def receive(stream: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(stream.recv(timeout=timeout))
    return event


def receive_until(stream: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next event of type ``kind``, skipping periodic Snapshots sent meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        event = receive(stream, max(0.1, deadline - time.monotonic()))
        if event["type"] == kind:
            return event
        assert event["type"] == "Snapshot", event
        assert time.monotonic() < deadline, f"no {kind} event within {timeout}s"


def admin_streams_open(client: httpx.Client) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return families["kairos_admin_streams"].samples[0].value


def wait_for_no_streams(client: httpx.Client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while admin_streams_open(client) != 0:
        assert time.monotonic() < deadline, "a stream outlived its client"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {"version": 1, "routers": [route("/items/{id}", "/echo/items/{id}", [backend(upstream)])]}
    env = {"KAIROS_METRICS_HISTORY_INTERVAL": "0.05"}  # history grows fast: big include_history answers
    with gateway_server(module_tmp, config, env=env) as server:
        yield server


# -- subscription parsing (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"interval_seconds": 0}', "`interval_seconds` must be greater than 0, got 0"),
        ('{"interval_seconds": -5}', "`interval_seconds` must be greater than 0"),
        ('{"interval_seconds": 0.01}', "`interval_seconds` must be at least 0.1"),
        ('{"interval_seconds": 86400}', "`interval_seconds` must be at most 3600"),
        ('{"interval_seconds": "5"}', "`interval_seconds` must be a number"),
        ('{"interval_seconds": true}', "`interval_seconds` must be a number"),
        ('{"interval_seconds": null}', "`interval_seconds` must be a number"),
        ('{"interval_seconds": NaN}', "`interval_seconds` must be a number"),
        ('{"metrics": "requests_total"}', "`metrics` must be an array"),
        ('{"metrics": [1]}', "`metrics[0]`"),
        ('{"metrics": ["requests_total", "cpu_usage"]}', "unknown metric 'cpu_usage'"),
        ('{"include_history": "yes"}', "`include_history` must be true or false"),
    ],
)
def test_invalid_subscriptions_name_the_field(message: str, named: str) -> None:
    with pytest.raises(InvalidSubscription, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_subscription(message, list(SERIES))


def test_subscription_defaults_and_extra_fields() -> None:
    parsed = parse_subscription('{"other": 1}', list(SERIES))
    assert (parsed.metrics, parsed.interval_seconds, parsed.include_history) == ((), 1.0, False)
    parsed = parse_subscription(
        '{"metrics": ["requests_total"], "interval_seconds": 2, "include_history": true}', list(SERIES)
    )
    assert (parsed.metrics, parsed.interval_seconds, parsed.include_history) == (
        ("requests_total",),
        2.0,
        True,
    )


# -- /ws/metrics -------------------------------------------------------------------------------


def test_a_snapshot_on_connect_then_one_per_interval(gateway: Server, client: httpx.Client) -> None:
    for i in range(3):
        assert client.get(f"/items/{i}").status_code == 200
    with open_stream(gateway) as stream:
        first = receive(stream)
        assert set(first) == SNAPSHOT_FIELDS and first["type"] == "Snapshot"
        assert first["requests_total"] >= 3 and first["requests_success"] >= 3
        assert first["requests_total"] == first["requests_success"] + first["requests_error"]
        assert first["avg_response_time"] > 0 and 0 <= first["success_rate"] <= 100
        assert isinstance(first["timestamp"], str) and first["timestamp"].endswith("Z")
        assert client.get("/items/x").status_code == 200
        second = receive(stream, timeout=5)  # default interval: 1 s
        assert second["type"] == "Snapshot" and second["requests_total"] >= first["requests_total"] + 1
        assert second["timestamp"] > first["timestamp"]


def test_subscription_with_history_and_a_shorter_interval(gateway: Server, client: httpx.Client) -> None:
    assert client.get("/items/1").status_code == 200
    time.sleep(0.5)  # a couple of samples (every 0.2 s here)
    with open_stream(gateway) as stream:
        assert receive(stream)["type"] == "Snapshot"
        stream.send(
            json.dumps({"metrics": ["requests_total"], "include_history": True, "interval_seconds": 0.2})
        )
        series = receive_until(stream, "TimeSeries")
        assert series["metric_name"] == "requests_total" and series["data_points"]
        for point in series["data_points"]:
            assert set(point) == {"timestamp", "value"}
            assert point["value"]["type"] == "Counter" and isinstance(point["value"]["value"], int)
        # Snapshots now come every 0.2 s: five arrive well before the 1 s default would send two.
        started = time.monotonic()
        for _ in range(5):
            assert receive(stream)["type"] == "Snapshot"
        assert time.monotonic() - started < 4.5  # generous: 1 s intervals would need >= 5 s

        stream.send(json.dumps({"include_history": True, "interval_seconds": 0.2}))
        names: list[str] = []
        while len(names) < len(SERIES):
            names.append(receive_until(stream, "TimeSeries")["metric_name"])
        assert names == list(SERIES)  # no metrics named: every series, in /metrics/list order


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ('{"interval_seconds": 0}', "interval_seconds"),
        ('{"interval_seconds": -1}', "interval_seconds"),
        ('{"interval_seconds": 1e9}', "interval_seconds"),
        ('{"interval_seconds": "fast"}', "interval_seconds"),
        ("not json at all", "not valid JSON"),
        ('{"metrics": ["nope"]}', "metrics"),
    ],
)
def test_an_invalid_subscription_is_an_error_event_and_the_stream_goes_on(
    gateway: Server, message: str, named: str
) -> None:
    with open_stream(gateway) as stream:
        assert receive(stream)["type"] == "Snapshot"
        stream.send(message)
        error = receive_until(stream, "Error")
        assert set(error) == {"type", "message"}
        assert error["message"].startswith("Invalid subscription: ") and named in error["message"]
        assert receive(stream, timeout=5)["type"] == "Snapshot"  # still streaming, at the old interval
        stream.send('{"interval_seconds": 0.2}')  # and still listening
        for _ in range(3):
            assert receive(stream, timeout=5)["type"] == "Snapshot"


def test_many_subscriptions_at_once_are_all_answered_in_order(gateway: Server) -> None:
    """A burst larger than the inbox: the reader waits (TCP back-pressure), nothing is lost."""
    with open_stream(gateway) as stream:
        assert receive(stream)["type"] == "Snapshot"
        for i in range(30):
            stream.send(json.dumps({"interval_seconds": 0} if i % 2 else {"interval_seconds": 3600}))
        errors = 0
        while errors < 15:
            errors += receive_until(stream, "Error")["type"] == "Error"
        assert errors == 15


# -- /ws/admin/metrics -------------------------------------------------------------------------


def test_admin_stream_sends_the_dashboard_counters_every_second(
    gateway: Server, client: httpx.Client
) -> None:
    assert client.get("/items/1").status_code == 200
    assert client.get("/missing").status_code == 404
    with open_stream(gateway, "/ws/admin/metrics") as stream:
        first = receive(stream)
        assert set(first) == ADMIN_FIELDS
        assert first["requests_total"] >= 2 and first["requests_error"] >= 1
        assert first["peak_connections"] >= 1 and first["active_connections"] == 0
        assert isinstance(first["uptime"], int) and first["uptime"] >= 0
        assert 0 < first["success_rate"] < 100
        stream.send("ignored")  # no protocol: messages are read and dropped
        second = receive(stream, timeout=5)
        assert set(second) == ADMIN_FIELDS and second["uptime"] >= first["uptime"]


def test_streams_end_when_their_clients_leave(gateway: Server, client: httpx.Client) -> None:
    with ExitStack() as stack:
        for path in ("/ws/metrics", "/ws/admin/metrics", "/ws/metrics"):
            receive(stack.enter_context(open_stream(gateway, path)))
        assert admin_streams_open(client) == 3
    wait_for_no_streams(client)
    # A client that vanishes without a close handshake is noticed too.
    with open_stream(gateway) as stream:
        receive(stream)
        stream.socket.close()
        wait_for_no_streams(client)


def test_a_client_that_stops_reading_is_cut_off_without_growing_memory(
    gateway: Server, client: httpx.Client
) -> None:
    """The client asks for the whole history over and over (~60 MB of answers, more than the
    kernel's socket buffers hold) and reads nothing. The stream builds one event at a time and
    waits for the socket, so the gateway holds about one event; after SEND_TIMEOUT_SECONDS
    without progress the stream is ended."""
    wait_for_no_streams(client)
    before, _ = rss_bytes(gateway.pid)
    # max_queue=1: the client's reader stops after one buffered message; no pings (they would end
    # the connection on their own timeout); no compression (the history compresses so well that
    # the socket buffers would take minutes of answers).
    with open_stream(gateway, max_queue=1, ping_interval=None, close_timeout=1, compression=None) as stream:
        receive(stream)
        waited = time.monotonic() + 20
        answer = 0
        while answer < 100_000 and time.monotonic() < waited:  # big answers: fewer to build
            time.sleep(0.5)
            stream.send(json.dumps({"include_history": True}))
            answer = sum(len(json.dumps(receive_until(stream, "TimeSeries"))) for _ in SERIES)
        requests = 60 * 1024 * 1024 // answer + 1
        for _ in range(requests):
            stream.send(json.dumps({"include_history": True}))
        deadline = time.monotonic() + SEND_TIMEOUT_SECONDS + 30
        grown = 0
        while admin_streams_open(client) != 0:
            grown = max(grown, rss_bytes(gateway.pid)[0] - before)
            assert time.monotonic() < deadline, "a stalled stream was never ended"
            time.sleep(0.2)
    assert grown < 20 * 1024 * 1024, f"the gateway grew by {grown} bytes for {requests} x {answer} bytes"


# -- authentication and shutdown (own gateway: a token is set) ---------------------------------


def test_streams_require_the_admin_token_and_end_on_shutdown(module_tmp: Path, upstream: Server) -> None:
    config = {"version": 1, "routers": [route("/items/{id}", "/echo/items/{id}", [backend(upstream)])]}
    env = {"KAIROS_ADMIN_TOKEN": TOKEN, "KAIROS_METRICS_HISTORY_INTERVAL": "0.2"}
    with gateway_server(module_tmp, config, env=env) as server:
        for path in ("/ws/metrics", "/ws/admin/metrics", "/ws/metrics?token=wrong"):
            with pytest.raises(InvalidStatus) as refused:
                open_stream(server, path)
            assert refused.value.response.status_code == 401  # refused before the upgrade
            assert json.loads(refused.value.response.body or b"{}")["type"] == "authentication_error"
        with open_stream(server, f"/ws/metrics?token={TOKEN}") as stream:
            assert receive(stream)["type"] == "Snapshot"
        with open_stream(
            server, "/ws/admin/metrics", additional_headers={"Authorization": f"Bearer {TOKEN}"}
        ) as s:
            assert set(receive(s)) == ADMIN_FIELDS

        with open_stream(server, f"/ws/metrics?token={TOKEN}") as stream:
            receive(stream)
            server.process.terminate()  # SIGTERM: uvicorn shuts down; the stream must end, not hang
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    receive(stream, timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
        server.process.wait(15)
        output = server.output()
        assert "Application shutdown complete" in output and "Traceback" not in output
