"""A bounded soak: thousands of mixed requests through the real gateway, all answered correctly,
and the gateway's memory flat afterwards.

The default run sends 3,000 requests (well under a minute); ``KAIROS_SOAK=1`` also runs the
long version (50,000, marked ``slow``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Server, backend, gateway_server, route, rss_bytes

CONCURRENCY = 20
WARM_UP = 500
RSS_GROWTH_LIMIT = 30 * 2**20
LONG = os.environ.get("KAIROS_SOAK") == "1"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    both = [backend(upstream), backend(upstream_b)]
    config = {
        "version": 1,
        "routers": [
            route("/s/echo/{*rest}", "/echo/{*rest}", both, ("GET", "POST")),
            route("/s/stream", "/stream", both, timeout_ms=60000),
            route("/s/upload", "/upload", both, ("POST",), timeout_ms=60000),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def payload(n: int) -> bytes:
    size = 1 + (n * 7919) % (200 * 1024)  # 1 B .. 200 KiB: both sides of the 64 KiB small-body line
    return (n.to_bytes(4, "big") * (size // 4 + 1))[:size]


async def one(http: httpx.AsyncClient, n: int) -> str:
    """Send request ``n`` of the mix and check its answer; returns its kind."""
    kind = n % 20
    if kind < 11:
        response = await http.get(f"/s/echo/item/{n}", params={"n": str(n)})
        assert response.status_code == 200, response.text
        assert response.json()["raw_path"] == f"/echo/item/{n}?n={n}"
        return "small"
    if kind < 13:
        response = await http.get("/s/stream", params={"size": "65536"})
        assert response.status_code == 200 and len(response.content) == 65536
        return "64k"
    if kind == 13:
        received = 0
        async with http.stream("GET", "/s/stream", params={"size": str(2**20)}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        assert received == 2**20
        return "1m-stream"
    if kind < 17:
        body = payload(n)
        response = await http.post("/s/upload", content=body)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["bytes"] == len(body) and data["sha256"] == hashlib.sha256(body).hexdigest()
        return "upload"
    if kind < 19:
        response = await http.post(f"/s/echo/post/{n}", content=b"p" * (n % 1000))
        assert response.status_code == 200 and response.json()["body_bytes"] == n % 1000
        return "post"
    response = await http.get(f"/nowhere/{n}")
    assert response.status_code == 404 and response.json()["type"] == "route_not_found"
    return "404"


def run_mix(gateway: Server, count: int, start: int, time_limit: float) -> Counter[str]:
    """``count`` requests over CONCURRENCY connections; stops (and fails) at ``time_limit``."""

    async def main() -> Counter[str]:
        kinds: Counter[str] = Counter()
        numbers = iter(range(start, start + count))
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:

            async def worker() -> None:
                for n in numbers:  # shared iterator: each number is taken by one worker
                    kinds[await one(http, n)] += 1

            async with asyncio.timeout(time_limit):
                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return kinds

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("count", "time_limit"),
    [
        pytest.param(3_000, 60, id="3k"),
        pytest.param(
            50_000,
            600,
            id="50k",
            marks=[pytest.mark.slow, pytest.mark.skipif(not LONG, reason="KAIROS_SOAK=1 runs the long soak")],
        ),
    ],
)
@pytest.mark.timeout(900)
def test_soak_mixed_traffic(gateway: Server, count: int, time_limit: float) -> None:
    run_mix(gateway, WARM_UP, 0, 60)  # pools, imports and allocator arenas settle
    baseline, _ = rss_bytes(gateway.pid)
    started = time.monotonic()
    kinds = run_mix(gateway, count, WARM_UP, time_limit)
    elapsed = time.monotonic() - started
    after, _ = rss_bytes(gateway.pid)
    assert sum(kinds.values()) == count
    assert set(kinds) == {"small", "64k", "1m-stream", "upload", "post", "404"}
    assert after - baseline < RSS_GROWTH_LIMIT, (
        f"gateway RSS grew {(after - baseline) / 2**20:.1f} MiB over {count} requests in {elapsed:.1f}s"
    )
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/health").json()["status"] == "healthy"
