"""OpenTelemetry tracing through the real gateway (KAIROS_TRACING=otlp) under uvicorn.

Spans leave the gateway through the real OTLP/HTTP exporter and batch processor and land in a
local receiver (tests/servers/otlp_receiver.py) that decodes the protobuf; the echo upstream
(tests/servers/upstream.py) shows the headers it received, so the test can follow one trace
from the caller's ``traceparent`` through the gateway's spans to the upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.processes import ROOT, Server, backend, free_port, gateway_server, route, server_process

RETRY = {"max_retries": 2, "initial_backoff_ms": 10, "max_backoff_ms": 100, "jitter": False}
API_KEY = "tracing-test-key-0123456789"


@pytest.fixture(scope="module")
def receiver(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.otlp_receiver", "--port", str(port)]
    with server_process(args, port, module_tmp / f"otlp-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def scripted(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.scripted_upstream", "--port", str(port)]
    with server_process(args, port, module_tmp / f"scripted-{port}.log") as server:
        yield server


def tracing_env(receiver: Server, **extra: str) -> dict[str, str]:
    return {
        "KAIROS_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans reach the receiver quickly
        "OTEL_SERVICE_NAME": "kairos-test",
        **extra,
    }


def config(upstream: Server, scripted: Server | None = None) -> dict[str, Any]:
    dead = {"host": "http://127.0.0.1", "port": free_port()}  # nothing listens: connect refused
    routes = [
        route("/users/{id}", "/echo/users/{id}", [backend(upstream)]),
        route("/private", "/echo/private", [backend(upstream)], auth_required=True, auth="api_key"),
        route("/down", "/echo/down", [dead]),
        route("/ws/{channel}", "/ws/{channel}", [backend(upstream)], protocol="websocket"),
    ]
    if scripted is not None:
        routes.append(route("/retry/{key}", "/s/{key}", [backend(scripted)], retry=RETRY))
    return {"version": 1, "api_keys": [{"name": "tests", "keys": [API_KEY]}], "routers": routes}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, scripted: Server, receiver: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, config(upstream, scripted), env=tracing_env(receiver)) as server:
        yield server


def new_trace() -> tuple[str, str, dict[str, str]]:
    """A caller's trace: (trace id, its span id, the headers that carry them)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "caller=abc"}


def spans_of(
    receiver: Server, trace_id: str, server_spans: int = 1, client_spans: int = 0
) -> list[dict[str, Any]]:
    """The trace's spans once the receiver has at least the spans expected (bounded wait)."""
    deadline = time.monotonic() + 15
    while True:
        spans: list[dict[str, Any]] = httpx.get(f"{receiver.url}/spans", params={"trace_id": trace_id}).json()
        kinds = [span["kind"] for span in spans]
        if kinds.count("SERVER") >= server_spans and kinds.count("CLIENT") >= client_spans:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id}: expected more spans than {spans}")
        time.sleep(0.05)


def one(spans: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [span for span in spans if span["kind"] == kind]
    assert len(found) == 1, spans
    return found[0]


def upstream_headers(answer: httpx.Response, name: str) -> list[str]:
    return [value for key, value in answer.json()["headers"] if key.lower() == name]


def test_a_request_is_a_server_span_in_the_callers_trace_and_the_upstream_continues_it(
    client: httpx.Client, receiver: Server, upstream: Server
) -> None:
    trace_id, caller_span, headers = new_trace()
    answer = client.get("/users/42", headers=headers)
    assert answer.status_code == 200
    spans = spans_of(receiver, trace_id, client_spans=1)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")

    assert server["service"] == "kairos-test"
    assert server["name"] == "GET /users/{id}"  # the route template, never the raw path
    assert server["parent_span_id"] == caller_span
    attributes = server["attributes"]
    assert attributes["http.route"] == "/users/{id}"
    assert attributes["http.request.method"] == "GET" and attributes["url.path"] == "/users/42"
    assert attributes["http.response.status_code"] == 200
    assert attributes["kairos.response.source"] == "upstream"
    assert attributes["kairos.request_id"] == answer.headers["x-request-id"]
    assert server["status"] == "UNSET"

    assert attempt["parent_span_id"] == server["span_id"]
    assert attempt["name"] == "GET /echo/users/{id}"
    assert attempt["attributes"]["server.address"] == "127.0.0.1"
    assert attempt["attributes"]["server.port"] == upstream.port
    assert attempt["attributes"]["kairos.attempt"] == 0
    assert attempt["attributes"]["http.response.status_code"] == 200

    # The upstream got one traceparent (the caller's was replaced), naming the attempt's span.
    (traceparent,) = upstream_headers(answer, "traceparent")
    version, upstream_trace, parent, flags = traceparent.split("-")
    assert (version, upstream_trace, parent, flags) == ("00", trace_id, attempt["span_id"], "01")
    assert upstream_headers(answer, "tracestate") == ["caller=abc"]


def test_without_a_traceparent_the_gateway_starts_the_trace(client: httpx.Client, receiver: Server) -> None:
    answer = client.get("/users/7")
    (traceparent,) = upstream_headers(answer, "traceparent")
    _, trace_id, parent, _ = traceparent.split("-")
    spans = spans_of(receiver, trace_id, client_spans=1)
    server = one(spans, "SERVER")
    assert server["parent_span_id"] == ""  # a root span
    assert one(spans, "CLIENT")["span_id"] == parent


def test_each_retry_attempt_is_its_own_client_span(
    client: httpx.Client, receiver: Server, scripted: Server
) -> None:
    httpx.put(f"{scripted.url}/_script/traced", json=[503, 502, 200]).raise_for_status()
    trace_id, _, headers = new_trace()
    answer = client.get("/retry/traced", headers=headers)
    assert answer.status_code == 200
    spans = spans_of(receiver, trace_id, client_spans=3)
    server = one(spans, "SERVER")
    assert server["name"] == "GET /retry/{key}"
    assert server["attributes"]["http.response.status_code"] == 200
    attempts = sorted((span for span in spans if span["kind"] == "CLIENT"), key=lambda s: s["start"])
    assert [span["attributes"]["kairos.attempt"] for span in attempts] == [0, 1, 2]
    assert [span["attributes"]["http.response.status_code"] for span in attempts] == [503, 502, 200]
    assert [span["status"] for span in attempts] == ["ERROR", "ERROR", "UNSET"]
    assert [span["attributes"].get("http.request.resend_count") for span in attempts] == [None, 1, 2]
    assert all(span["parent_span_id"] == server["span_id"] for span in attempts)
    assert len({span["span_id"] for span in attempts}) == 3


def test_an_unmatched_request_is_traced_without_a_route(client: httpx.Client, receiver: Server) -> None:
    trace_id, caller_span, headers = new_trace()
    answer = client.get("/nowhere/123", headers=headers)
    assert answer.status_code == 404
    server = one(spans_of(receiver, trace_id), "SERVER")
    assert server["name"] == "GET"  # no route: the method alone, never the raw path
    assert server["parent_span_id"] == caller_span
    assert "http.route" not in server["attributes"]
    assert server["attributes"]["http.response.status_code"] == 404
    assert server["attributes"]["kairos.response.source"] == "gateway"
    assert server["attributes"]["kairos.request_id"] == answer.headers["x-request-id"]
    assert server["status"] == "UNSET"  # a 4xx is the client's error, not the server's


def test_a_gateway_refusal_is_traced_and_reaches_no_upstream(client: httpx.Client, receiver: Server) -> None:
    trace_id, _, headers = new_trace()
    assert client.get("/private", headers=headers).status_code == 401
    spans = spans_of(receiver, trace_id)
    server = one(spans, "SERVER")
    assert server["name"] == "GET /private"
    assert server["attributes"]["http.response.status_code"] == 401
    assert server["attributes"]["kairos.response.source"] == "gateway"
    assert [span for span in spans if span["kind"] == "CLIENT"] == []

    trace_id, _, headers = new_trace()
    assert client.get("/private", headers={**headers, "X-API-Key": API_KEY}).status_code == 200
    assert one(spans_of(receiver, trace_id, client_spans=1), "CLIENT")["attributes"]["server.port"] > 0


def test_an_unreachable_upstream_is_an_error_on_both_spans(client: httpx.Client, receiver: Server) -> None:
    trace_id, _, headers = new_trace()
    assert client.get("/down", headers=headers).status_code == 502
    spans = spans_of(receiver, trace_id, client_spans=1)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert server["status"] == "ERROR" and server["attributes"]["http.response.status_code"] == 502
    assert server["attributes"]["kairos.response.source"] == "gateway"
    assert attempt["status"] == "ERROR" and attempt["attributes"]["error.type"] == "connect"
    assert "http.response.status_code" not in attempt["attributes"]  # the upstream never answered


def test_a_websocket_upgrade_is_traced_while_the_connection_stays_open(
    gateway: Server, receiver: Server
) -> None:
    trace_id, caller_span, headers = new_trace()

    async def session() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        url = gateway.url.replace("http://", "ws://") + "/ws/news"
        async with connect(url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
            await ws.send("whoami")
            reply = json.loads(await ws.recv())
            # Both spans end with the upgrade: exported while the connection is still open.
            spans = await asyncio.to_thread(spans_of, receiver, trace_id, 1, 1)
            return reply, spans

    reply, spans = asyncio.run(asyncio.wait_for(session(), 30))
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert server["name"] == "GET /ws/{channel}" and server["parent_span_id"] == caller_span
    assert server["attributes"]["http.response.status_code"] == 101
    assert attempt["parent_span_id"] == server["span_id"]
    assert attempt["attributes"]["http.response.status_code"] == 101
    traceparents = [value for key, value in reply["headers"] if key.lower() == "traceparent"]
    assert traceparents == [f"00-{trace_id}-{attempt['span_id']}-01"]


def test_spans_still_queued_are_flushed_on_shutdown(
    module_tmp: Path, upstream: Server, receiver: Server
) -> None:
    env = tracing_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000")  # 10 min: only shutdown exports
    trace_id, _, headers = new_trace()
    with gateway_server(module_tmp, config(upstream), env=env) as server:
        assert httpx.get(f"{server.url}/users/1", headers=headers, timeout=10).status_code == 200
        time.sleep(0.3)
        assert httpx.get(f"{receiver.url}/spans", params={"trace_id": trace_id}).json() == []
    # The context exit stopped the gateway (SIGTERM -> lifespan shutdown -> flush).
    spans = spans_of(receiver, trace_id, client_spans=1)
    assert one(spans, "SERVER")["name"] == "GET /users/{id}"


def test_console_exporter_prints_spans(module_tmp: Path, upstream: Server) -> None:
    env = {"KAIROS_TRACING": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with gateway_server(module_tmp, config(upstream), env=env) as server:
        assert httpx.get(f"{server.url}/users/5", timeout=10).status_code == 200
    output = server.output()
    assert '"name": "GET /users/{id}"' in output and '"kind": "SpanKind.SERVER"' in output


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_off_by_default_nothing_is_imported_and_no_layer_is_added(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KAIROS_TRACING"}
    env["KAIROS_CONFIG_PATH"] = str(tmp_path / "absent.json")
    code = (
        "import sys, kairos.app\n"
        "layer, names = kairos.app.app.pipeline, []\n"
        "while layer is not None:\n"
        "    names.append(type(layer).__name__); layer = getattr(layer, 'app', None)\n"
        "print(sorted(names))\n"
        # redis-py imports opentelemetry's *metrics* SDK when it is installed; tracing needs none of
        # these, and none may be loaded while it is off.
        "prefixes = ('opentelemetry.sdk.trace', 'opentelemetry.propagate', 'opentelemetry.exporter',\n"
        "            'opentelemetry.instrumentation', 'kairos.middleware.tracing',\n"
        "            'kairos.observability.tracing')\n"
        "print(sorted(m for m in sys.modules if m.startswith(prefixes)))\n"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    layers, loaded = result.stdout.splitlines()
    assert "MetricsMiddleware" in layers and "Span" not in layers
    assert loaded == "[]"


def test_tracing_without_the_extra_is_a_clear_startup_error(tmp_path: Path) -> None:
    env = {**os.environ, "KAIROS_TRACING": "otlp", "KAIROS_CONFIG_PATH": str(tmp_path / "absent.json")}
    # As if kairos[otel] were not installed: the import system refuses the package.
    result = run_python("import sys; sys.modules['opentelemetry'] = None; import kairos.app", env)
    assert result.returncode != 0
    assert "KAIROS_TRACING" in result.stderr and "pip install 'kairos[otel]'" in result.stderr
