"""kairos-rs compatibility names and config-reload families on /metrics, through the real gateway
(uvicorn) and a real upstream: traffic of known outcomes must move each series by exactly its share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Server, backend, free_port, gateway_server, route

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    config = {
        "version": 1,
        "routers": [
            route("/ok", "/status/200", up),
            route("/gone", "/status/404", up),
            route("/boom", "/status/500", up),
            route("/moved", "/status/304", up),
            route("/refused", "/echo", [backend(free_port())]),
            route("/slow", "/slow", up, timeout_ms=300),
        ],
    }
    # No file watcher: the reload test triggers reloads itself and counts them.
    with gateway_server(module_tmp, config, env={"KAIROS_CONFIG_WATCH": "false"}) as server:
        yield server


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str) -> float:
    """sum() over every label set of a sample name (what a dashboard's sum() does)."""
    return sum(v for (sample, _), v in samples.items() if sample == name)


COUNTERS = (
    "kairos_requests_success_total",
    "kairos_requests_error_total",
    "kairos_http_4xx_errors_total",
    "kairos_http_5xx_errors_total",
    "kairos_timeout_errors_total",
    "kairos_connection_errors_total",
)


def test_known_traffic_moves_each_compatibility_series_by_its_share(client: httpx.Client) -> None:
    before = scrape(client)
    assert client.get("/ok").status_code == 200
    assert client.get("/ok").status_code == 200
    assert client.get("/moved").status_code == 304  # a redirect-class answer is a success here
    assert client.get("/gone").status_code == 404  # upstream 4xx
    assert client.get("/nowhere/at/all").status_code == 404  # gateway 4xx (no route)
    assert client.get("/boom").status_code == 500  # upstream 5xx
    assert client.get("/refused").status_code == 502  # upstream connection refused
    assert client.get("/slow", params={"delay": "3"}).status_code == 504  # upstream timeout
    after = scrape(client)

    moved = {name: value(after, name) - value(before, name) for name in COUNTERS}
    assert moved == {
        "kairos_requests_success_total": 3,
        "kairos_requests_error_total": 5,
        "kairos_http_4xx_errors_total": 2,
        "kairos_http_5xx_errors_total": 3,
        "kairos_timeout_errors_total": 1,
        "kairos_connection_errors_total": 1,
    }
    for reason, expected in (("connect", 1), ("timeout", 1), ("error", 0)):
        name = "kairos_upstream_failures_total"
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == expected

    # sum(kairos_requests_total) is kairos-rs's kairos_requests_total; success + error cover it all.
    requests = total(after, "kairos_requests_total")
    success, errors = value(after, COUNTERS[0]), value(after, COUNTERS[1])
    assert requests == success + errors
    assert value(after, "kairos_success_rate") == pytest.approx(success * 100 / requests, abs=0.01)
    durations = total(after, "kairos_request_duration_seconds_sum")
    count = total(after, "kairos_request_duration_seconds_count")
    assert value(after, "kairos_response_time_avg") == pytest.approx(durations * 1000 / count, abs=0.01)
    assert value(after, "kairos_response_time_avg") > 0
    assert value(after, "kairos_active_connections") == 0  # /metrics itself is not a proxied request
    assert value(after, "kairos_peak_connections") >= 1

    # What could not be true is not exported.
    names = {name for name, _ in after}
    assert (
        not {"kairos_response_time_bucket", "kairos_request_bytes_total", "kairos_response_bytes_total"}
        & names
    )


def test_success_rate_is_100_percent_before_any_traffic(module_tmp: Path, upstream: Server) -> None:
    config = {"version": 1, "routers": [route("/ok", "/status/200", [backend(upstream)])]}
    with gateway_server(module_tmp, config) as server, httpx.Client(base_url=server.url, timeout=10) as fresh:
        samples = scrape(fresh)
        assert value(samples, "kairos_success_rate") == 100
        assert value(samples, "kairos_response_time_avg") == 0
        assert value(samples, "kairos_peak_connections") == 0
        assert total(samples, "kairos_requests_total") == 0


def test_config_reload_families_follow_reloads(
    module_tmp: Path, gateway: Server, client: httpx.Client
) -> None:
    started = scrape(client)
    assert value(started, "kairos_config_generation") == 1  # the startup config
    assert value(started, "kairos_config_reloads_total", result="success") == 0
    assert value(started, "kairos_config_reloads_total", result="failure") == 0
    applied = value(started, "kairos_config_last_reload_success_timestamp_seconds")
    assert time.time() - 600 < applied <= time.time()

    client.post("/api/config/reload")
    reloaded = scrape(client)
    assert value(reloaded, "kairos_config_generation") == 2
    assert value(reloaded, "kairos_config_reloads_total", result="success") == 1
    assert value(reloaded, "kairos_config_last_reload_success_timestamp_seconds") >= applied

    config_file = module_tmp / f"config-{gateway.port}.json"
    good = config_file.read_text()
    try:
        config_file.write_text('{"version": 1, "routers": [{"external_path": "no-slash"}]}')
        client.post("/api/config/reload")
        failed = scrape(client)
    finally:
        config_file.write_text(good)
    assert value(failed, "kairos_config_reloads_total", result="failure") == 1
    assert value(failed, "kairos_config_generation") == 2  # the running config stayed
    assert value(failed, "kairos_config_reloads_total", result="success") == 1
    assert client.get("/ok").status_code == 200
