"""Retries through the real gateway against scripted upstreams that fail on cue."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.resilience.retry import FAILOVER_ONLY, MIN_RETRIES
from tests.processes import Server, backend, free_port, gateway_server, route, server_process


@pytest.fixture(scope="module")
def scripted(module_tmp: Path) -> Iterator[list[Server]]:
    """Three scripted upstreams (tests/servers/scripted_upstream.py)."""
    servers: list[Server] = []
    contexts = []
    try:
        for _ in range(3):
            port = free_port()
            args = ["-m", "tests.servers.scripted_upstream", "--port", str(port)]
            context = server_process(args, port, module_tmp / f"scripted-{port}.log")
            servers.append(context.__enter__())
            contexts.append(context)
        yield servers
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


def script(server: Server, key: str, steps: list[Any]) -> None:
    httpx.put(f"{server.url}/_script/{key}", json=steps).raise_for_status()


def log(server: Server, key: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{server.url}/_log/{key}").json())


def refused_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    return free_port()


RETRY = {"max_retries": 2, "initial_backoff_ms": 10, "max_backoff_ms": 2000, "jitter": False}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, scripted: list[Server]) -> Iterator[Server]:
    a, b, c = scripted
    dead = {"host": "http://127.0.0.1", "port": refused_port()}
    routes = [
        route("/one/{key}", "/s/{key}", [backend(a)], ("GET", "POST", "PUT"), retry=RETRY),
        route("/two/{key}", "/s/{key}", [backend(a), backend(b)], ("GET", "POST"), retry=RETRY),
        route("/three/{key}", "/s/{key}", [backend(a), backend(b), backend(c)], retry=RETRY),
        route("/failover/{key}", "/s/{key}", [dead, backend(b)], ("GET", "POST")),  # no retry block
        route("/all-dead", "/s/x", [dead, {"host": "http://127.0.0.1", "port": refused_port()}]),
        route("/small-replay/{key}", "/s/{key}", [backend(a)], ("POST",),
              retry={**RETRY, "max_replay_bytes": 10}),
        route("/deadline/{key}", "/s/{key}", [backend(a)], timeout_ms=1000,
              retry={**RETRY, "max_retries": 5, "per_try_timeout_ms": 300}),
        route("/after/{key}", "/s/{key}", [backend(a)], retry={**RETRY, "max_backoff_ms": 1500}),
        route("/budget/{key}", "/s/{key}", [backend(a)],
              retry={**RETRY, "max_retries": 1, "budget_percent": 0}),
    ]  # fmt: skip
    with gateway_server(module_tmp, {"version": 1, "routers": routes}) as server:
        yield server


def test_get_is_retried_until_the_upstream_recovers(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "recovers", [503, 502, 200])
    answer = client.get("/one/recovers")
    assert answer.status_code == 200 and answer.json()["step"] == 200
    assert len(log(a, "recovers")) == 3


def test_retries_stop_at_max_retries(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "down", [503])
    answer = client.get("/one/down")
    assert answer.status_code == 503  # the upstream's own last answer, passed through
    assert answer.json() == {"step": 503, "port": a.port}
    assert len(log(a, "down")) == 3  # 1 + max_retries


def test_post_is_never_duplicated(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "pay", [503, 200])
    answer = client.post("/one/pay", content=b"charge 10")
    assert answer.status_code == 503
    assert [entry["body"] for entry in log(a, "pay")] == ["charge 10"]


def test_post_with_an_idempotency_key_is_retried_with_its_body(
    client: httpx.Client, scripted: list[Server]
) -> None:
    a = scripted[0]
    script(a, "keyed", [503, 200])
    answer = client.post("/one/keyed", content=b"charge 10", headers={"Idempotency-Key": "k-1"})
    assert answer.status_code == 200
    assert [(e["body"], e["idempotency_key"]) for e in log(a, "keyed")] == [("charge 10", "k-1")] * 2


def test_put_is_retried_and_its_body_replayed(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "put", [502, 200])
    body = b"x" * 200_000  # beyond the proxy's small-body fast path: streamed, then replayed
    assert client.put("/one/put", content=body).status_code == 200
    assert [len(entry["body"]) for entry in log(a, "put")] == [200_000, 200_000]


def test_a_body_larger_than_max_replay_bytes_is_sent_once(
    client: httpx.Client, scripted: list[Server]
) -> None:
    a = scripted[0]
    script(a, "big", [503, 200])
    answer = client.post("/small-replay/big", content=b"0123456789abcdef", headers={"Idempotency-Key": "k"})
    assert answer.status_code == 503
    assert [entry["body"] for entry in log(a, "big")] == ["0123456789abcdef"]


def test_each_attempt_goes_to_another_backend(client: httpx.Client, scripted: list[Server]) -> None:
    for server in scripted:
        script(server, "spread", [503])
    assert client.get("/three/spread").status_code == 503
    assert [len(log(server, "spread")) for server in scripted] == [1, 1, 1]


def test_get_fails_over_with_zero_client_visible_errors(client: httpx.Client, scripted: list[Server]) -> None:
    b = scripted[1]
    script(b, "fo", [200])
    answers = [client.get("/failover/fo") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert len(log(b, "fo")) == 20


def test_post_fails_over_on_connect_errors_without_a_retry_block(
    client: httpx.Client, scripted: list[Server]
) -> None:
    b = scripted[1]
    script(b, "fo-post", [200])
    answers = [client.post("/failover/fo-post", content=b"order") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert [entry["body"] for entry in log(b, "fo-post")] == ["order"] * 6  # each exactly once


def test_without_a_retry_block_only_connect_errors_fail_over(
    client: httpx.Client, scripted: list[Server], gateway: Server
) -> None:
    """A multi-backend route with no ``retry``: an answer that reached an upstream (503 here) is
    the answer, never retried; when every backend refuses, the client gets one 502 after
    1 + FAILOVER_ONLY.max_retries attempts (the retries counter says so)."""
    b = scripted[1]
    script(b, "fo-503", [503, 200])
    answers = [client.get("/failover/fo-503") for _ in range(2)]
    assert [a.status_code for a in answers] == [503, 200]  # the 503 passed through, not retried
    assert len(log(b, "fo-503")) == 2

    def retries() -> float:
        text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        line = next(line for line in text.splitlines() if line.startswith("kairos_retries_total"))
        return float(line.rsplit(" ", 1)[1])

    before = retries()
    answer = client.get("/all-dead")
    assert answer.status_code == 502 and answer.json()["type"] == "upstream", answer.text
    assert answer.json()["error"].startswith("Upstream error for http://127.0.0.1:")
    assert retries() - before == FAILOVER_ONLY.max_retries


def test_upstream_retry_after_is_honoured(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "later", ["503:ra=1", 200])
    assert client.get("/after/later").status_code == 200
    first, second = log(a, "later")
    assert 0.95 <= second["at"] - first["at"] <= 1.6  # Retry-After: 1, within max_backoff_ms 1500


def test_the_route_timeout_bounds_all_attempts(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "slow", ["hang"])
    started = time.monotonic()
    answer = client.get("/deadline/slow")
    elapsed = time.monotonic() - started
    assert answer.status_code == 504 and answer.json()["type"] == "timeout"
    assert 0.9 <= elapsed <= 1.5  # timeout_ms 1000, not 6 x per_try_timeout_ms
    assert 2 <= len(log(a, "slow")) <= 4  # per-try timeouts of 300 ms were retried


def test_nothing_is_retried_once_the_response_started(gateway: Server, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "cut", ["reset", 200])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /one/cut HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < 100_000  # visibly incomplete: the connection was dropped, not ended cleanly
    assert len(log(a, "cut")) == 1


def test_the_retry_budget_stops_retry_storms(client: httpx.Client, scripted: list[Server]) -> None:
    a = scripted[0]
    script(a, "storm", [503])
    assert [client.get("/budget/storm").status_code for _ in range(20)] == [503] * 20
    # budget_percent 0: only the always-allowed minimum of retries in the window.
    assert len(log(a, "storm")) == 20 + MIN_RETRIES


def test_retries_are_counted_in_metrics(client: httpx.Client) -> None:
    metrics = client.get("/metrics").text
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("kairos_retries_total", "kairos_retry_budget_exhausted_total"))
    }
    assert counts["kairos_retries_total"] >= 10  # the retries made by the tests above
    assert counts["kairos_retry_budget_exhausted_total"] >= 1  # the storm the budget stopped
