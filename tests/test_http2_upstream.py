"""Backends marked ``"http2": true`` go through the httpx engine and really speak HTTP/2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, Server, backend, free_port, gateway_server, route, stop, wait_for_port


@pytest.fixture(scope="module")
def h2_upstream(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    log = module_tmp / "h2.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "tests.servers.h2_upstream:app",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        yield Server(process, port, log)
    finally:
        stop(process)


def test_http2_backend_uses_http2(module_tmp: Path, h2_upstream: Server, upstream: Server) -> None:
    config = {
        "version": 1,
        "routers": [
            route("/h2/{id}", "/items/{id}", [backend(h2_upstream, http2=True)], ("GET", "POST")),
            route("/h1", "/echo", [backend(upstream)]),
        ],
    }
    with (
        gateway_server(module_tmp, config) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as client,
    ):
        response = client.post("/h2/7?q=1", content=b"x" * 100_000, headers={"X-Request-ID": "h2-test"})
        assert response.status_code == 200
        data = response.json()
        assert data["http_version"] == "2"
        assert data["path"] == "/items/7"
        assert data["query_string"] == "q=1"
        assert data["body_bytes"] == 100_000
        assert data["x_request_id"] == "h2-test"
        # The default engine still serves HTTP/1.1 backends beside it.
        assert client.get("/h1").json()["server"] == "a"
