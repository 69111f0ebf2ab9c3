"""AI routing end to end: the real gateway (uvicorn) calls the real litellm code path against a local
OpenAI-compatible provider (tests/servers/fake_llm.py) and routes to real upstreams.

Each route uses its own model name, and the fake provider's behaviour is set per model, so the
tests of this module do not disturb each other (nor each other's provider circuit breakers).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Server, backend, free_port, gateway_server, route, server_process, wait_for_port

API_KEY = "sk-kairostest-Abc123Def456Ghi789Jkl012"
ENV = {"KAIROS_LOG_FORMAT": "json", "KAIROS_ACCESS_LOG": "true"}
REFUND = {"message": "I want a refund for my last order"}
SEARCH = {"message": "search the catalogue for running shoes"}


@pytest.fixture(scope="module")
def fake(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.fake_llm", "--port", str(port), "--rule", "refund=1", "--rule", "search=0"]
    with server_process(args, port, module_tmp / f"fake-llm-{port}.log") as server:
        yield server


def ai_route(path: str, internal: str, backends: list[dict[str, Any]], methods: tuple[str, ...] = ("POST",),
             **policy: Any) -> dict[str, Any]:  # fmt: skip
    strategy = policy.pop("strategy", None) or {"content_analysis": {"model": policy.pop("model", None)}}
    ai_policy = {"enabled": True, "strategy": strategy, "debug_header": True, **policy}
    return route(path, internal, backends, methods, ai_policy=ai_policy)


def config(fake: Server, a: Server, b: Server) -> dict[str, Any]:
    two = [backend(a), backend(b)]
    described = [
        backend(a, description="product catalogue: search, browse and compare items",
                examples=["find running shoes", "search products by brand"]),
        backend(b, description="billing desk: refunds, invoices and payments",
                examples=["my payment failed", "refund my order", "send me the invoice"]),
    ]  # fmt: skip
    backup = {"provider": "openai", "model": "backup-model", "api_key": API_KEY, "api_base": f"{fake.url}/v1"}
    return {
        "version": 1,
        "ai": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "api_key": API_KEY,
            "api_base": f"{fake.url}/v1",
            "timeout_ms": 1000,
            "max_concurrency": 2,
            "circuit_breaker": {"failure_threshold": 3, "reset_timeout_ms": 60000},
        },
        "routers": [
            ai_route("/ai/route", "/echo", two),
            ai_route("/ai/upload", "/upload", two, body_preview_chars=100),
            ai_route("/ai/fallback", "/echo", two, model="fallback-model", fallback_backend_index=1,
                     cache_ttl_secs=0),
            ai_route("/ai/nofallback", "/echo", two, model="nofallback-model", cache_ttl_secs=0),
            ai_route("/ai/breaker", "/echo", two, model="breaker-model", fallback_backend_index=0,
                     cache_ttl_secs=0),
            ai_route("/ai/failover", "/echo", two, model="primary-model", cache_ttl_secs=0,
                     fallback_providers=[backup]),
            ai_route("/ai/busy", "/echo", two, model="slow-model", cache_ttl_secs=0),
            ai_route("/ai/shadow", "/echo", two, model="shadow-model", shadow=True),
            ai_route("/ai/semantic", "/echo", described, strategy={"semantic": {"model": "embed-model"}}),
            ai_route("/ai/latency", "/whoami", [backend(a), backend(fake)], ("GET",),
                     strategy="latency_prediction"),
            ai_route("/ai/single", "/echo", [backend(b)], model="single-model"),
            ai_route("/ai/ttl", "/echo", two, model="ttl-model", cache_ttl_secs=2),
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, fake: Server, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    # Started without the helper's 15 s port wait: litellm's import (~5 s, more on a busy machine)
    # runs in the lifespan startup, before the port opens.
    with gateway_server(module_tmp, config(fake, upstream, upstream_b), env=ENV, wait=False) as server:
        wait_for_port(server.port, server.process, timeout=90)
        httpx.get(f"{server.url}/ready", timeout=10).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def provider(fake: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        yield http


def control(provider: httpx.Client, **settings: Any) -> None:
    provider.post("/_control", json=settings).raise_for_status()


def stats(provider: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = provider.get("/_stats").json()
    return answer


def hits(provider: httpx.Client, model: str) -> int:
    return int(stats(provider)["hits_by_model"].get(model, 0))


def ai_header(response: httpx.Response) -> tuple[str, str]:
    """(index or "none", outcome) from X-Kairos-AI-Backend."""
    value = response.headers["x-kairos-ai-backend"]
    index, _, outcome = value.partition("; outcome=")
    return index, outcome


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    server: str = response.json()["server"]
    return server


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
                found = True
    assert found, f"{name} {labels} not in /metrics"
    return total


def test_routes_by_content(client: httpx.Client) -> None:
    refund = client.post("/ai/route", json=REFUND)
    assert ai_header(refund) == ("1", "chosen")
    assert served_by(refund) == "b"
    search = client.post("/ai/route", json=SEARCH)
    assert ai_header(search) == ("0", "chosen")
    assert served_by(search) == "a"


def test_cached_decision_makes_no_provider_call(client: httpx.Client, provider: httpx.Client) -> None:
    body = '{"message": "refund   the duplicate charge on order A7"}'
    before = hits(provider, "gpt-4o-mini")
    first = client.post("/ai/route", content=body, headers={"content-type": "application/json"})
    assert ai_header(first) == ("1", "chosen")
    assert hits(provider, "gpt-4o-mini") == before + 1
    # The same request, and one that differs only in whitespace: the same normalised context.
    for again in (body, body.replace("   ", "\n\t ")):
        response = client.post("/ai/route", content=again, headers={"content-type": "application/json"})
        assert ai_header(response) == ("1", "cached")
        assert served_by(response) == "b"
    assert hits(provider, "gpt-4o-mini") == before + 1


def test_a_repeated_request_still_asks_the_cache_and_its_ttl(
    client: httpx.Client, provider: httpx.Client
) -> None:
    """A repeat skips redaction (its context is memoised, kairos/ai/context.py ContextMemo) but its
    decision still comes from the decision cache: an other e-mail redacts to the same context (one
    decision for both), an other query does not (the model sees it), and once ``cache_ttl_secs``
    passed the same request asks the provider again."""
    jane = {"message": "refund the order of jane.doe@example.com"}
    before = hits(provider, "ttl-model")
    memo_hits = metric(client.get("/metrics").text, "kairos_ai_context_memo_hits_total")
    assert ai_header(client.post("/ai/ttl", json=jane)) == ("1", "chosen")
    assert ai_header(client.post("/ai/ttl", json=jane)) == ("1", "cached")
    john = {"message": "refund the order of john.roe@example.org"}
    assert ai_header(client.post("/ai/ttl", json=john)) == ("1", "cached")
    assert hits(provider, "ttl-model") == before + 1
    assert ai_header(client.post("/ai/ttl?order=7", json=jane)) == ("1", "chosen")
    assert hits(provider, "ttl-model") == before + 2
    time.sleep(2.2)  # past cache_ttl_secs: the memoised context no longer finds a decision
    assert ai_header(client.post("/ai/ttl", json=jane)) == ("1", "chosen")
    assert hits(provider, "ttl-model") == before + 3
    text = client.get("/metrics").text
    assert metric(text, "kairos_ai_decisions_total", route="/ai/ttl", outcome="cached") == 2
    assert metric(text, "kairos_ai_decision_duration_seconds_count", route="/ai/ttl") == 5
    assert metric(text, "kairos_ai_context_memo_hits_total") == memo_hits + 2  # jane's two repeats


def test_provider_never_receives_secrets(client: httpx.Client, provider: httpx.Client) -> None:
    secrets = {
        "email": "jane.doe@example.com",
        "card": "4111 1111 1111 1111",
        "bearer": "Bearer abc.DEF.ghi-123",
        "api_key": "sk-live-ZZ9aa8BB7cc6DD5ee4FF",
        "password": "hunter2hunter2",
    }
    body = {
        "message": f"refund please, I am {secrets['email']}, card {secrets['card']}",
        "note": f"use {secrets['bearer']} and key {secrets['api_key']}",
        "password": secrets["password"],
    }
    headers = {
        "Authorization": "Bearer header-token-should-stay",
        "X-Api-Key": "header-key-should-stay",
        "Cookie": "session=cookie-should-stay",
        "X-Tenant": "acme",
    }
    response = client.post("/ai/route", json=body, headers=headers)
    assert ai_header(response) == ("1", "chosen")
    prompt = json.dumps(stats(provider)["prompts"][-1])
    for secret in [
        *secrets.values(),
        "header-token-should-stay",
        "header-key-should-stay",
        "cookie-should-stay",
    ]:
        assert secret not in prompt
    assert "[REDACTED:email]" in prompt and "[REDACTED:card]" in prompt and "[REDACTED:secret]" in prompt
    assert "x-tenant" in prompt and "acme" in prompt  # a harmless header is context
    # The provider got the configured key (so it was used), and only there.
    assert stats(provider)["authorization"][-1] == f"Bearer {API_KEY}"


def test_backend_receives_the_complete_body(client: httpx.Client) -> None:
    body = (b"refund " + os.urandom(64).hex().encode()) * 3000  # ~390 KB, preview is 100 chars
    response = client.post("/ai/upload", content=body, headers={"content-type": "text/plain"})
    assert response.json() == {"server": "b", "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    def chunks() -> Iterator[bytes]:  # chunked upload, small pieces: the preview spans several
        for start in range(0, len(body), 7000):
            yield body[start : start + 7000]

    streamed = client.post("/ai/upload", content=chunks(), headers={"content-type": "text/plain"})
    assert streamed.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert streamed.json()["bytes"] == len(body)


@pytest.mark.parametrize(
    "answer", ["I think backend 1", '{"index": 7}', "1", '{"index": true}', '{"index": 0, "why": "x"}', ""]
)
def test_unusable_answer_falls_back(client: httpx.Client, provider: httpx.Client, answer: str) -> None:
    control(provider, model="fallback-model", mode="content", content=answer)
    response = client.post("/ai/fallback", json=SEARCH)
    assert ai_header(response) == ("1", "fallback_invalid")
    assert served_by(response) == "b"  # fallback_backend_index


def test_provider_error_and_timeout_fall_back(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, model="fallback-model", mode="error", status=500)
    response = client.post("/ai/fallback", json=SEARCH)
    assert ai_header(response) == ("1", "fallback_error")
    assert served_by(response) == "b"
    control(provider, model="fallback-model", mode="sleep", delay=5)
    response = client.post("/ai/fallback", json=SEARCH)
    assert ai_header(response) == ("1", "fallback_timeout")
    assert served_by(response) == "b"
    control(provider, model="fallback-model", mode="rules", rules=[["search", 0]])
    response = client.post("/ai/fallback", json=SEARCH)  # a success resets the breaker's count
    assert ai_header(response) == ("0", "chosen")


def test_without_fallback_index_the_balancer_picks(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, model="nofallback-model", mode="error", status=503)
    servers = set()
    for _ in range(2):
        response = client.post("/ai/nofallback", json=REFUND)
        assert ai_header(response) == ("none", "fallback_error")
        servers.add(served_by(response))
    assert servers == {"a", "b"}  # round robin, as without AI routing


def test_failing_provider_trips_its_circuit_breaker(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, model="breaker-model", mode="error", status=500)
    before = hits(provider, "breaker-model")
    for _ in range(3):  # failure_threshold
        assert ai_header(client.post("/ai/breaker", json=REFUND)) == ("0", "fallback_error")
    assert hits(provider, "breaker-model") == before + 3
    for _ in range(5):
        response = client.post("/ai/breaker", json=REFUND)
        assert ai_header(response) == ("0", "fallback_circuit_open")
        assert served_by(response) == "a"
    assert hits(provider, "breaker-model") == before + 3  # an open circuit costs no call
    text = client.get("/metrics").text
    assert (
        metric(text, "kairos_ai_provider_circuit_state", provider="openai/breaker-model", state="open") == 1
    )
    assert (
        metric(text, "kairos_ai_provider_calls_total", provider="openai/breaker-model", result="circuit_open")
        >= 5
    )


def test_fallback_provider_answers_when_the_first_fails(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, model="primary-model", mode="error", status=502)
    control(provider, model="backup-model", mode="rules", rules=[["refund", 1]])
    before = (hits(provider, "primary-model"), hits(provider, "backup-model"))
    response = client.post("/ai/failover", json=REFUND)
    assert ai_header(response) == ("1", "chosen")
    assert served_by(response) == "b"
    assert (hits(provider, "primary-model"), hits(provider, "backup-model")) == (before[0] + 1, before[1] + 1)


def test_concurrency_cap_falls_back_instead_of_queueing(gateway: Server, provider: httpx.Client) -> None:
    control(provider, model="slow-model", mode="sleep", delay=0.7, rules=[["refund", 1]])

    start = threading.Barrier(6)

    def call(number: int) -> str:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            start.wait(10)
            response = http.post("/ai/busy", json={"message": f"refund number {number}"})
            assert response.status_code == 200
            return ai_header(response)[1]

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(call, range(6)))
    assert "fallback_busy" in outcomes, outcomes  # max_concurrency 2: the others did not wait
    assert "chosen" in outcomes, outcomes


def test_identical_concurrent_requests_share_one_provider_call(
    gateway: Server, provider: httpx.Client
) -> None:
    """/ai/busy has no cache (cache_ttl_secs 0): only the single-flight of identical decisions."""
    control(provider, model="slow-model", mode="sleep", delay=0.5, rules=[["refund", 1]])
    before = hits(provider, "slow-model")

    start = threading.Barrier(4)

    def call(_: int) -> tuple[str, str]:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            start.wait(10)  # the four requests leave together, well within the provider's 0.5 s
            return ai_header(http.post("/ai/busy", json={"message": "refund the same order twice"}))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, range(4)))
    assert hits(provider, "slow-model") == before + 1, answers
    assert sorted(answers) == [("1", "cached")] * 3 + [("1", "chosen")]


def shadow_counts(client: httpx.Client) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("route") != "/ai/shadow":
                continue
            if sample.name == "kairos_ai_decisions_total":
                counts[sample.labels["outcome"]] = sample.value
            elif sample.name == "kairos_ai_shadow_decisions_total":
                counts["agreed=" + sample.labels["agreed"]] = sample.value
    return counts


def test_shadow_mode_decides_but_routes_normally(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, model="shadow-model", mode="rules", rules=[], default_index=1)
    servers = []
    for number in range(4):
        response = client.post("/ai/shadow", json={"message": f"hello {number}"})
        servers.append(served_by(response))
        assert "x-kairos-ai-backend" not in response.headers  # the answer never waits for the decision
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the decision finishes beside the request
            counts = shadow_counts(client)
            if counts.get("agreed=true", 0) + counts.get("agreed=false", 0) > number:
                break
            time.sleep(0.05)
    assert sorted(servers) == ["a", "a", "b", "b"]  # round robin: the AI's 1 was not used
    assert shadow_counts(client) == {"shadow": 4, "agreed=true": 2, "agreed=false": 2}


def test_semantic_strategy_uses_embeddings_only(client: httpx.Client, provider: httpx.Client) -> None:
    before = stats(provider)
    refund = client.post("/ai/semantic", json={"message": "my payment failed, please refund the invoice"})
    assert ai_header(refund) == ("1", "chosen")
    assert served_by(refund) == "b"
    search = client.post("/ai/semantic", json={"message": "search running shoes by brand"})
    assert ai_header(search) == ("0", "chosen")
    assert served_by(search) == "a"
    after = stats(provider)
    assert after["chat_hits"] == before["chat_hits"]  # no chat completion at all
    assert after["hits_by_model"]["embed-model"] == 3  # the backends' texts once, then one per request


def test_latency_prediction_prefers_the_faster_backend(client: httpx.Client, provider: httpx.Client) -> None:
    control(provider, whoami_delay=0.3)
    servers = [served_by(client.get("/ai/latency")) for _ in range(8)]
    assert "fake-llm" in servers[:3]  # each backend is measured once
    assert servers[-4:] == ["a"] * 4, servers
    text = client.get("/metrics").text
    assert metric(text, "kairos_ai_backend_latency_seconds") > 0


def test_a_single_backend_needs_no_decision(client: httpx.Client, provider: httpx.Client) -> None:
    response = client.post("/ai/single", json=REFUND)
    assert served_by(response) == "b"
    assert "x-kairos-ai-backend" not in response.headers
    assert hits(provider, "single-model") == 0


def test_metrics_access_log_and_no_key_anywhere(
    gateway: Server, client: httpx.Client, provider: httpx.Client
) -> None:
    response = client.post(
        "/ai/route", json={"message": "search for a tent"}, headers={"x-request-id": "ai-log-1"}
    )
    assert ai_header(response) == ("0", "chosen")
    assert ai_header(client.post("/ai/route", json={"message": "search for a tent"})) == ("0", "cached")
    text = client.get("/metrics").text
    assert metric(text, "kairos_ai_decisions_total", route="/ai/route", outcome="chosen") >= 1
    assert metric(text, "kairos_ai_decisions_total", route="/ai/route", outcome="cached") >= 1
    assert metric(text, "kairos_ai_decision_duration_seconds_count", route="/ai/route") >= 2
    assert metric(text, "kairos_ai_tokens_total", provider="openai/gpt-4o-mini", kind="prompt") > 0
    assert metric(text, "kairos_ai_tokens_total", provider="openai/gpt-4o-mini", kind="completion") > 0
    assert (
        metric(text, "kairos_ai_cost_usd_total", provider="openai/gpt-4o-mini") > 0
    )  # litellm's local prices
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        for line in gateway.output().splitlines():
            if line.startswith("{") and '"ai-log-1"' in line:
                entry = json.loads(line)
        time.sleep(0.05)
    assert entry is not None
    assert entry["ai_backend"] == 0 and entry["ai_outcome"] == "chosen"
    assert API_KEY not in text
    assert API_KEY not in gateway.output()
    assert API_KEY[-8:] not in gateway.output()


def test_reload_keeps_provider_breakers_and_applies_new_ai_routes(
    gateway: Server, client: httpx.Client, provider: httpx.Client, module_tmp: Path, fake: Server,
    upstream: Server, upstream_b: Server,
) -> None:  # fmt: skip
    """A reload must not close breaker-model's open circuit (opened here if still closed)."""
    control(provider, model="breaker-model", mode="error", status=500)
    for _ in range(4):
        if ai_header(client.post("/ai/breaker", json=REFUND))[1] == "fallback_circuit_open":
            break
    else:
        raise AssertionError("breaker-model's circuit did not open")
    updated = config(fake, upstream, upstream_b)
    updated["routers"].append(ai_route("/ai/added", "/echo", [backend(upstream), backend(upstream_b)]))
    # /ai/route now asks another model: its plan changed, so its cached decisions are not reused.
    assert ai_header(client.post("/ai/route", json=REFUND))[0] == "1"  # decided (cached) before the reload
    updated["routers"][0]["ai_policy"]["strategy"] = {"content_analysis": {"model": "reloaded-model"}}
    (module_tmp / f"config-{gateway.port}.json").write_text(json.dumps(updated))
    reloaded = client.post("/api/config/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert ai_header(client.post("/ai/added", json=REFUND)) == ("1", "chosen")
    assert ai_header(client.post("/ai/route", json=REFUND)) == ("1", "chosen")
    assert hits(provider, "reloaded-model") == 1
    assert ai_header(client.post("/ai/route", json=REFUND)) == ("1", "cached")
    before = hits(provider, "breaker-model")
    assert ai_header(client.post("/ai/breaker", json=REFUND)) == ("0", "fallback_circuit_open")
    assert hits(provider, "breaker-model") == before
    shown = client.get("/api/config")
    assert shown.status_code == 200 and API_KEY not in shown.text  # the admin API redacts it
