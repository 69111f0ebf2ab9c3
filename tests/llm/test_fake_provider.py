"""tests/servers/fake_llm.py as the LLM proxy tests use it: a real process, called with httpx and with
the real ``openai`` client. Echo answers, OpenAI's stream framing, and the faults set through
``/_control``. Each test uses its own model names, so they do not disturb each other."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.processes import Server, free_port, server_process

KEY = "sk-fake-provider-test-0123456789"


@pytest.fixture(scope="module")
def fake(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.fake_llm", "--port", str(port)]
    with server_process(args, port, module_tmp / f"fake-llm-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def http(fake: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(fake: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def control(http: httpx.Client, **settings: Any) -> dict[str, Any]:
    response = http.post("/_control", json=settings)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def model_stats(http: httpx.Client, model: str) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = http.get("/_stats").json()["models"]
    return models[model]


def chat_body(model: str, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking OpenAI's framing on the way."""
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
    parts = body.split(b"\n\n")
    assert parts[-1] == b""
    payloads = []
    for part in parts[:-1]:
        assert part.startswith(b"data: ") and b"\n" not in part and b"\r" not in part, part
        payloads.append(part.removeprefix(b"data: ").decode())
    return payloads


def test_echo_is_deterministic_with_word_usage(http: httpx.Client, sdk: openai.OpenAI) -> None:
    body = chat_body("echo-det", "hello there", max_tokens=6)
    first, second = http.post("/v1/chat/completions", json=body), http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200 and first.headers["content-type"].startswith("application/json")
    for answer in (first.json(), second.json()):
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {
            "role": "assistant",
            "content": "echo: hello there w1 w2 w3",
        }
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    assert first.json()["id"] != second.json()["id"]
    # Default: 16 words; prompt_tokens counts the words of every message.
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ]
    answer = sdk.chat.completions.create(model="echo-det", messages=messages)
    assert answer.choices[0].message.content == "echo: one two three " + " ".join(
        f"w{i}" for i in range(1, 13)
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 16)
    completion = sdk.completions.create(model="echo-det", prompt="say it", max_tokens=4)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "echo: say it w1"
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 4


def test_chat_stream_framing(http: httpx.Client) -> None:
    body = chat_body("echo-stream", "a b", max_tokens=5, stream=True)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    payloads = events(response.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" not in chunk for chunk in chunks)  # not asked for: no usage at all
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-1]]
    assert deltas == ["echo: ", "a ", "b ", "w1 ", "w2"]  # one chunk per word
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    plain = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]


def test_usage_chunk_only_with_include_usage(http: httpx.Client, sdk: openai.OpenAI) -> None:
    body = chat_body("echo-usage", "x y z", max_tokens=3, stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(p) for p in events(http.post("/v1/chat/completions", json=body).content)[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])  # as OpenAI: null until the last
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    stream = sdk.chat.completions.create(
        model="echo-usage", messages=[{"role": "user", "content": "x y z"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    got = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "echo: x y"
    assert got[-1].choices == [] and got[-1].usage is not None and got[-1].usage.completion_tokens == 3
    plain = list(sdk.chat.completions.create(model="echo-usage", messages=[], max_tokens=2, stream=True))
    assert all(c.usage is None and c.choices for c in plain)

    completions = http.post(
        "/v1/completions",
        json={"model": "echo-usage", "prompt": "p q", "max_tokens": 3, "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    chunks = [json.loads(p) for p in events(completions.content)[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert [chunk["choices"][0]["text"] for chunk in chunks[:-2]] == ["echo: ", "p ", "q"]  # no role chunk
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    calls = model_stats(http, "echo-usage")["calls"]
    assert [(c["endpoint"], c["stream"], c["include_usage"]) for c in calls] == [
        ("chat", True, True), ("chat", True, True), ("chat", True, False), ("completions", True, True),
    ]  # fmt: skip


def test_chunks_are_sent_as_they_are_made(http: httpx.Client) -> None:
    control(http, model="echo-slow", chunk_delay=0.1)
    body = chat_body("echo-slow", "", max_tokens=10, stream=True)
    start = time.monotonic()
    arrivals: list[float] = []
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"role"' not in line:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 10
    assert arrivals[0] < 0.5 and arrivals[-1] >= 0.9
    assert arrivals[-1] - arrivals[0] >= 0.8  # spread out: nothing held back until the end


def test_cut_after_leaves_an_incomplete_stream(http: httpx.Client, sdk: openai.OpenAI) -> None:
    control(http, model="echo-cut", cut_after=2)
    received: list[str] = []
    body = chat_body("echo-cut", stream=True)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 3  # the role chunk and two words
    assert not any("[DONE]" in line or 'finish_reason":"stop' in line for line in received)

    words: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
        for chunk in sdk.chat.completions.create(model="echo-cut", messages=[], stream=True):
            words.append(chunk.choices[0].delta.content or "")
    assert words == ["", "echo: ", "w1 "]
    with pytest.raises(openai.APIConnectionError):  # Content-Length promised, half sent
        sdk.chat.completions.create(model="echo-cut", messages=[])
    assert [c["outcome"] for c in model_stats(http, "echo-cut")["calls"]] == ["cut"] * 3


def test_rate_limit_with_retry_after_then_fail_times(http: httpx.Client, sdk: openai.OpenAI) -> None:
    control(http, model="echo-429", status=429, retry_after=7)
    response = http.post("/v1/chat/completions", json=chat_body("echo-429"))
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded") and error["message"]
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="echo-429", messages=[], stream=True)

    # The first call fails, the client waits Retry-After (0.2 s) and its retry is answered.
    control(http, model="echo-retry", status=429, retry_after=0.2, fail_times=1)
    answer = sdk.with_options(max_retries=1).chat.completions.create(model="echo-retry", messages=[])
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].message.content.startswith("echo: w1")
    outcomes = [c["outcome"] for c in model_stats(http, "echo-retry")["calls"]]
    assert outcomes == ["status_429", "ok"]

    control(http, model="echo-flaky", status=503, fail_times=2)
    statuses = [http.post("/v1/chat/completions", json=chat_body("echo-flaky")).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    control(http, model="echo-flaky", fail_times=1)  # setting it again restarts the count
    statuses = [http.post("/v1/chat/completions", json=chat_body("echo-flaky")).status_code for _ in range(2)]
    assert statuses == [503, 200]


def test_error_statuses_have_openai_bodies(http: httpx.Client, sdk: openai.OpenAI) -> None:
    for status, kind, error_class in [
        (500, "server_error", openai.InternalServerError),
        (503, "server_error", openai.InternalServerError),
        (400, "invalid_request_error", openai.BadRequestError),
    ]:
        control(http, model=f"echo-{status}", status=status)
        response = http.post("/v1/chat/completions", json=chat_body(f"echo-{status}", stream=True))
        assert response.status_code == status
        assert response.json()["error"]["type"] == kind
        with pytest.raises(error_class):
            sdk.chat.completions.create(model=f"echo-{status}", messages=[])
    # The older form (mode error) still works, and setting another mode clears it.
    control(http, model="rules-model", mode="error", status=502)
    assert http.post("/v1/chat/completions", json=chat_body("rules-model")).status_code == 502
    control(http, model="rules-model", mode="rules", rules=[["refund", 1]])
    answer = http.post("/v1/chat/completions", json=chat_body("rules-model", "a refund please")).json()
    assert answer["choices"][0]["message"]["content"] == '{"index": 1}'


def test_omit_usage(http: httpx.Client) -> None:
    control(http, model="echo-nousage", omit_usage=True)
    answer = http.post("/v1/chat/completions", json=chat_body("echo-nousage")).json()
    assert "usage" not in answer and answer["choices"][0]["message"]["content"]
    body = chat_body("echo-nousage", max_tokens=2, stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(p) for p in events(http.post("/v1/chat/completions", json=body).content)[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_hang_until_the_client_gives_up(http: httpx.Client) -> None:
    control(http, model="echo-hang", mode="hang")
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=chat_body("echo-hang", stream=True), timeout=0.3)
    assert time.monotonic() - start < 2
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the fake notices the client left
        if model_stats(http, "echo-hang")["calls"][-1]["outcome"] == "client_gone":
            break
        time.sleep(0.05)
    assert model_stats(http, "echo-hang")["calls"][-1]["outcome"] == "client_gone"
    control(http, model="echo-hang", mode=None)  # back to the model's default: echo
    assert http.post("/v1/chat/completions", json=chat_body("echo-hang")).status_code == 200


def test_stats_models_and_control_errors(http: httpx.Client, sdk: openai.OpenAI) -> None:
    http.post(
        "/v1/chat/completions",
        json=chat_body("echo-stats", stream=True),
        headers={"Authorization": "Bearer other"},
    )
    sdk.chat.completions.create(model="echo-stats", messages=[])
    http.post("/v1/completions", json={"model": "echo-stats", "prompt": "p"})
    http.post("/v1/embeddings", json={"model": "echo-stats", "input": ["a", "b"]})
    stats = model_stats(http, "echo-stats")
    assert (stats["chat"], stats["completions"], stats["embeddings"], stats["streams"]) == (2, 1, 1, 1)
    assert [c["authorization"] for c in stats["calls"]] == ["Bearer other"] + [f"Bearer {KEY}"] * 3
    assert stats["last_request"] == {"model": "echo-stats", "input": ["a", "b"]}
    everything = http.get("/_stats").json()
    assert everything["hits_by_model"]["echo-stats"] == 4 and everything["completion_hits"] >= 1

    control(http, model="configured-only", mode="echo")
    listed = http.get("/v1/models").json()
    assert listed["object"] == "list"
    names = {entry["id"] for entry in listed["data"]}
    assert {"echo-stats", "configured-only"} <= names
    assert {model.id for model in sdk.models.list()} == names

    assert http.post("/_control", json={"model": "x", "chunk_dealy": 1}).status_code == 400
    assert http.post("/_control", json={"model": "x", "mode": "nonsense"}).status_code == 400
    control(http, model="echo-reset", status=500)
    control(http, model="echo-reset", reset=True)
    assert http.post("/v1/chat/completions", json=chat_body("echo-reset")).status_code == 200
