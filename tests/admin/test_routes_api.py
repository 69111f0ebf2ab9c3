"""/api/routes through the real gateway (uvicorn) and a real upstream: CRUD applied live, saved
atomically with unknown keys, ${VAR} references and a .bak kept, every validation problem listed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, gateway_server, route

JWT_SECRET = "jwt-secret-for-admin-tests-0123456789abcdef"
UPSTREAM_TOKEN = "upstream-token-5f0e1c"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config: dict[str, Any] = {
        "version": 1,
        "_comment": "notes for people survive admin writes",
        "x_operator": {"owner": "team-a"},
        "jwt": {"secret": "${ADMIN_TEST_JWT_SECRET}"},
        "routers": [
            route("/cats/{id}", "/echo/cats/{id}", [backend(upstream)], x_route_note="keep me"),
            route("/users", "/echo/users-get", [backend(upstream)], methods=("GET",)),
            route("/users", "/echo/users-post", [backend(upstream)], methods=("POST",)),
            route(
                "/secure",
                "/echo/secure",
                [{"host": "http://${ADMIN_TEST_UPSTREAM_HOST}", "port": upstream.port}],
                request_transformation={
                    "headers": [
                        {"action": "set", "name": "Authorization", "value": "Bearer ${ADMIN_TEST_TOKEN}"}
                    ]
                },
            ),
        ],
    }
    env = {
        "ADMIN_TEST_JWT_SECRET": JWT_SECRET,
        "ADMIN_TEST_UPSTREAM_HOST": "127.0.0.1",
        "ADMIN_TEST_TOKEN": UPSTREAM_TOKEN,
    }
    with gateway_server(module_tmp, config, env=env) as server:
        yield server


def config_file(gateway: Server, module_tmp: Path) -> Path:
    return module_tmp / f"config-{gateway.port}.json"


def new_route(upstream: Server, path: str, internal: str, **extra: Any) -> dict[str, Any]:
    return route(path, internal, [backend(upstream)], **extra)


def test_list_and_get_show_routes_as_written_with_secrets_redacted(client: httpx.Client) -> None:
    listed = client.get("/api/routes")
    assert listed.status_code == 200
    body = listed.json()
    assert body["success"] is True
    assert body["message"] == f"Found {len(body['routes'])} routes"
    assert body["routes"][0]["x_route_note"] == "keep me"  # unknown keys are shown
    assert UPSTREAM_TOKEN not in listed.text and "${ADMIN_TEST_TOKEN}" not in listed.text

    one = client.get("/api/routes/cats/%7Bid%7D")
    assert one.status_code == 200
    assert one.json()["message"] == "Route found"
    assert one.json()["route"]["external_path"] == "/cats/{id}"
    secure = client.get("/api/routes/secure").json()["route"]
    assert secure["request_transformation"]["headers"][0]["value"] == "***"
    assert secure["backends"][0]["host"] == "http://${ADMIN_TEST_UPSTREAM_HOST}"  # not substituted

    missing = client.get("/api/routes/nowhere")
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    assert missing.json()["message"] == "Route not found: /nowhere"


def test_several_routes_on_one_path_are_picked_by_method(client: httpx.Client) -> None:
    ambiguous = client.get("/api/routes/users")
    assert ambiguous.status_code == 409
    body = ambiguous.json()
    assert "?method=" in body["message"] and "?index=" in body["message"]
    assert {r["internal_path"] for r in body["routes"]} == {"/echo/users-get", "/echo/users-post"}

    post = client.get("/api/routes/users", params={"method": "post"})
    assert post.status_code == 200
    assert post.json()["route"]["internal_path"] == "/echo/users-post"
    assert client.get("/api/routes/users", params={"method": "PATCH"}).status_code == 404
    bad = client.get("/api/routes/users", params={"method": "FETCH"})
    assert bad.status_code == 400
    assert "`method`" in bad.json()["message"]
    assert client.get("/api/routes/users", params={"index": "2"}).json()["route"]["methods"] == ["POST"]


def test_create_applies_live_and_persists_atomically(
    client: httpx.Client, gateway: Server, upstream: Server, module_tmp: Path
) -> None:
    path = config_file(gateway, module_tmp)
    before = path.read_text()
    assert client.get("/birds/7").status_code == 404

    created = client.post(
        "/api/routes", json=new_route(upstream, "/birds/{id}", "/echo/birds/{id}", x_new="kept")
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["success"] is True
    assert "Applied live (generation" in body["message"] and "Restart" not in body["message"]
    assert body["route"]["external_path"] == "/birds/{id}"

    proxied = client.get("/birds/7")  # no restart, no reload call
    assert proxied.status_code == 200
    assert proxied.json()["path"] == "/echo/birds/7"

    saved = json.loads(path.read_text())
    assert saved["_comment"] == "notes for people survive admin writes"
    assert saved["x_operator"] == {"owner": "team-a"}
    assert saved["jwt"]["secret"] == "${ADMIN_TEST_JWT_SECRET}"  # the reference, not the value
    assert JWT_SECRET not in path.read_text() and UPSTREAM_TOKEN not in path.read_text()
    assert saved["routers"][0]["x_route_note"] == "keep me"
    assert (
        saved["routers"][3]["request_transformation"]["headers"][0]["value"] == "Bearer ${ADMIN_TEST_TOKEN}"
    )
    assert saved["routers"][-1]["external_path"] == "/birds/{id}" and saved["routers"][-1]["x_new"] == "kept"
    assert path.with_name(path.name + ".bak").read_text() == before
    assert not list(module_tmp.glob(f".{path.name}.*.tmp"))  # no temporary file left behind


def test_a_route_taking_the_same_methods_on_the_same_path_is_a_conflict(
    client: httpx.Client, upstream: Server, gateway: Server, module_tmp: Path
) -> None:
    before = config_file(gateway, module_tmp).read_text()
    clash = client.post("/api/routes", json=new_route(upstream, "/cats/{id}", "/echo/other/{id}"))
    assert clash.status_code == 409
    assert clash.json()["message"].startswith("Route already exists: /cats/{id}")
    assert config_file(gateway, module_tmp).read_text() == before
    # Other methods on the same path are another route (Kairos keys routes by methods + path).
    other = client.post(
        "/api/routes", json=new_route(upstream, "/cats/{id}", "/echo/cats-deleted/{id}", methods=("DELETE",))
    )
    assert other.status_code == 201
    assert client.delete("/cats/3").json()["path"] == "/echo/cats-deleted/3"
    assert client.get("/cats/3").json()["path"] == "/echo/cats/3"


def test_validation_lists_every_problem_by_its_path_in_the_route(
    client: httpx.Client, gateway: Server, module_tmp: Path
) -> None:
    before = config_file(gateway, module_tmp).read_text()
    bad = {
        "external_path": "/bad",
        "internal_path": "no-slash",
        "methods": ["GET", "FETCH"],
        "backends": [{"host": "http://127.0.0.1", "port": 0}, {"host": "http://127.0.0.1", "weight": 0}],
    }
    answer = client.post("/api/routes", json=bad)
    assert answer.status_code == 400
    body = answer.json()
    assert body["success"] is False and body["message"].startswith("Route validation failed: ")
    errors = body["errors"]
    for expected in (
        "internal_path:",
        "methods[1]:",
        "backends[0].port:",
        "backends[1].port:",
        "backends[1].weight:",
    ):
        assert any(error.startswith(expected) for error in errors), (expected, errors)
    assert not any("routers[" in error for error in errors)
    # Rules across the whole config apply too: `auth: api_key` needs top-level `api_keys`.
    keyed = {**bad, "internal_path": "/x", "methods": ["GET"], "backends": [{"host": "http://a", "port": 80}]}
    cross = client.post("/api/routes", json={**keyed, "auth": "api_key", "auth_required": True})
    assert cross.status_code == 400
    assert any(e.startswith("auth:") and "api_keys" in e for e in cross.json()["errors"]), cross.text
    assert config_file(gateway, module_tmp).read_text() == before


def test_malformed_or_wrong_bodies_are_json_400s(client: httpx.Client) -> None:
    broken = client.post(
        "/api/routes", content=b'{"external_path": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.headers["content-type"].startswith("application/json")
    assert "malformed JSON body" in broken.json()["message"]
    assert client.post("/api/routes", content=b"").json()["message"].startswith("request body is empty")
    assert client.post("/api/routes", json=[1, 2]).status_code == 400
    assert client.put("/api/routes/cats/%7Bid%7D", content=b"nope").status_code == 400


def test_update_keeps_running_secrets_sent_back_as_stars(
    client: httpx.Client, gateway: Server, module_tmp: Path
) -> None:
    current = client.get("/api/routes/secure").json()["route"]
    current["internal_path"] = "/echo/secure-v2"
    updated = client.put("/api/routes/secure", json=current)
    assert updated.status_code == 200, updated.text
    assert updated.json()["message"].startswith("Route updated successfully. Applied live")

    seen = client.get("/secure").json()
    assert seen["path"] == "/echo/secure-v2"
    assert ["Authorization", f"Bearer {UPSTREAM_TOKEN}"] in seen["headers"]  # not "***"
    saved = json.loads(config_file(gateway, module_tmp).read_text())
    secure = next(r for r in saved["routers"] if r["external_path"] == "/secure")
    assert secure["request_transformation"]["headers"][0]["value"] == "Bearer ${ADMIN_TEST_TOKEN}"


def test_update_checks_the_path_and_the_route(client: httpx.Client, upstream: Server) -> None:
    mismatch = client.put("/api/routes/cats/%7Bid%7D", json=new_route(upstream, "/dogs/{id}", "/echo/{id}"))
    assert mismatch.status_code == 400
    assert mismatch.json()["message"].startswith("Route external_path must match URL parameter")
    unknown = client.put("/api/routes/ghost", json=new_route(upstream, "/ghost", "/echo/ghost"))
    assert unknown.status_code == 404
    invalid = client.put(
        "/api/routes/users",
        params={"method": "GET"},
        json={**new_route(upstream, "/users", "/x"), "methods": []},
    )
    assert invalid.status_code == 400
    assert any(error.startswith("methods:") for error in invalid.json()["errors"])
    assert client.get("/users").json()["path"] == "/echo/users-get"  # unchanged


def test_delete_applies_live(client: httpx.Client, upstream: Server) -> None:
    assert client.post("/api/routes", json=new_route(upstream, "/temp", "/echo/temp")).status_code == 201
    assert client.get("/temp").status_code == 200
    deleted = client.delete("/api/routes/temp")
    assert deleted.status_code == 200
    assert deleted.json()["message"].startswith("Route deleted successfully. Applied live")
    gone = client.get("/temp")
    assert gone.status_code == 404 and gone.json()["type"] == "route_not_found"
    again = client.delete("/api/routes/temp")
    assert again.status_code == 404 and again.json()["message"] == "Route not found: /temp"


def test_validate_reports_without_changing_anything(client: httpx.Client, upstream: Server) -> None:
    generation = client.get("/api/config/status").json()["version"]
    good = client.post("/api/routes/validate", json={"route": new_route(upstream, "/valid", "/echo/v")})
    assert good.status_code == 200 and good.json() == {"valid": True, "warnings": []}
    free = client.post("/api/routes/validate", json={"route": new_route(upstream, "/api/things", "/echo/t")})
    assert free.json() == {"valid": True, "warnings": []}  # under the prefix but not an admin section
    shadowed = client.post(
        "/api/routes/validate", json={"route": new_route(upstream, "/api/config/x", "/echo/t")}
    )
    assert shadowed.json()["valid"] is True
    assert any("admin API's /api/config" in warning for warning in shadowed.json()["warnings"])
    bad = client.post("/api/routes/validate", json={"route": {"external_path": "x", "methods": "GET"}})
    assert bad.status_code == 200
    body = bad.json()
    assert body["valid"] is False and len(body["errors"]) >= 3 and body["error"]
    assert client.post("/api/routes/validate", json={"nope": 1}).json()["valid"] is False
    assert client.post("/api/routes/validate", content=b"{").status_code == 400
    assert client.get("/api/config/status").json()["version"] == generation
    assert client.get("/valid").status_code == 404


def test_concurrent_changes_are_all_kept(gateway: Server, upstream: Server, module_tmp: Path) -> None:
    """Ten creations at once: each one edits the config the previous one left (one lock)."""

    def create(number: int) -> int:
        body = new_route(upstream, f"/many/{number}", f"/echo/many/{number}")
        return httpx.post(f"{gateway.url}/api/routes", json=body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(create, range(10)))
    assert statuses == [201] * 10
    saved = json.loads(config_file(gateway, module_tmp).read_text())
    assert {f"/many/{n}" for n in range(10)} <= {r["external_path"] for r in saved["routers"]}
    assert all(httpx.get(f"{gateway.url}/many/{n}").status_code == 200 for n in range(10))
