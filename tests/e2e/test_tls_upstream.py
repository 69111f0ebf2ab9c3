"""https:// and wss:// backends: verified against a private CA (``tls_ca_file``), refused when the
certificate cannot be verified, and HTTP/2 negotiated by ALPN for ``"http2": true``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from kairos.config import ConfigError, load_data
from tests.processes import Server, backend, free_port, gateway_server, route, server_process


@pytest.fixture(scope="module")
def pki(module_tmp: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": module_tmp / "ca.pem", "cert": module_tmp / "server.pem", "key": module_tmp / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@pytest.fixture(scope="module")
def tls_upstream(module_tmp: Path, pki: dict[str, Path]) -> Iterator[Server]:
    port = free_port()
    args = [
        "-m",
        "tests.servers.tls_upstream",
        "--port",
        str(port),
        "--cert",
        str(pki["cert"]),
        "--key",
        str(pki["key"]),
    ]
    with server_process(args, port, module_tmp / "tls-upstream.log") as server:
        yield server


@pytest.fixture(scope="module")
def h2_tls_upstream(module_tmp: Path, pki: dict[str, Path]) -> Iterator[Server]:
    port = free_port()
    args = [
        "-m",
        "hypercorn",
        "tests.servers.h2_upstream:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(pki["cert"]),
        "--keyfile",
        str(pki["key"]),
    ]
    with server_process(args, port, module_tmp / "h2-tls.log") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path, pki: dict[str, Path], tls_upstream: Server, h2_tls_upstream: Server
) -> Iterator[Server]:
    ca = str(pki["ca"])
    config = {
        "version": 1,
        "routers": [
            route(
                "/trusted/{*rest}", "/echo/{*rest}", [backend(tls_upstream, scheme="https", tls_ca_file=ca)]
            ),
            route("/untrusted", "/echo", [backend(tls_upstream, scheme="https")]),
            route("/unverified", "/echo", [backend(tls_upstream, scheme="https", tls_verify=False)]),
            route("/h2", "/h2", [backend(h2_tls_upstream, scheme="https", tls_ca_file=ca, http2=True)]),
            route(
                "/chat", "/ws", [backend(tls_upstream, scheme="wss", tls_ca_file=ca)], protocol="websocket"
            ),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def test_https_backend_verified_with_a_private_ca(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.get("/trusted/a?x=1")
        assert response.status_code == 200
        assert response.json()["raw_path"] == "/echo/a?x=1"


def test_unverifiable_certificate_is_a_502_and_verification_can_be_turned_off(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        refused = client.get("/untrusted")
        assert refused.status_code == 502
        assert refused.json()["type"] == "upstream"
        assert "certificate" in refused.json()["error"].lower()
        assert client.get("/unverified").status_code == 200


def test_http2_over_tls_by_alpn(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/h2").json()["http_version"] == "2"


def test_wss_backend(gateway: Server) -> None:
    async def exercise() -> str:
        async with connect(gateway.url.replace("http://", "ws://") + "/chat") as socket:
            await socket.send("over tls")
            return str(await socket.recv())

    assert asyncio.run(asyncio.wait_for(exercise(), 15)) == "over tls"


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "routers": [route("/x", "/", [backend(443, scheme="https", tls_ca_file="/nope.pem")])],
    }
    with pytest.raises(ConfigError) as error:
        load_data(config)
    assert "routers[0].backends[0].tls_ca_file: cannot read the CA file" in str(error.value)
