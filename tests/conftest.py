from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.asgi import AsgiClients
from tests.processes import Server, free_port, redis_server, server_process, upstream_server

# A gateway a test stops exits at once: the production drain delay (KAIROS_DRAIN_DELAY, 5 s of
# serving after SIGTERM so a load balancer notices) would make every stop take 5 s. Processes that
# inherit this environment get it; helpers that start from a clean one set it themselves
# (tests/processes.py), and tests/e2e/test_drain.py sets its own.
os.environ.setdefault("KAIROS_DRAIN_DELAY", "0")

# kairos-rs's own config files, OUTSIDE the repository (../shared/kairos-rs-configs/, never copied in).
# Optional: only tests/config/test_kairos_rs_shapes.py reads it, and skips when it is absent; the
# suite itself runs on tests/fixtures/kairos_rs/ so a bare clone passes.
SHARED_CONFIGS = Path(__file__).resolve().parent.parent.parent / "shared" / "kairos-rs-configs"


@pytest.fixture
def asgi_client() -> Iterator[AsgiClients]:
    """Calls an ASGI app in process (no server): ``asgi_client(app).get("/x", headers=...)`` returns an
    httpx.Response, ``.raw(...)`` the body as sent, ``.async_client()`` an httpx.AsyncClient. Options:
    ``client=(host, port)``, ``raise_app_exceptions``, ``base_url``. See tests/asgi.py."""
    with AsgiClients() as clients:
        yield clients


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def upstream(module_tmp: Path) -> Iterator[Server]:
    with upstream_server(module_tmp, "a") as server:
        yield server


@pytest.fixture(scope="module")
def upstream_b(module_tmp: Path) -> Iterator[Server]:
    with upstream_server(module_tmp, "b") as server:
        yield server


@pytest.fixture(scope="module")
def raw(module_tmp: Path) -> Iterator[Server]:
    """tests/servers/raw_upstream.py: a deliberately misbehaving HTTP server (garbage, cut bodies, ...)."""
    port = free_port()
    args = ["-m", "tests.servers.raw_upstream", "--port", str(port)]
    with server_process(args, port, module_tmp / f"raw-upstream-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the module's own ``gateway`` fixture."""
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def redis(module_tmp: Path) -> Iterator[str]:
    """A real redis-server for the module; yields its URL."""
    with redis_server(module_tmp) as server:
        yield f"redis://127.0.0.1:{server.port}/0"
