"""The ``kairos`` command and startup on bad configs, run as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from kairos import __version__
from tests.processes import ROOT, free_port, gateway_server, stop, wait_for_port

SECRET = "a-test-secret-that-is-long-enough-0123456789"
METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS, PATCH, TRACE"


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    return {**env, "KAIROS_DRAIN_DELAY": "0", **extra}  # a gateway stopped by the test exits at once


def kairos(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kairos", *args],
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(tmp_path: Path, doc: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def route(external: str, methods: tuple[str, ...] = ("GET",), **extra: Any) -> dict[str, Any]:
    return {
        "external_path": external,
        "internal_path": "/x",
        "methods": list(methods),
        "backends": [{"host": "http://127.0.0.1", "port": 9}],
        **extra,
    }


BAD = {
    "version": 1,
    "jwt": {"secret": "short-secret-value"},
    "routers": [
        route("/ok"),
        {**route("/a", ("GET", "FETCH")), "backends": [{"host": "http://127.0.0.1", "port": 70000}]},
        route("/b", retry={"initial_backoff_ms": 900, "max_backoff_ms": 100}),
        route("/ok", colour="red"),
    ],
}
BAD_LINES = [
    "jwt.secret: must be at least 32 characters (has 18)",
    f'routers[1].methods[1]: not an HTTP method; use one of {METHODS} (got "FETCH")',
    "routers[1].backends[0].port: must be between 1 and 65535 (got 70000)",
    "routers[2].retry: initial_backoff_ms (900) cannot be greater than max_backoff_ms (100)",
]


# -- kairos validate ---------------------------------------------------------------------------


def test_validate_prints_every_error_and_the_warnings_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = kairos("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}: INVALID, 4 error(s)",
        *(f"  error: {line}" for line in BAD_LINES),
        "  warning: routers[3].colour: unknown key, ignored",
        "  warning: routers[3].external_path: duplicates routers[0] (/ok); "
        'methods GET always go to routers[0] (got "/ok")',
        "  warning: routers[3]: is shadowed: no request can ever reach it",
    ]
    assert "short-secret-value" not in result.stdout + result.stderr


def test_validate_ok_with_warnings_exits_0(tmp_path: Path) -> None:
    doc = {
        "_comment": "notes are silent",
        "version": 1,
        "routers": [
            route("/users/{id}", ("GET", "PUT"), _comment="silent too"),
            route("/users/{uid}", ("GET",), retry={"max_retry": 2}),
            route("/other"),
        ],
        "metrcs": {"enabled": True},
    }
    path = write(tmp_path, doc)
    result = kairos("validate", str(path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        "  warning: metrcs: unknown key, ignored",
        "  warning: routers[1].retry.max_retry: unknown key, ignored",
        "  warning: routers[1].external_path: has the same shape as routers[0] (/users/{id}); "
        'methods GET always go to routers[0] (got "/users/{uid}")',
        "  warning: routers[1]: is shadowed: no request can ever reach it",
        f"{path}: OK (3 route(s), 4 warning(s))",
    ]
    assert "_comment" not in result.stdout


def test_validate_clean_file_prints_only_ok(tmp_path: Path) -> None:
    path = write(tmp_path, {"version": 1, "routers": [route("/a"), route("/b")]})
    result = kairos("validate", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: OK (2 route(s), 0 warning(s))\n")


def test_validate_empty_routers_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, {"version": 1, "routers": []})
    result = kairos("validate", str(path))
    assert result.returncode == 0
    assert (
        "  warning: routers: is empty: every request will get 404 route_not_found"
        in result.stdout.splitlines()
    )


def test_validate_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = kairos("validate", str(missing))
    assert result.returncode == 2  # could not check it at all (kairos/cli/output.py's exit codes)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {missing}: cannot read: No such file or directory"]
    broken = write(tmp_path, '{"version": 1,\n "routers": [\n]\n', "broken.json")
    result = kairos("validate", str(broken))
    assert result.returncode == 1
    assert (
        "  error: (file): invalid JSON at line 4 column 1: Expecting ',' delimiter"
        in result.stdout.splitlines()
    )


def test_validate_substitutes_environment_variables(tmp_path: Path) -> None:
    doc = {
        "version": 1,
        "jwt": {"secret": "${GATEWAY_JWT_SECRET}"},
        "routers": [{**route("/a"), "backends": [{"host": "http://${UPSTREAM:-127.0.0.1}", "port": 9}]}],
    }
    path = write(tmp_path, doc)
    assert kairos("validate", str(path), env=_env(GATEWAY_JWT_SECRET=SECRET)).returncode == 0
    result = kairos("validate", str(path), env=_env())
    assert result.returncode == 1
    assert (
        "  error: jwt.secret: environment variable GATEWAY_JWT_SECRET is not set"
        in result.stdout.splitlines()
    )


def test_version_flag() -> None:
    result = kairos("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"kairos {__version__}")


def test_unknown_command_is_a_usage_error() -> None:
    result = kairos("serve")
    assert result.returncode == 2
    assert "No such command 'serve'" in result.stderr


# -- starting the gateway on an invalid file ---------------------------------------------------


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_kairos_run_refuses_an_invalid_config_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    port = free_port()
    result = kairos("run", "--config", str(path), "--port", str(port), "--host", "127.0.0.1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: invalid config, not starting",
        *(f"  error: {line}" for line in BAD_LINES),
    ]
    assert "Uvicorn running" not in result.stdout + result.stderr
    assert _refused(port)


def test_uvicorn_startup_fails_on_an_invalid_config(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "kairos.app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=_env(KAIROS_CONFIG_PATH=str(path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    log = result.stdout + result.stderr
    for line in BAD_LINES:
        assert f"config {path}: {line}" in log
    assert "Application startup failed" in log
    assert "short-secret-value" not in log
    assert _refused(port)


# -- starting the gateway ----------------------------------------------------------------------


def test_missing_config_file_uses_the_embedded_default(tmp_path: Path) -> None:
    with gateway_server(tmp_path, None) as server:
        ready = httpx.get(f"{server.url}/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["routes"] == 4  # the four demo routes of default_config.json
        missing = tmp_path / f"config-{server.port}.json"
        assert not missing.exists()
        log = server.output()
    assert f"config file {missing} not found: using the embedded default config" in log
    assert "config (embedded default) applied (startup): 4 route(s)" in log


def test_kairos_run_serves_a_valid_config(tmp_path: Path) -> None:
    path = write(tmp_path, {"version": 1, "routers": [route("/a"), route("/b")]})
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kairos",
                "run",
                "--config",
                str(path),
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            cwd=ROOT,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["routes"] == 2
        missing = httpx.get(f"http://127.0.0.1:{port}/nowhere", timeout=5)
        assert missing.status_code == 404 and missing.json()["type"] == "route_not_found"
    finally:
        stop(process)
    assert f"config {path} applied (startup): 2 route(s)" in log.read_text()


def test_bad_environment_is_named_by_variable_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kairos", "run"],
        cwd=tmp_path,
        env=_env(KAIROS_PORT="abc", KAIROS_WORKERS="0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert 'KAIROS_PORT: must be an integer (got "abc")' in result.stderr
    assert 'KAIROS_WORKERS: must be at least 1 (got "0")' in result.stderr
    assert "Traceback" not in result.stderr
