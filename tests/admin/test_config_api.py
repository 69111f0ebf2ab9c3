"""/api/config, /api/config/reload and /api/config/status through the real gateway: no secret ever
shown, a bad file never replaces the running config, a write that cannot happen changes nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Server, backend, gateway_server, route

SECRETS = {
    "jwt": "inline-jwt-secret-that-is-long-enough-0042",
    "key1": "consumer-api-key-one-77",
    "key2": "consumer-api-key-two-88",
    "ai": "sk-ai-provider-key-99",
    "redis": "redis-password-xyz",
    "header": "upstream-bearer-token-abc",
    "vendor": "vendor-client-secret-321",
}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config: dict[str, Any] = {
        "version": 1,
        "jwt": {"secret": SECRETS["jwt"], "issuer": "kairos-tests"},
        "api_keys": [{"name": "ci", "keys": [SECRETS["key1"], SECRETS["key2"]]}],
        "ai": {"provider": "openai", "model": "gpt-4o-mini", "api_key": SECRETS["ai"]},
        "x_backup_store": f"redis://:{SECRETS['redis']}@127.0.0.1:1/0",
        "x_vendor": {"client_secret": SECRETS["vendor"], "region": "eu"},
        "routers": [
            route("/cats/{id}", "/echo/cats/{id}", [backend(upstream)]),
            route(
                "/private",
                "/echo/private",
                [backend(upstream)],
                auth_required=True,
                request_transformation={
                    "headers": [{"action": "set", "name": "X-Upstream-Token", "value": SECRETS["header"]}]
                },
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def config_file(gateway: Server, module_tmp: Path) -> Path:
    return module_tmp / f"config-{gateway.port}.json"


def test_config_shows_everything_but_the_secrets(client: httpx.Client) -> None:
    answer = client.get("/api/config")
    assert answer.status_code == 200
    for name, secret in SECRETS.items():
        assert secret not in answer.text, name
    config = answer.json()
    assert config["jwt"] == {"secret": "***", "issuer": "kairos-tests"}
    assert config["api_keys"] == [{"name": "ci", "keys": ["***", "***"]}]
    assert config["ai"]["api_key"] == "***" and config["ai"]["model"] == "gpt-4o-mini"
    assert config["x_backup_store"] == "redis://***@127.0.0.1:1/0"
    assert config["x_vendor"] == {"client_secret": "***", "region": "eu"}
    assert config["routers"][1]["request_transformation"]["headers"][0]["value"] == "***"
    # The other endpoints showing config data redact it the same way.
    for path in ("/api/routes", "/api/backends", "/api/explain?method=GET&path=/private"):
        shown = client.get(path)
        assert shown.status_code == 200
        for secret in SECRETS.values():
            assert secret not in shown.text, path


def test_status_has_the_kairos_rs_shape_and_the_reload_state(client: httpx.Client) -> None:
    status = client.get("/api/config/status").json()
    assert status["success"] is True
    assert status["message"] == "Current configuration status"
    assert isinstance(status["version"], int) and status["version"] == status["generation"] >= 1
    assert status["timestamp"].endswith("Z")
    assert status["last_result"] in ("success", "failure")
    assert set(status["reloads"]) == {"success", "failure"}


def test_reload_applies_the_file_and_a_bad_file_keeps_the_old_config_serving(
    client: httpx.Client, gateway: Server, module_tmp: Path
) -> None:
    path = config_file(gateway, module_tmp)
    good = path.read_text()
    before = client.get("/api/config/status").json()["version"]

    reloaded = client.post("/api/config/reload")
    assert reloaded.status_code == 200
    body = reloaded.json()
    assert body["success"] is True and body["message"].startswith("Configuration reloaded successfully")
    assert body["version"] > before and body["last_trigger"] == "api" and body["timestamp"]

    broken = json.loads(good)
    broken["routers"][0]["backends"][0]["port"] = 70000
    broken["routers"][0]["methods"] = ["GRAB"]
    try:
        path.write_text(json.dumps(broken))
        failed = client.post("/api/config/reload")
        assert failed.status_code == 422
        body = failed.json()
        assert body["success"] is False
        assert any("routers[0].backends[0].port" in e for e in body["errors"]), body["errors"]
        assert any("routers[0].methods[0]" in e for e in body["errors"]), body["errors"]
        assert "still serving generation" in body["message"]
        still = client.get("/cats/5")  # the old config keeps serving
        assert still.status_code == 200 and still.json()["path"] == "/echo/cats/5"
        status = client.get("/api/config/status").json()
        assert status["last_result"] == "failure" and status["last_errors"]
        assert status["version"] == body["version"]

        path.write_text("{ not json")
        unparsable = client.post("/api/config/reload")
        assert unparsable.status_code == 422 and "invalid JSON" in unparsable.json()["message"]
        assert client.get("/cats/6").status_code == 200
    finally:
        path.write_text(good)
    assert client.post("/api/config/reload").status_code == 200


def test_a_write_that_cannot_happen_changes_nothing(
    client: httpx.Client, gateway: Server, upstream: Server, module_tmp: Path
) -> None:
    """The write fails for real: the place of the backup copy is taken by a non-empty directory,
    which the atomic writer cannot replace (permission bits would not stop root, who runs CI)."""
    path = config_file(gateway, module_tmp)
    before = path.read_bytes()
    status = client.get("/api/config/status").json()
    backup = path.with_name(path.name + ".bak")
    if backup.exists():
        backup.unlink()
    backup.mkdir()
    (backup / "occupied").write_text("x")
    try:
        answer = client.post("/api/routes", json=route("/never", "/echo/never", [backend(upstream)]))
        assert answer.status_code == 500
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["success"] is False
        assert answer.json()["message"].startswith("Failed to save configuration: ")
        assert path.read_bytes() == before
        assert client.get("/never").status_code == 404  # not applied either
        assert client.get("/api/config/status").json()["version"] == status["version"]
        assert all(r["external_path"] != "/never" for r in client.get("/api/routes").json()["routes"])
        assert not list(module_tmp.glob(f".{path.name}.*.tmp"))
    finally:
        shutil.rmtree(backup)
