"""The ``kairos`` commands that manage a running gateway, against a real gateway process (with
and without an admin token) and against a gateway that is down."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.cli import main
from tests.processes import ROOT, Server, free_port, kairos_run

TOKEN = "cli-admin-token-0123456789"
SECRET = "a-jwt-secret-that-is-long-enough-0123456789"


def kairos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``kairos`` command with ARGS and no KAIROS_* variable but those given, run in this
    process (``kairos.cli.main``, the console script's entry point) with its stdout and stderr
    captured: the same code as ``python -m kairos`` without ~1 s of interpreter start (with
    coverage on) per call. The gateway stays a real process; ``test_the_command_as_a_process``
    runs the console script itself."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        for key in [key for key in os.environ if key.startswith("KAIROS_")]:
            del os.environ[key]
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["kairos", *args], code, out.getvalue(), err.getvalue())


def as_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m kairos ARGS`` as a real process."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    return subprocess.run(
        [sys.executable, "-m", "kairos", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def route(path: str, upstream: Server, methods: tuple[str, ...] = ("GET",), **extra: Any) -> dict[str, Any]:
    return {
        "external_path": path,
        "internal_path": "/echo",
        "methods": list(methods),
        "backends": [{"host": "http://127.0.0.1", "port": upstream.port}],
        **extra,
    }


def base_config(upstream: Server, dead_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "jwt": {"secret": SECRET, "algorithm": "HS256"},
        "routers": [
            route("/cats/{id}", upstream),
            route("/dogs", upstream, ("GET", "POST")),
            {
                "external_path": "/dead",
                "internal_path": "/x",
                "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": dead_port}],
                "circuit_breaker": {
                    "failure_threshold": 1,
                    "success_threshold": 1,
                    "reset_timeout_ms": 600000,
                },
            },
        ],
    }


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with kairos_run(module_tmp, base_config(upstream, free_port())) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {"version": 1, "routers": [route("/cats/{id}", upstream)]}
    with kairos_run(module_tmp, config, env={"KAIROS_ADMIN_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture
def fresh(tmp_path: Path, upstream: Server) -> Iterator[Server]:
    """A gateway of its own, for the commands that change the config."""
    with kairos_run(tmp_path, base_config(upstream, free_port())) as server:
        yield server


def config_file(server: Server) -> Path:
    env = server_env(server)
    return Path(env["KAIROS_CONFIG_PATH"])


def server_env(server: Server) -> dict[str, str]:
    """The environment the gateway process runs with (its config path lives there)."""
    raw = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if b"=" in item)
    return {key: value for key, _, value in pairs}


# -- unreachable and refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("health",),
        ("metrics",),
        ("routes", "list"),
        ("routes", "show", "/x"),
        ("routes", "test", "GET", "/x"),
        ("dump",),
        ("reload",),
    ],
)
def test_a_gateway_that_is_down_is_one_line_and_exit_2(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = kairos(*command, "--url", url)
    assert result.returncode == 2, result
    assert result.stderr.strip() == f"error: cannot reach the gateway at {url}: connection refused"
    assert "Traceback" not in result.stderr + result.stdout


def test_down_with_json_output_is_one_json_document() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = kairos("--output", "json", "health", "--url", url)
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "error": f"cannot reach the gateway at {url}: connection refused",
        "type": "unreachable",
    }


def test_a_missing_or_wrong_token_names_the_setting_to_fix(guarded: Server) -> None:
    for token in (None, "wrong"):
        args = ["routes", "list", "--url", guarded.url] + (["--token", token] if token else [])
        result = kairos(*args)
        assert result.returncode == 2, result
        assert "KAIROS_ADMIN_TOKEN" in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


def test_token_before_or_after_the_command_or_from_the_environment(guarded: Server) -> None:
    after = kairos("routes", "list", "--url", guarded.url, "--token", TOKEN, "--output", "json")
    before = kairos("--url", guarded.url, "--token", TOKEN, "--output", "json", "routes", "list")
    from_env = kairos(
        "routes", "list", "--output", "json", env={"KAIROS_URL": guarded.url, "KAIROS_ADMIN_TOKEN": TOKEN}
    )
    for result in (after, before, from_env):
        assert result.returncode == 0, result
        assert [r["external_path"] for r in json.loads(result.stdout)["routes"]] == ["/cats/{id}"]


def test_the_option_after_the_command_wins(guarded: Server) -> None:
    result = kairos("--token", "wrong", "routes", "list", "--url", guarded.url, "--token", TOKEN)
    assert result.returncode == 0, result


# -- health and metrics ------------------------------------------------------------------------


def test_health_is_degraded_when_a_circuit_is_open(fresh: Server) -> None:
    healthy = kairos("health", "--url", fresh.url)
    assert healthy.returncode == 0, healthy
    assert healthy.stdout.startswith("healthy: kairos ")
    assert "3 routes" in healthy.stdout and "2/2 backends healthy" in healthy.stdout
    assert httpx.get(f"{fresh.url}/dead", timeout=10).status_code == 502  # opens the circuit (threshold 1)
    degraded = kairos("health", "--backends", "--url", fresh.url, "--output", "json")
    assert degraded.returncode == 1, degraded
    answer = json.loads(degraded.stdout)
    assert answer["status"] == "degraded" and answer["ready"] is True
    assert any("circuit open" in problem for problem in answer["problems"])
    states = {b["key"]: b["circuit"]["state"] for b in answer["backends"]}
    assert sorted(states.values()) == ["closed", "open"]
    text = kairos("health", "--backends", "--url", fresh.url)
    assert text.returncode == 1
    assert text.stdout.startswith("degraded:")
    assert "circuit open" in text.stdout
    assert "backend\thealthy\tcircuit" in text.stdout  # not a terminal: tab-separated rows


def test_metrics_per_route_in_every_format(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for cat in range(5):
            assert http.get(f"/cats/{cat}").status_code == 200
        assert http.get("/nope").status_code == 404
    table = kairos("metrics", "--url", gateway.url)
    assert table.returncode == 0, table
    rows = {line.split("\t")[0]: line.split("\t") for line in table.stdout.splitlines()[1:]}
    assert int(rows["/cats/{id}"][1]) >= 5
    as_json = kairos("metrics", "--format", "json", "--url", gateway.url)
    figures = {r["route"]: r for r in json.loads(as_json.stdout)["routes"]}
    cats = figures["/cats/{id}"]
    assert cats["requests"] >= 5 and cats["errors"] == 0 and cats["error_rate"] == 0
    assert 0 < cats["p50_ms"] <= cats["p99_ms"]
    same = kairos("--output", "json", "metrics", "--url", gateway.url)
    assert {r["route"] for r in json.loads(same.stdout)["routes"]} == set(figures)
    raw = kairos("metrics", "--format", "prometheus", "--url", gateway.url)
    assert 'kairos_requests_total{code="200",method="GET",route="/cats/{id}",source="upstream"}' in raw.stdout
    bad = kairos("metrics", "--format", "yaml", "--url", gateway.url)
    assert bad.returncode == 2 and "--format" in bad.stderr


# -- routes ------------------------------------------------------------------------------------


def test_routes_list_and_show(gateway: Server) -> None:
    listed = kairos("routes", "list", "--url", gateway.url)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t") == ["#", "methods", "path", "protocol", "backends", "auth"]
    assert [line.split("\t")[2] for line in lines[1:]] == ["/cats/{id}", "/dogs", "/dead"]
    shown = kairos("routes", "show", "/cats/{id}", "--url", gateway.url)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["external_path"] == "/cats/{id}"
    missing = kairos("routes", "show", "/cows", "--url", gateway.url)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: Route not found: /cows")


def test_routes_test_dry_runs_the_router(gateway: Server) -> None:
    matched = kairos("routes", "test", "GET", "/cats/7?x=1", "-H", "Host: api.example", "--url", gateway.url)
    assert matched.returncode == 0, matched
    assert matched.stdout.startswith("GET /cats/7?x=1 -> /cats/{id} (routers[0], http)")
    assert "params: id=7" in matched.stdout
    assert "/echo?x=1" in matched.stdout
    as_json = json.loads(
        kairos("routes", "test", "POST", "/dogs", "--output", "json", "--url", gateway.url).stdout
    )
    assert as_json["matched"] is True and as_json["route"]["external_path"] == "/dogs"
    assert as_json["backends"][0]["circuit"]["state"] == "closed"
    nothing = kairos("routes", "test", "GET", "/cows", "--url", gateway.url)
    assert nothing.returncode == 1
    assert "no route (404 route_not_found)" in nothing.stdout
    wrong_method = kairos("routes", "test", "DELETE", "/dogs", "--url", gateway.url)
    assert wrong_method.returncode == 1 and "405" in wrong_method.stdout
    bad_header = kairos("routes", "test", "GET", "/dogs", "-H", "no-colon", "--url", gateway.url)
    assert bad_header.returncode == 2 and "Name: value" in bad_header.stderr


def test_routes_add_and_rm(fresh: Server, tmp_path: Path, upstream: Server) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(route("/cows/{id}", upstream)))
    added = kairos("routes", "add", "--file", str(one), "--url", fresh.url)
    assert added.returncode == 0, added
    assert "+ route GET /cows/{id}" in added.stdout
    assert httpx.get(f"{fresh.url}/cows/1", timeout=10).status_code == 200
    again = kairos("routes", "add", "-f", str(one), "--url", fresh.url)
    assert again.returncode == 1 and "already exists" in again.stderr
    several = tmp_path / "several.json"
    several.write_text(json.dumps([route("/owls", upstream), {"external_path": "/bad", "methods": ["GET"]}]))
    refused = kairos("routes", "add", "-f", str(several), "--url", fresh.url)
    assert refused.returncode == 1
    assert "routers[5]" in refused.stderr  # every problem, by its path
    assert httpx.get(f"{fresh.url}/owls", timeout=10).status_code == 404  # all or nothing
    removed = kairos("routes", "rm", "/cows/{id}", "--url", fresh.url, "--output", "json")
    assert removed.returncode == 0
    assert json.loads(removed.stdout)["removed"] == "GET /cows/{id}"
    assert httpx.get(f"{fresh.url}/cows/1", timeout=10).status_code == 404
    assert kairos("routes", "rm", "/cows/{id}", "--url", fresh.url).returncode == 1


# -- dump, diff, apply, reload -----------------------------------------------------------------


def test_dump_masks_secrets_and_diffs_clean_against_itself(gateway: Server, tmp_path: Path) -> None:
    dumped = tmp_path / "live.json"
    result = kairos("dump", "-o", str(dumped), "--url", gateway.url)
    assert result.returncode == 0, result
    document = json.loads(dumped.read_text())
    assert document["jwt"]["secret"] == "***"
    assert SECRET not in dumped.read_text()
    assert json.loads(kairos("dump", "--url", gateway.url).stdout) == document
    same = kairos("diff", str(dumped), "--url", gateway.url)
    assert same.returncode == 0, same
    assert same.stdout.startswith("no differences")


def test_diff_reports_per_route_changes(gateway: Server, tmp_path: Path, upstream: Server) -> None:
    document = json.loads(kairos("dump", "--url", gateway.url).stdout)
    document["routers"][0]["timeout_ms"] = 1234
    document["routers"].pop(1)
    document["routers"].append(route("/owls", upstream))
    document["jwt"]["secret"] = "another-secret-is-not-compared-0123456789"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(document))
    text = kairos("diff", str(changed), "--url", gateway.url)
    assert text.returncode == 1
    assert "+ route GET /owls" in text.stdout
    assert "- route GET,POST /dogs" in text.stdout
    assert "~ route GET /cats/{id}" in text.stdout and "timeout_ms: (absent) -> 1234" in text.stdout
    assert "jwt" not in text.stdout
    as_json = json.loads(kairos("diff", str(changed), "--output", "json", "--url", gateway.url).stdout)
    assert as_json["routes"]["added"] == ["GET /owls"]
    assert as_json["routes"]["changed"]["GET /cats/{id}"] == [
        {"path": "timeout_ms", "live": None, "file": 1234}
    ]
    missing = kairos("diff", str(tmp_path / "nope.json"), "--url", gateway.url)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_apply_dry_run_prune_and_all_or_nothing(fresh: Server, tmp_path: Path, upstream: Server) -> None:
    document = json.loads(kairos("dump", "--url", fresh.url).stdout)
    document["routers"][0]["internal_path"] = "/whoami"
    document["routers"] = [document["routers"][0], route("/owls", upstream)]  # /dogs and /dead left out
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps(document))
    dry = kairos("apply", str(wanted), "--dry-run", "--url", fresh.url, "--output", "json")
    assert dry.returncode == 0, dry
    plan = json.loads(dry.stdout)
    assert (
        plan["applied"] is False
        and plan["created"] == ["GET /owls"]
        and plan["updated"] == ["GET /cats/{id}"]
    )
    assert plan["kept"] == ["GET,POST /dogs", "GET /dead"]
    assert httpx.get(f"{fresh.url}/owls", timeout=10).status_code == 404  # nothing changed
    applied = kairos("apply", str(wanted), "--url", fresh.url)
    assert applied.returncode == 0, applied
    assert httpx.get(f"{fresh.url}/owls", timeout=10).status_code == 200
    assert httpx.get(f"{fresh.url}/dogs", timeout=10).status_code == 200  # kept without --prune
    assert kairos("diff", str(wanted), "--url", fresh.url).returncode == 1  # the file lacks /dogs, /dead
    pruned = kairos("apply", str(wanted), "--prune", "--url", fresh.url, "--output", "json")
    assert json.loads(pruned.stdout)["pruned"] == ["GET,POST /dogs", "GET /dead"]
    assert httpx.get(f"{fresh.url}/dogs", timeout=10).status_code == 404
    assert kairos("diff", str(wanted), "--url", fresh.url).returncode == 0
    idle = kairos("apply", str(wanted), "--url", fresh.url)
    assert idle.returncode == 0 and "nothing to apply" in idle.stdout
    # The file on disk now holds what was applied (the jwt secret kept, not "***").
    saved = json.loads(config_file(fresh).read_text())
    assert [r["external_path"] for r in saved["routers"]] == ["/cats/{id}", "/owls"]
    assert saved["jwt"]["secret"] == SECRET
    document["routers"].append({"external_path": "/broken", "internal_path": "/x", "methods": ["BREW"]})
    document["routers"][1]["internal_path"] = "/changed"
    wanted.write_text(json.dumps(document))
    refused = kairos("apply", str(wanted), "--url", fresh.url)
    assert refused.returncode == 1, refused
    assert "routers[2]" in refused.stderr
    assert json.loads(config_file(fresh).read_text()) == saved  # all or nothing


def test_reload_and_a_broken_file(fresh: Server) -> None:
    ok = kairos("reload", "--url", fresh.url)
    assert ok.returncode == 0, ok
    assert "Configuration reloaded successfully" in ok.stdout
    path = config_file(fresh)
    good = path.read_text()
    path.write_text('{"version": 1, "routers": [{"external_path": "nope"}]}')
    try:
        broken = kairos("reload", "--url", fresh.url, "--output", "json")
        assert broken.returncode == 1, broken
        answer = json.loads(broken.stdout)
        assert answer["type"] == "config" and answer["status"] == 422
        assert any("external_path" in problem for problem in answer["problems"])
        text = kairos("reload", "--url", fresh.url)
        assert text.returncode == 1 and "external_path" in text.stderr
        assert httpx.get(f"{fresh.url}/cats/1", timeout=10).status_code == 200  # old config serves
    finally:
        path.write_text(good)


def test_the_command_as_a_process(gateway: Server) -> None:
    """The console script end to end: a process, its exit code, stdout and stderr."""
    listed = as_process("routes", "list", "--output", "json", env={"KAIROS_URL": gateway.url})
    assert listed.returncode == 0, listed
    assert [r["external_path"] for r in json.loads(listed.stdout)["routes"]] == [
        "/cats/{id}",
        "/dogs",
        "/dead",
    ]
    url = f"http://127.0.0.1:{free_port()}"
    down = as_process("health", "--url", url)
    assert down.returncode == 2
    assert down.stderr.strip() == f"error: cannot reach the gateway at {url}: connection refused"
