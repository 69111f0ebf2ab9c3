"""Bodies stream both ways: a 300 MB transfer must not grow the gateway by more than ~50 MB.

Peak RSS (VmHWM) of the real gateway process is compared with its RSS after warm-up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Server, backend, gateway_server, route, rss_bytes

SIZE = 300 * 1024 * 1024
LIMIT = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {
        "version": 1,
        "routers": [
            route("/stream", "/stream", [backend(upstream)], timeout_ms=120000),
            route("/upload", "/upload", [backend(upstream)], ("POST",), timeout_ms=120000),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:  # warm up pools and imports
            client.get("/stream?size=1048576").raise_for_status()
            client.post("/upload", content=b"x" * 1048576).raise_for_status()
        yield server


def test_300mb_download_streams(gateway: Server) -> None:
    baseline, _ = rss_bytes(gateway.pid)
    received = 0
    with (
        httpx.Client(base_url=gateway.url, timeout=120) as client,
        client.stream("GET", f"/stream?size={SIZE}") as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw(1024 * 1024):
            received += len(chunk)
    _, peak = rss_bytes(gateway.pid)
    assert received == SIZE
    assert peak - baseline < LIMIT, f"gateway grew by {(peak - baseline) / 2**20:.1f} MiB"


def test_300mb_upload_streams(gateway: Server) -> None:
    baseline, _ = rss_bytes(gateway.pid)
    block = b"k" * (1024 * 1024)
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(SIZE // len(block)):
            digest.update(block)
            yield block

    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        result = client.post("/upload", content=body(), headers={"Content-Length": str(SIZE)}).json()
    _, peak = rss_bytes(gateway.pid)
    assert result["bytes"] == SIZE
    assert result["sha256"] == digest.hexdigest()
    assert peak - baseline < LIMIT, f"gateway grew by {(peak - baseline) / 2**20:.1f} MiB"


def test_client_leaving_mid_download_stops_the_upstream_read(gateway: Server) -> None:
    """After the client goes, the gateway stops pulling the body (it would otherwise read all of it)."""
    import socket
    import time

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{gateway.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(f"GET /stream?size={10 * SIZE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 4 * 1024 * 1024:
            received += len(sock.recv(1024 * 1024))
    time.sleep(1.5)  # reading 3 GB would keep the gateway busy for far longer than this
    spent_after_close = cpu_seconds() - before
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/stream?size=10").status_code == 200
    time.sleep(0.5)
    idle = cpu_seconds() - before - spent_after_close
    assert idle < 0.3, f"gateway still busy after the client left ({idle:.2f}s CPU in 0.5s)"
