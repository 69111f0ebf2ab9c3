"""The Grafana dashboard in examples/ is built on names the gateway really exports: every
``kairos_*`` series a panel queries must appear in a live scrape of ``/metrics``, so renaming a
metric without updating the dashboard fails here instead of on an operator's screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import ROOT, Server, backend, gateway_server, route

DASHBOARD = ROOT / "examples" / "grafana" / "kairos-dashboard.json"
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
    "gauge": ("",),
}


def queried_series(dashboard: dict[str, Any]) -> set[str]:
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable.get("query", "") for variable in dashboard["templating"]["list"]]
    return {name for expression in expressions for name in re.findall(r"\bkairos_[a-z_]+", expression)}


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} overflows the 24-column grid"
    assert len(queried_series(dashboard)) >= 15


def test_every_queried_series_is_exported(tmp_path: Path, upstream: Server) -> None:
    config = {"version": 1, "routers": [route("/users/{id}", "/echo/users/{id}", [backend(upstream)])]}
    with gateway_server(tmp_path, config) as gateway:
        httpx.get(f"{gateway.url}/users/1", timeout=5).raise_for_status()
        text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SERIES_SUFFIXES.get(family.type, ("",))
    }
    missing = queried_series(json.loads(DASHBOARD.read_text())) - exported
    assert not missing, f"the dashboard queries series /metrics does not export: {sorted(missing)}"
