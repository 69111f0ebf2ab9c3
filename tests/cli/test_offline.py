"""``kairos init`` and ``kairos validate`` with no KAIROS_* variable set.

Every template must be a config an operator can start on at once: it validates with ``--strict``
and the real gateway (``kairos run``) answers ``/ready`` on it. The backends it names are not
listening; that is fine for readiness, and a request to a route shows the route is live (an
upstream error, or the policy's own answer, never ``route_not_found``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.cli import main
from kairos.cli.offline import TEMPLATES, template_text
from tests.processes import ROOT, kairos_run

TEMPLATE_DIR = ROOT / "kairos" / "cli" / "templates"


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    env.pop("JWT_SECRET", None)  # the jwt template must validate on its placeholder alone
    env["PYTHONPATH"] = str(ROOT)  # for the runs whose working directory is not the checkout
    env["KAIROS_DRAIN_DELAY"] = "0"  # a gateway stopped by the test exits at once
    return env


def kairos(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The ``kairos`` command run in this process (``kairos.cli.main``, the console script's
    entry point) in ``cwd`` with the environment of ``_env()``, its output captured: the same code
    as ``python -m kairos`` without an interpreter start per call. ``test_the_command_as_a_process``
    runs the console script itself."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(_env())
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["kairos", *args], code, out.getvalue(), err.getvalue())


def test_the_command_as_a_process(tmp_path: Path) -> None:
    """The console script end to end: init then validate, as processes, with their exit codes."""
    out = tmp_path / "config.json"
    run = [sys.executable, "-m", "kairos"]
    written = subprocess.run(
        [*run, "init", "-o", str(out)], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert written.returncode == 0, written
    checked = subprocess.run(
        [*run, "validate", str(out), "--strict"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and checked.stdout.startswith(f"{out}: OK"), checked


def _init(template: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kairos("init", "--template", template, "-o", str(out), *extra)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def _leftovers(directory: Path, *keep: str) -> list[str]:
    """Files in ``directory`` other than ``keep``: a temporary file left behind shows up here."""
    return sorted(path.name for path in directory.iterdir() if path.name not in keep)


# -- the templates ---------------------------------------------------------------------------------


def test_every_packaged_template_is_offered_and_every_offered_one_is_packaged() -> None:
    assert sorted(path.stem for path in TEMPLATE_DIR.glob("*.json")) == sorted(TEMPLATES)
    assert set(TEMPLATES) == {"basic", "jwt", "rate-limit", "websocket", "ai"}


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_has_no_required_variable_and_explains_itself(template: str) -> None:
    text = template_text(template)
    doc = json.loads(text)
    assert doc["version"] == 1
    assert "_comment" in doc and f"template: {template}" in doc["_comment"]
    assert doc["routers"], "a starter config with no route would answer 404 to everything"
    # ${VAR} without a default would fail validation where the variable is unset.
    for key, value in _strings(doc):
        if "${" in value and not key.startswith("_"):
            assert ":-" in value, f"{key}: {value!r} needs a default"


def _strings(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [found for k, item in value.items() for found in _strings(item, str(k))]
    if isinstance(value, list):
        return [found for item in value for found in _strings(item, key)]
    return []


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_writes_the_template_and_it_validates_strictly(template: str, tmp_path: Path) -> None:
    out = tmp_path / f"{template}.json"
    result = _init(template, out)
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == template_text(template)
    routes = len(json.loads(out.read_text())["routers"])
    lines = result.stdout.splitlines()
    assert lines[0] == f"Wrote {out} (template {template}, {routes} route(s))."
    assert f"Next: kairos validate {out}" in lines
    assert f"Then: kairos run --config {out}" in lines
    assert _leftovers(tmp_path, out.name) == []

    checked = kairos("validate", str(out), "--strict")
    assert (checked.returncode, checked.stdout) == (0, f"{out}: OK ({routes} route(s), 0 warning(s))\n")
    as_json = _json(kairos("validate", str(out), "--strict", "--output", "json"))
    assert as_json == {
        "file": str(out),
        "valid": True,
        "strict": True,
        "routes": routes,
        "errors": [],
        "warnings": [],
    }


# What a request to one route of each template answers, with nothing listening behind it.
PROBES: dict[str, tuple[str, str, int | None]] = {
    "basic": ("GET", "/api/users/7", None),
    "jwt": ("GET", "/users/me", 401),  # no token: refused before any upstream
    "rate-limit": ("POST", "/login", None),
    "websocket": ("GET", "/ws/chat/lobby", None),  # no upgrade: the HTTP route on the same path
    "ai": ("POST", "/support", None),
}


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_gateway_starts_on_every_template(template: str, tmp_path: Path) -> None:
    config = json.loads(template_text(template))
    with kairos_run(tmp_path, config) as server:
        ready = httpx.get(f"{server.url}/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["routes"] == len(config["routers"])
        method, path, status = PROBES[template]
        answer = httpx.request(method, f"{server.url}{path}", timeout=15)
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        assert body.get("type") != "route_not_found", (template, answer.status_code, answer.text)
        if status is not None:
            assert answer.status_code == status
        if template == "rate-limit":
            assert answer.headers["X-RateLimit-Limit"] == "5"
        log = server.output()
    assert "Traceback" not in log


def test_init_defaults_to_basic_in_config_json_of_the_working_directory(tmp_path: Path) -> None:
    result = kairos("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "config.json").read_text(encoding="utf-8") == template_text("basic")
    assert _leftovers(tmp_path, "config.json") == []


# -- init: refusing, forcing, failing --------------------------------------------------------------


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    out.write_text('{"mine": true}\n')
    result = _init("jwt", out)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {out} already exists; use --force to overwrite it"]
    assert result.stdout == ""
    assert out.read_text() == '{"mine": true}\n'
    assert _leftovers(tmp_path, out.name) == []

    as_json = kairos("--output", "json", "init", "-t", "jwt", "-o", str(out))
    assert as_json.returncode == 1
    assert _json(as_json) == {"error": f"{out} already exists; use --force to overwrite it", "type": "exists"}
    assert out.read_text() == '{"mine": true}\n'


def test_init_force_overwrites_and_keeps_the_file_mode(tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    out.write_text('{"mine": true}\n')
    out.chmod(0o640)
    result = _init("rate-limit", out, "--force")
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == template_text("rate-limit")
    assert out.stat().st_mode & 0o777 == 0o640
    assert _leftovers(tmp_path, out.name) == []


def test_init_unknown_template_exits_2_naming_the_valid_ones(tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    result = _init("grpc", out)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: unknown template 'grpc'; use one of basic, jwt, rate-limit, websocket, ai"
    ]
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_init_into_a_missing_directory_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "nowhere" / "config.json"
    result = _init("basic", out)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: cannot write {out}: No such file or directory"]
    assert _leftovers(tmp_path) == []


def test_init_json_answer(tmp_path: Path) -> None:
    out = tmp_path / "gw.json"
    result = kairos("--output", "json", "init", "--template", "websocket", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert _json(result) == {"file": str(out), "template": "websocket", "written": True}
    assert out.read_text(encoding="utf-8") == template_text("websocket")


# -- validate: the JSON document and the exit codes ------------------------------------------------


def _write(tmp_path: Path, doc: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


ROUTE = {
    "external_path": "/a",
    "internal_path": "/a",
    "methods": ["GET"],
    "backends": [{"host": "http://127.0.0.1", "port": 9}],
}
WARNED = {"version": 1, "routers": [ROUTE], "colour": "red"}


@pytest.mark.parametrize("before", [True, False], ids=["output-before-command", "output-after-command"])
def test_validate_json_for_a_valid_file(tmp_path: Path, before: bool) -> None:
    path = _write(tmp_path, WARNED)
    args = (
        ["--output", "json", "validate", str(path)] if before else ["validate", str(path), "--output", "json"]
    )
    result = kairos(*args)
    assert result.returncode == 0
    assert _json(result) == {
        "file": str(path),
        "valid": True,
        "strict": False,
        "routes": 1,
        "errors": [],
        "warnings": ["colour: unknown key, ignored"],
    }
    assert result.stderr == ""


def test_validate_json_for_an_invalid_file(tmp_path: Path) -> None:
    bad_route = {**ROUTE, "backends": [{"host": "http://127.0.0.1", "port": 70000}]}
    path = _write(tmp_path, {"version": 1, "routers": [bad_route], "colour": "red"})
    result = kairos("--output", "json", "validate", str(path))
    assert result.returncode == 1
    assert _json(result) == {
        "file": str(path),
        "valid": False,
        "strict": False,
        "routes": None,
        "errors": ["routers[0].backends[0].port: must be between 1 and 65535 (got 70000)"],
        "warnings": ["colour: unknown key, ignored"],
    }


def test_validate_strict_fails_on_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, WARNED)
    result = kairos("--output", "json", "validate", "--strict", str(path))
    assert result.returncode == 1
    assert _json(result) == {
        "file": str(path),
        "valid": False,
        "strict": True,
        "routes": 1,
        "errors": [],
        "warnings": ["colour: unknown key, ignored"],
    }
    text = kairos("validate", "--strict", str(path))
    assert text.returncode == 1
    assert text.stdout.splitlines() == [
        f"{path}: INVALID with --strict, 1 warning(s)",
        "  warning: colour: unknown key, ignored",
    ]
    # Without --strict the same file passes.
    assert kairos("validate", str(path)).returncode == 0


def test_validate_a_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = kairos("validate", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {missing}: cannot read: No such file or directory"]

    as_json = kairos("--output", "json", "validate", "--strict", str(missing))
    assert as_json.returncode == 2
    assert _json(as_json) == {
        "file": str(missing),
        "valid": False,
        "strict": True,
        "routes": None,
        "errors": ["(file): cannot read: No such file or directory"],
        "warnings": [],
    }


def test_validate_a_directory_exits_2(tmp_path: Path) -> None:
    result = kairos("validate", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path}: cannot read: Is a directory"]


def test_validate_broken_json_is_invalid_not_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1,')
    result = kairos("--output", "json", "validate", str(path))
    assert result.returncode == 1
    document = _json(result)
    assert document["valid"] is False and document["routes"] is None
    assert document["errors"] == [
        "(file): invalid JSON at line 1 column 15: Expecting property name enclosed in double quotes"
    ]
