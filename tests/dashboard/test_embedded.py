"""The dashboard served by the gateway at /admin: who may reach it, and how it steps aside for a
route or an admin prefix that already uses its path (in process, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.app import create_app
from kairos.settings import Settings, SettingsError, load_settings
from tests.asgi import AsgiClients

LOCAL = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)


def config(*paths: str) -> dict[str, Any]:
    routes = [
        {
            "external_path": path,
            "internal_path": "/x",
            "methods": ["GET"],
            "backends": [{"host": "http://127.0.0.1", "port": 9}],
        }
        for path in paths
    ]
    return {"version": 1, "routers": routes}


def test_without_an_admin_token_only_local_browsers_get_the_dashboard(asgi_client: AsgiClients) -> None:
    app = create_app(config("/users"), Settings())
    local = asgi_client(app, client=LOCAL).get("/admin/login")
    assert local.status_code == 200 and "Admin token" in local.text
    assert local.headers["content-security-policy"].startswith("default-src 'self'")
    assert local.headers["x-frame-options"] == "DENY"
    remote = asgi_client(app, client=REMOTE).get("/admin/login")
    assert remote.status_code == 403
    assert remote.json()["error"].startswith("the dashboard answers only local clients")


def test_with_a_token_anyone_sees_the_login_page_but_pages_need_a_session(
    asgi_client: AsgiClients,
) -> None:
    app = create_app(config("/users"), Settings(admin_token="t" * 32))
    assert asgi_client(app, client=REMOTE).get("/admin/login").status_code == 200
    page = asgi_client(app, client=REMOTE).get("/admin/routes")
    assert page.status_code == 303 and page.headers["location"].endswith("/admin/login")
    refused = asgi_client(app, client=REMOTE).post("/admin/login", data={"token": "wrong"})
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    empty = asgi_client(app, client=REMOTE).post("/admin/login", data={"token": ""})
    assert empty.status_code == 401 and "set-cookie" not in empty.headers


def test_a_route_under_the_dashboard_path_keeps_it(asgi_client: AsgiClients) -> None:
    app = create_app(config("/admin/{*rest}"), Settings())
    answer = asgi_client(app, client=LOCAL).get("/admin/login")
    assert answer.headers["content-type"].startswith("application/json")  # proxied (backend down: 502)
    assert answer.status_code == 502 and answer.json()["type"] == "upstream"


def test_the_default_path_steps_aside_for_an_admin_prefix_that_uses_it(asgi_client: AsgiClients) -> None:
    settings = Settings(admin_prefix="/admin")
    assert settings.served_dashboard_path is None
    app = create_app(config("/users"), settings)
    listing = asgi_client(app, client=LOCAL).get("/admin/routes")
    assert listing.status_code == 200 and listing.json()["routes"][0]["external_path"] == "/users"


def test_an_explicit_dashboard_path_over_the_admin_prefix_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_ADMIN_PREFIX", "/ops")
    monkeypatch.setenv("KAIROS_DASHBOARD_PATH", "/ops/board")
    with pytest.raises(
        SettingsError, match="KAIROS_DASHBOARD_PATH=/ops/board overlaps KAIROS_ADMIN_PREFIX=/ops"
    ):
        load_settings()


def test_the_dashboard_can_be_moved_or_turned_off(asgi_client: AsgiClients) -> None:
    moved = create_app(config("/users"), Settings(dashboard_path="/board"))
    assert asgi_client(moved, client=LOCAL).get("/board/login").status_code == 200
    off = create_app(config("/users"), Settings(dashboard=False))
    answer = asgi_client(off, client=LOCAL).get("/admin/login")
    assert answer.status_code == 404 and answer.json()["type"] == "route_not_found"
