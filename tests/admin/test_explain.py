"""/api/explain, /api/backends and /api/cache/purge through the real gateway and real upstreams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Server, backend, free_port, gateway_server, route

DEAD_PORT = free_port()  # nothing listens here: connections are refused


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    both = [backend(upstream), backend(upstream_b, weight=3)]
    config = {
        "version": 1,
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 1000, "window_duration": 60},
        "routers": [
            route("/users/me", "/echo/me", [backend(upstream)]),
            route(
                "/users/{id}",
                "/echo/users/{id}",
                both,
                methods=("GET", "POST"),
                load_balancing_strategy="weighted",
                retry={"max_retries": 2},
                cache={"ttl_secs": 30},
                cors={"allowed_origins": ["https://app.example"]},
                timeout_ms=7000,
                request_transformation={
                    "path": {"pattern": "^/echo/users/", "replacement": "/echo/v2/users/"}
                },
            ),
            route("/files/{*rest}", "/echo/files/{rest}", [backend(upstream)]),
            route(
                "/flaky",
                "/flaky",
                [backend(DEAD_PORT)],
                circuit_breaker={"failure_threshold": 1, "reset_timeout_ms": 60000},
            ),
            route("/cached/{name}", "/echo/cached/{name}", [backend(upstream)], cache={"ttl_secs": 60}),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def explain(client: httpx.Client, **params: str) -> httpx.Response:
    return client.get("/api/explain", params=params)


def test_a_matched_request_is_explained_with_its_upstreams_and_policies(
    client: httpx.Client, upstream: Server, upstream_b: Server
) -> None:
    answer = explain(client, method="GET", path="/users/42?expand=1")
    assert answer.status_code == 200
    body = answer.json()
    assert body["matched"] is True and body["served_by"] == "proxy"
    assert body["route"]["external_path"] == "/users/{id}" and body["route"]["index"] == 1
    assert body["route"]["key"] == "http GET,POST /users/{id}"
    assert body["params"] == {"id": "42"}
    assert "/users/{id}" in body["why"]
    urls = [b["url"] for b in body["backends"]]
    assert urls == [
        f"http://127.0.0.1:{upstream.port}/echo/v2/users/42?expand=1",
        f"http://127.0.0.1:{upstream_b.port}/echo/v2/users/42?expand=1",
    ]
    assert all(b["path_rewritten"] for b in body["backends"])
    first = body["backends"][0]
    assert first["circuit"]["state"] == "closed" and first["healthy"] is True and first["available"] is True
    assert first["in_flight"] == 0 and first["outlier"]["ejected"] is False
    assert body["balancer"] == "weighted"
    policies = body["policies"]
    assert policies["rate_limit"]["source"] == "global" and policies["rate_limit"]["applies"] is True
    assert policies["cache"]["applies"] is True
    assert policies["cors"]["source"] == "route"
    assert policies["retry"]["applies"] is True and policies["retry"]["config"]["max_retries"] == 2
    assert policies["timeouts"]["timeout_ms"] == 7000
    assert policies["auth"]["applies"] is False

    # What the explanation says is what the proxy does.
    proxied = client.get("/users/42?expand=1")
    assert proxied.json()["raw_path"] == "/echo/v2/users/42?expand=1"

    keyed = explain(client, method="GET", path="/users/42?b=2&a=1", host="API.example").json()
    assert keyed["policies"]["cache"]["purge_key_prefix"] == "api.example/users/42?a=1&b=2"

    upgrade = explain(client, method="GET", path="/users/42", websocket="true").json()
    assert upgrade["backends"][0]["url"] == f"ws://127.0.0.1:{upstream.port}/echo/v2/users/42"
    assert upgrade["policies"]["cache"]["applies"] is False

    posted = explain(client, method="POST", path="/users/42").json()
    assert (
        posted["policies"]["retry"]["applies"] is False
        and "idempotent" in posted["policies"]["retry"]["note"]
    )
    assert posted["policies"]["cache"]["applies"] is False


def test_precedence_and_refusals_are_explained(client: httpx.Client) -> None:
    me = explain(client, method="GET", path="/users/me").json()
    assert me["route"]["external_path"] == "/users/me" and me["params"] == {}
    assert "static" in me["why"]
    losers = {other["external_path"]: other["reason"] for other in me["other_matching_routes"]}
    assert "less specific" in losers["/users/{id}"]

    refused = explain(client, method="DELETE", path="/users/me").json()
    assert refused["matched"] is False and refused["status"] == 405
    assert set(refused["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert client.delete("/users/me").headers["allow"] == refused["allow"]  # the gateway agrees

    missing = explain(client, method="GET", path="/nothing/here").json()
    assert missing["status"] == 404 and missing["type"] == "route_not_found"
    deep = explain(client, method="GET", path="/files/a/b/c.txt").json()
    assert deep["params"] == {"rest": "a/b/c.txt"}
    dots = explain(client, method="GET", path="/files/../etc").json()
    assert dots["status"] == 400
    admin = explain(client, method="GET", path="/api/routes").json()
    assert admin["served_by"] == "admin" and admin["matched"] is False


def test_bad_query_parameters_are_400s_naming_the_parameter(client: httpx.Client) -> None:
    cases = {
        "`method`": {"path": "/x"},
        "`path`": {"method": "GET"},
    }
    for name, params in cases.items():
        answer = client.get("/api/explain", params=params)
        assert answer.status_code == 400 and name in answer.json()["error"], answer.text
    assert "`method`" in explain(client, method="FETCH", path="/x").json()["error"]
    assert "`path`" in explain(client, method="GET", path="x").json()["error"]
    assert "`websocket`" in explain(client, method="GET", path="/x", websocket="maybe").json()["error"]


def test_backends_show_health_and_an_open_circuit(client: httpx.Client, upstream: Server) -> None:
    failed = client.get("/flaky")
    assert failed.status_code in (502, 503)
    listed = client.get("/api/backends")
    assert listed.status_code == 200
    backends = {entry["key"]: entry for entry in listed.json()["backends"]}
    dead = backends[f"http://127.0.0.1:{DEAD_PORT}"]
    assert dead["circuit"]["state"] == "open" and dead["circuit"]["times_opened"] == 1
    assert dead["available"] is False and dead["circuit"]["retry_after_seconds"] > 0
    assert [r["external_path"] for r in dead["routes"]] == ["/flaky"]
    shared = backends[f"http://127.0.0.1:{upstream.port}"]
    assert {r["external_path"] for r in shared["routes"]} >= {"/users/me", "/users/{id}", "/files/{*rest}"}
    assert shared["circuit"]["state"] == "closed"

    flaky = explain(client, method="GET", path="/flaky").json()
    assert flaky["backends"][0]["circuit"]["state"] == "open" and flaky["backends"][0]["available"] is False


def test_cache_purge_drops_a_routes_entries(client: httpx.Client) -> None:
    assert client.get("/cached/a").headers["x-cache"] == "MISS"
    assert client.get("/cached/a").headers["x-cache"] == "HIT"
    purged = client.post("/api/cache/purge", json={"route": "/cached/{name}"})
    assert purged.status_code == 200
    assert purged.json()["success"] is True and purged.json()["purged"] >= 1
    assert client.get("/cached/a").headers["x-cache"] == "MISS"
    by_prefix = client.post("/api/cache/purge", json={"key_prefix": "127.0.0.1"})
    assert by_prefix.status_code == 200 and by_prefix.json()["purged"] >= 1
    assert client.post("/api/cache/purge", json={"route": "/cached/{name}"}).json()["purged"] == 0
    unknown = client.post("/api/cache/purge", json={"route": "/nope"}).json()
    assert unknown["purged"] == 0 and "no route" in unknown["warning"]

    assert client.post("/api/cache/purge", json={"rout": "/x"}).status_code == 400
    assert "route" in client.post("/api/cache/purge", json={"route": 5}).json()["error"]
    assert client.post("/api/cache/purge", content=b"[").status_code == 400
