"""Fixtures of the client tests: one real upstream and two real gateways for the whole package
(one answering loopback clients without a token, one with ``KAIROS_ADMIN_TOKEN`` and its admin API
moved to ``/admin``), and ``flavour``: every test that takes it runs once with ``KairosClient`` and
once with ``AsyncKairosClient``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from kairos.client import AsyncKairosClient, KairosClient
from tests.client.helpers import Blocking
from tests.processes import Server, backend, gateway_server, route, upstream_server

TOKEN = "client-tests-admin-token-5c2e9a"
GUARDED_PREFIX = "/admin"  # the dashboard steps aside from its default path
CLIENT_VARIABLES = ("KAIROS_URL", "KAIROS_ADMIN_TOKEN", "KAIROS_ADMIN_PREFIX")


@dataclass(frozen=True)
class Gateway:
    """A running gateway process and the config file it reads (and the admin API writes)."""

    server: Server
    config_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


def gateway_routes(upstream: Server) -> list[dict[str, Any]]:
    up = [backend(upstream)]
    return [
        route("/users/{id}", "/echo/users/{id}", up),
        route("/dup", "/echo/dup-get", up, methods=("GET",)),
        route("/dup", "/echo/dup-post", up, methods=("POST",)),
        route("/fast/{id}", "/echo/fast/{id}", up),
        route("/slow", "/slow", up),
        route("/broken", "/status/503", up),
        route("/cached/{id}", "/echo/cached/{id}", up, cache={"ttl_secs": 60}),
        route("/socket", "/ws", up, protocol="websocket"),
    ]


def start(tmp: Path, config: dict[str, Any], env: dict[str, str]) -> Iterator[Gateway]:
    # History sampled every second (the metrics_history tests poll for it); no file watcher, so
    # the generation moves only when a test changes something.
    base = {"KAIROS_METRICS_HISTORY_INTERVAL": "1", "KAIROS_CONFIG_WATCH": "false"}
    with gateway_server(tmp, config, env={**base, **env}) as server:
        yield Gateway(server, tmp / f"config-{server.port}.json")


@pytest.fixture(scope="package")
def package_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client")


@pytest.fixture(scope="package")
def upstream(package_tmp: Path) -> Iterator[Server]:
    """tests/servers/upstream.py for the whole package (overrides the per-module one)."""
    with upstream_server(package_tmp, "client") as server:
        yield server


@pytest.fixture(scope="package")
def gateway(package_tmp: Path, upstream: Server) -> Iterator[Gateway]:
    """No admin token: the admin API answers loopback clients, at /api."""
    config = {"version": 1, "routers": gateway_routes(upstream)}
    env = {"KAIROS_ADMIN_TOKEN": "", "KAIROS_ADMIN_PREFIX": "/api"}
    yield from start(package_tmp, config, env)


@pytest.fixture(scope="package")
def guarded(package_tmp: Path, upstream: Server) -> Iterator[Gateway]:
    """KAIROS_ADMIN_TOKEN set, and the admin API at /admin (found by clients through /health)."""
    config = {"version": 1, "routers": [route("/users/{id}", "/echo/users/{id}", [backend(upstream)])]}
    env = {"KAIROS_ADMIN_TOKEN": TOKEN, "KAIROS_ADMIN_PREFIX": GUARDED_PREFIX}
    yield from start(package_tmp, config, env)


@pytest.fixture(autouse=True)
def client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reads KAIROS_URL / KAIROS_ADMIN_TOKEN / KAIROS_ADMIN_PREFIX: none leaks in."""
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


Connect = Callable[..., KairosClient]


@dataclass(frozen=True)
class Flavour:
    """``connect(...)`` takes ``KairosClient``'s arguments and returns a client of this flavour
    (closed after the test); ``name`` is ``sync`` or ``async``, for paths a test must not share
    with the other flavour's run on the same gateway."""

    name: str
    connect: Connect


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> Iterator[Flavour]:
    if request.param == "sync":
        made: list[KairosClient] = []

        def connect_sync(*args: Any, **kwargs: Any) -> KairosClient:
            made.append(KairosClient(*args, **kwargs))
            return made[-1]

        yield Flavour("sync", connect_sync)
        for client in made:
            client.close()
        return
    with asyncio.Runner() as runner:
        made_async: list[AsyncKairosClient] = []

        def connect_async(*args: Any, **kwargs: Any) -> KairosClient:
            made_async.append(AsyncKairosClient(*args, **kwargs))
            return cast(KairosClient, Blocking(made_async[-1], runner))

        yield Flavour("async", connect_async)
        for client_async in made_async:
            runner.run(client_async.aclose())


@pytest.fixture
def kairos(flavour: Flavour, gateway: Gateway) -> KairosClient:
    """A client (sync, then async) of the gateway without a token."""
    return flavour.connect(gateway.url)
