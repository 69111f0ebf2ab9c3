"""ip_filter through the real gateway: global and per-route allow/deny lists, 403 ``forbidden``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kairos.config import ConfigError, load_data
from kairos.config.model import IpFilterConfig
from kairos.middleware.ipfilter import IpFilter
from tests.processes import Server, backend, gateway_server, route


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    up = [backend(upstream)]
    config = {
        "version": 1,
        "trusted_proxies": ["127.0.0.1/32"],  # so the tests can present client addresses via XFF
        "ip_filter": {"deny": ["203.0.113.0/24"]},
        "routers": [
            route("/public", "/echo/public", up),
            route(
                "/internal", "/echo/internal", up, ip_filter={"allow": ["198.51.100.0/24", "2001:db8::/32"]}
            ),
            route("/open", "/echo/open", up, ip_filter={}),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def via(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def forbidden(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.json()["type"] == "forbidden"


def test_global_deny_list(client: httpx.Client) -> None:
    assert forbidden(client.get("/public", headers=via("203.0.113.9")))
    assert client.get("/public", headers=via("198.51.100.7")).status_code == 200
    assert client.get("/public").status_code == 200  # the peer itself, 127.0.0.1


def test_route_allow_list_replaces_the_global_filter(client: httpx.Client) -> None:
    assert client.get("/internal", headers=via("198.51.100.7")).status_code == 200
    assert client.get("/internal", headers=via("2001:db8::5")).status_code == 200
    assert forbidden(client.get("/internal", headers=via("192.0.2.1")))
    assert forbidden(client.get("/internal"))  # 127.0.0.1 is not on the allow list
    assert client.get("/open", headers=via("203.0.113.9")).status_code == 200  # empty filter: no global deny


def test_forged_forwarded_for_does_not_get_past_a_deny_list(module_tmp: Path, upstream: Server) -> None:
    config = {
        "version": 1,
        "ip_filter": {"deny": ["127.0.0.0/8"]},  # no trusted proxies: the peer is the client
        "routers": [route("/x", "/echo/x", [backend(upstream)])],
    }
    with gateway_server(module_tmp, config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.get("/x", headers=via("198.51.100.7"))
        assert forbidden(response)
        assert "127.0.0.1" in response.json()["error"]
        assert http.get("/health").status_code == 200  # built-in endpoints are not filtered


def test_filter_logic_and_config_errors() -> None:
    both = IpFilter(IpFilterConfig(allow=("10.0.0.0/8",), deny=("10.1.0.0/16",)))
    assert both.admits("10.2.3.4") and not both.admits("10.1.2.3") and not both.admits("11.0.0.1")
    assert not both.admits("not-an-ip")
    assert IpFilter(IpFilterConfig(deny=("10.0.0.0/8",))).admits("not-an-ip")
    with pytest.raises(ConfigError) as error:
        load_data(
            {"version": 1, "routers": [route("/x", "/", [backend(1)], ip_filter={"allow": ["300.1.1.1"]})]}
        )
    assert 'routers[0].ip_filter.allow[0]: not an IP address or CIDR (got "300.1.1.1")' in str(error.value)
