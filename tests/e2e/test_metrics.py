"""/metrics request series through the real gateway (uvicorn) against the real upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.processes import Server, backend, free_port, gateway_server, route

SECRET = "a-test-secret-that-is-at-least-32-characters-long"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    config = {
        "version": 1,
        "jwt": {"secret": SECRET},
        "routers": [
            route("/users/{id}", "/echo/users/{id}", up, ("GET", "POST")),
            route("/refused", "/echo/refused", [backend(free_port())]),
            route("/private", "/echo/private", up, auth_required=True),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def scrape(client: httpx.Client) -> dict[str, list[Sample]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def requests_total(families: dict[str, list[Sample]]) -> dict[tuple[str, str, str, str], float]:
    return {
        (s.labels["route"], s.labels["method"], s.labels["code"], s.labels["source"]): s.value
        for s in families["kairos_requests"]
        if s.name == "kairos_requests_total"
    }


def histogram(samples: list[Sample], **labels: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets, _count, _sum) of the series with exactly these labels."""
    mine = [s for s in samples if {k: v for k, v in s.labels.items() if k != "le"} == labels]
    buckets = [(float(s.labels["le"]), s.value) for s in mine if s.name.endswith("_bucket")]
    (count,) = [s.value for s in mine if s.name.endswith("_count")]
    (total,) = [s.value for s in mine if s.name.endswith("_sum")]
    return buckets, count, total


def test_a_known_mix_is_counted_by_route_template_method_code_and_source(client: httpx.Client) -> None:
    assert client.get("/users/1").status_code == 200
    assert client.get("/users/2").status_code == 200
    assert client.post("/users/3", content=b"x").status_code == 200
    assert client.get("/nowhere/at/all").status_code == 404
    assert client.get("/refused").status_code == 502
    assert client.get("/private").status_code == 401
    assert client.delete("/users/1").status_code == 405

    families = scrape(client)
    counts = requests_total(families)
    assert counts == {
        ("/users/{id}", "GET", "200", "upstream"): 2,
        ("/users/{id}", "POST", "200", "upstream"): 1,
        ("(unmatched)", "GET", "404", "gateway"): 1,
        ("/refused", "GET", "502", "gateway"): 1,
        ("/private", "GET", "401", "gateway"): 1,
        ("(unmatched)", "DELETE", "405", "gateway"): 1,
    }
    assert not any(key[0].startswith("/users/1") for key in counts)  # never the raw path
    assert [s.value for s in families["kairos_requests_in_flight"]] == [0]  # the scrape is not counted

    durations = families["kairos_request_duration_seconds"]
    buckets, count, total = histogram(durations, route="/users/{id}", method="GET")
    assert count == 2 and buckets[-1] == (float("inf"), 2.0) and total > 0
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)
    assert histogram(durations, route="(unmatched)", method="GET")[1] == 1

    upstream = families["kairos_upstream_duration_seconds"]
    _, up_count, up_sum = histogram(upstream, route="/users/{id}")
    assert up_count == 3 and up_sum > 0
    assert {s.labels["route"] for s in upstream} == {"/users/{id}"}  # no upstream answered the others
    _, over_count, over_sum = histogram(families["kairos_overhead_duration_seconds"])
    assert over_count == 3 and over_sum >= 0
    request_sum = sum(histogram(durations, route="/users/{id}", method=m)[2] for m in ("GET", "POST"))
    # Overhead is the gateway's own time: it never exceeds what is left of the request beside the
    # upstream's head time (body relay and the client's upload are excluded on top).
    assert 0 < over_sum < request_sum and up_sum + over_sum <= request_sum + 1e-9

    assert client.get("/users/9").status_code == 200
    again = requests_total(scrape(client))
    assert again[("/users/{id}", "GET", "200", "upstream")] == 3
