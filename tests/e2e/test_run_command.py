"""``kairos run`` / ``python -m kairos`` and the ``make run`` experience (demo + embedded default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.processes import ROOT, Server, backend, free_port, route, stop, wait_for_port


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["KAIROS_DRAIN_DELAY"] = "0"  # a gateway stopped by the test exits at once
    return {**env, **extra}


def test_kairos_run_with_env_and_two_workers(tmp_path: Path, upstream: Server) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"version": 1, "routers": [route("/who", "/whoami", [backend(upstream)])]}))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kairos", "run", "--workers", "2"],
            cwd=tmp_path,
            env=_env(KAIROS_HOST="127.0.0.1", KAIROS_PORT=str(port), KAIROS_CONFIG_PATH=str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, timeout=30)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(50):  # both workers answer; every answer is proxied
                ready = client.get("/ready")
                if ready.status_code == 200:
                    break
            answers = {client.get("/who").json()["server"] for _ in range(20)}
            assert answers == {"a"}
            assert client.get("/health").json()["status"] == "healthy"
    finally:
        stop(process)
    output = log.read_text()
    assert output.count("Kairos 0.1.0 started") == 2, output  # one line per worker process


def test_make_run_demo_answers_with_embedded_default(tmp_path: Path) -> None:
    """What `make run` starts: the demo upstream on 9101 and the gateway with no config file."""
    demo_port, gateway_port = 9101, free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "kairos.demo", "--port", str(demo_port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(gateway_port)],
            cwd=tmp_path,  # no config.json here: the embedded default applies
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(demo_port, demo)
        wait_for_port(gateway_port, gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port}", timeout=10) as client:
            hello = client.get("/demo/hello")
            assert hello.status_code == 200
            assert hello.json()["message"].startswith("Hello from the Kairos demo upstream")
            assert client.put("/demo/items/42").json() == {"id": "42", "method": "PUT"}
    finally:
        stop(gateway)
        stop(demo)
    assert "embedded default config" in log.read_text()
