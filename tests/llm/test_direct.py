"""The direct transport (kairos/llm/direct.py) against hostile providers: its SSE decoder fed garbage,
huge lines, odd line endings and error events, and the whole transport (the raw engine included)
against a scripted HTTP server on 127.0.0.1 that answers exactly the bytes a test gives it.

Also which targets are direct at all (kairos/llm/transport.py asks litellm: this module imports it,
~5 s once), and that a key a provider echoes in an error never reaches the client's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kairos.config.llm import LlmConfig, LlmTarget
from kairos.llm import direct
from kairos.llm.calls import Attempted, ProviderFailed, call
from kairos.llm.direct import DirectTarget, SseDecoder, event
from kairos.llm.transport import Payload, ProviderStatus, ProviderTimeout, ProviderUnreachable, Transports
from kairos.proxy.raw_engine import RawEngine

KEY = "sk-direct-test-secret-0123456789abcdef"
LABEL = "openai/echo-x"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One OpenAI chat chunk, compact as OpenAI sends it."""
    delta = {} if content is None else {"content": content}
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "echo-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sse(*datas: bytes) -> bytes:
    return b"".join(b"data: " + data + b"\n\n" for data in datas)


# -- the decoder ----------------------------------------------------------------------------------


def test_events_are_the_same_however_the_bytes_are_split() -> None:
    stream = sse(chunk("he"), chunk("llo"), b"[DONE]")
    expected = [(b"", chunk("he")), (b"", chunk("llo")), (b"", b"[DONE]")]
    for cut in range(len(stream) + 1):
        decoder = SseDecoder(LABEL)
        found = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) + decoder.end()
        assert found == expected, cut
    one_by_one = SseDecoder(LABEL)
    found = [item for index in range(len(stream)) for item in one_by_one.feed(stream[index : index + 1])]
    assert found == expected


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending_and_a_crlf_split_across_reads(newline: bytes) -> None:
    stream = b"data: one" + newline + newline + b"data: two" + newline + newline
    for cut in range(len(stream) + 1):
        decoder = SseDecoder(LABEL)
        found = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) + decoder.end()
        assert found == [(b"", b"one"), (b"", b"two")], (newline, cut)


def test_fields_comments_and_multi_line_data() -> None:
    decoder = SseDecoder(LABEL)
    stream = (
        b": keep-alive comment\n"
        b"id: 7\nretry: 1000\n"
        b"event: message\n"
        b"data:no-space\n"
        b"data: second line\n\n"
        b"event: error\ndata: {}\n\n"
    )
    assert decoder.feed(stream) == [(b"message", b"no-space\nsecond line"), (b"error", b"{}")]


def test_lines_without_a_data_prefix_are_skipped_and_bounded() -> None:
    decoder = SseDecoder(LABEL)
    garbage = b"".join(b'garbage %d {"not": "sse"}\n' % index for index in range(100))
    assert decoder.feed(garbage + sse(chunk("ok"))) == [(b"", chunk("ok"))]
    endless = SseDecoder(LABEL)
    with pytest.raises(ProviderStatus) as caught:
        for _ in range(direct.MAX_IGNORED_LINES // 100 + 2):
            endless.feed(garbage)
    assert caught.value.status_code == 502 and "not SSE" in str(caught.value)


def test_a_huge_line_is_refused_before_it_grows_memory() -> None:
    decoder = SseDecoder(LABEL, limit=64 * 1024)
    piece = b"x" * 8192
    with pytest.raises(ProviderStatus) as caught:
        for _ in range(100):  # 800 KiB offered, refused past 64 KiB
            decoder.feed(piece)
    assert caught.value.status_code == 502 and "line over" in str(caught.value)
    assert len(decoder._buffer) <= 64 * 1024 + len(piece)
    many_lines = SseDecoder(LABEL, limit=64 * 1024)
    with pytest.raises(ProviderStatus, match="event over"):
        many_lines.feed(b"data: " + piece + b"\n" * 1 + (b"data: " + piece + b"\n") * 10)


def test_the_last_event_counts_without_its_blank_line() -> None:
    decoder = SseDecoder(LABEL)
    assert decoder.feed(b"data: " + chunk("a")) == []
    assert decoder.end() == [(b"", chunk("a"))]


# -- one event ------------------------------------------------------------------------------------


def test_an_event_keeps_the_providers_bytes() -> None:
    payload = event(b"", chunk("hi"), LABEL)
    assert payload.raw == chunk("hi") and payload.data["choices"][0]["delta"] == {"content": "hi"}
    spread = event(b"", b'{"model": "echo-x",\n"choices": []}', LABEL)
    assert spread.raw is None  # one `data:` line per event on the way out: re-serialised


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        (b"", b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}', 429, None),
        (
            b"",
            b'{"error": {"message": "bad", "code": "context_length_exceeded"}}',
            500,
            "context_length_exceeded",
        ),
        (b"", b'{"error": "plain words"}', 500, None),
        (b"error", b'{"message": "overloaded"}', 500, None),
        (b"error", b"not json at all", 500, None),
        (b"", b"not json at all", 502, None),
        (b"", b"[1, 2, 3]", 502, None),
        (b"", chunk(None, "abort"), 500, None),
    ],
)
def test_error_events_and_garbage_fail_with_litellms_statuses(
    name: bytes, data: bytes, status: int, code: str | None
) -> None:
    with pytest.raises(ProviderStatus) as caught:
        event(name, data, LABEL)
    assert caught.value.status_code == status and caught.value.code == code
    assert LABEL in str(caught.value)


def test_the_public_model_replaces_the_targets_and_nothing_else() -> None:
    content = b'"choices":[{"delta":{"content":"say \\"model\\":\\"echo-x\\""}}]'
    raw = b'{"id":"x","model":"echo-x",' + content + b',"usage":null}'
    payload = Payload(json.loads(raw), raw)
    out = payload.encoded("public")
    assert out == raw.replace(b'"model":"echo-x"', b'"model":"public"', 1)  # the content is untouched
    assert json.loads(out)["choices"][0]["delta"]["content"] == 'say "model":"echo-x"'
    assert b'"usage"' not in payload.encoded("public", drop_usage=True)
    spaced = b'{"model": "echo-x", "usage": {"prompt_tokens": 1}}'
    dropped = json.loads(Payload(json.loads(spaced), spaced).encoded("public", drop_usage=True))
    assert dropped == {"model": "public"}
    assert (
        json.loads(Payload({"object": "list"}, b'{"object":"list"}').encoded("public"))["model"] == "public"
    )


# -- the transport against a scripted provider ------------------------------------------------------


@dataclass
class Script:
    """What the provider does with the next request: ``parts`` written in order (a float waits that
    many seconds), then the connection closed if ``close``."""

    parts: list[bytes | float] = field(default_factory=list)
    close: bool = True


@dataclass
class Provider:
    port: int
    scripts: list[Script] = field(default_factory=list)
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def head(status: int = 200, kind: str = "text/event-stream", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {kind}", "transfer-encoding: chunked"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def whole(status: int, body: bytes, kind: str = "application/json", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {kind}", f"content-length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


END = b"0\r\n\r\n"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    found = Provider(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while found.scripts:
                request_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in request_head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                found.requests.append((request_head, body))
                script = found.scripts.pop(0)
                for part in script.parts:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
                if script.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:  # the test is over (the server closes): nothing left to send
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    async with server:
        yield found
        server.close()


@pytest.fixture
async def engine() -> AsyncIterator[RawEngine]:
    pool = RawEngine()
    await pool.start()
    yield pool
    await pool.close()


def target_of(engine: RawEngine, provider: Provider) -> DirectTarget:
    return DirectTarget(engine, LABEL, provider.base, "echo-x", KEY)


async def streamed(answer: Any) -> list[Payload]:
    assert not isinstance(answer, Payload)
    return [item async for batch in answer for item in batch]


STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.anyio
async def test_a_stream_with_garbage_lines_still_relays_its_events(
    provider: Provider, engine: RawEngine
) -> None:
    body = b"this is not sse\n: comment\n" + sse(chunk("a"), chunk("b", "stop")) + b"junk\n"
    usage = chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2}).replace(
        b'"choices":[{', b'"x":[{'
    )
    body += sse(usage, b"[DONE]")
    provider.scripts.append(Script([head(), chunked(body), END]))
    events = await streamed(await target_of(engine, provider).call("chat", STREAM, 5))
    assert [item.raw for item in events] == [chunk("a"), chunk("b", "stop"), usage]
    assert events[-1].data["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    request_head, request_body = provider.requests[0]
    assert request_head.startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert f"authorization: Bearer {KEY}".encode() in request_head
    assert json.loads(request_body) == {"model": "echo-x", **STREAM}


@pytest.mark.anyio
async def test_a_stream_without_usage_simply_ends(provider: Provider, engine: RawEngine) -> None:
    provider.scripts.append(Script([head(), chunked(sse(chunk("a"), chunk(None, "stop"))), END]))
    events = await streamed(await target_of(engine, provider).call("chat", STREAM, 5))
    assert len(events) == 2 and all("usage" not in item.data for item in events)


@pytest.mark.anyio
async def test_an_error_mid_stream_fails_the_stream_after_what_came_before(
    provider: Provider, engine: RawEngine
) -> None:
    error = b'{"error": {"message": "the engine died", "code": 500}}'
    provider.scripts.append(Script([head(), chunked(sse(chunk("a"))), 0.05, chunked(sse(error)), END]))
    answer = await target_of(engine, provider).call("chat", STREAM, 5)
    assert not isinstance(answer, Payload)
    first = await anext(answer)
    assert [item.data["choices"][0]["delta"] for item in first] == [{"content": "a"}]
    with pytest.raises(ProviderStatus) as caught:
        await anext(answer)
    assert caught.value.status_code == 500 and "the engine died" in str(caught.value)


@pytest.mark.anyio
async def test_events_that_arrive_together_go_together_and_a_bad_one_after_them(
    provider: Provider, engine: RawEngine
) -> None:
    """One read brings three events then an error: the three are one batch (one write to the client),
    then the stream fails."""
    error = b'{"error": {"message": "overloaded", "code": 503}}'
    body = sse(chunk("a"), chunk("b"), chunk("c"), error, chunk("never"))
    provider.scripts.append(Script([head(), chunked(body), END]))
    answer = await target_of(engine, provider).call("chat", STREAM, 5)
    assert not isinstance(answer, Payload)
    batch = await anext(answer)
    assert [item.data["choices"][0]["delta"]["content"] for item in batch] == ["a", "b", "c"]
    with pytest.raises(ProviderStatus, match="overloaded"):
        await anext(answer)


@pytest.mark.anyio
async def test_a_stream_of_nothing_but_garbage_is_empty(provider: Provider, engine: RawEngine) -> None:
    body = b"".join(b'{"choices": [%d]}\n' % index for index in range(50))  # ndjson, not SSE
    provider.scripts.append(Script([head(), chunked(body), END]))
    answer = await target_of(engine, provider).call("chat", STREAM, 5)
    assert not isinstance(answer, Payload)
    with pytest.raises(StopAsyncIteration):
        await anext(answer)


@pytest.mark.anyio
async def test_a_huge_line_fails_the_stream(
    provider: Provider, engine: RawEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "MAX_EVENT", 32 * 1024)
    huge = [chunked(b"data: " + b"x" * 16 * 1024) for _ in range(8)]  # 128 KiB, no line end
    provider.scripts.append(Script([head(), chunked(sse(chunk("a"))), *huge, 5.0]))
    answer = await target_of(engine, provider).call("chat", STREAM, 5)
    assert not isinstance(answer, Payload)
    await anext(answer)
    with pytest.raises(ProviderStatus, match="line over 32,768 bytes"):
        await anext(answer)


@pytest.mark.anyio
async def test_a_cut_stream_and_a_silent_one(provider: Provider, engine: RawEngine) -> None:
    provider.scripts.append(Script([head(), chunked(sse(chunk("a")))]))  # closed without the body's end
    answer = await target_of(engine, provider).call("chat", STREAM, 5)
    assert not isinstance(answer, Payload)
    await anext(answer)
    with pytest.raises(ProviderUnreachable, match="the stream broke"):
        await anext(answer)
    provider.scripts.append(Script([head(), chunked(sse(chunk("a"))), 3.0]))
    answer = await target_of(engine, provider).call("chat", STREAM, 0.3)
    assert not isinstance(answer, Payload)
    await anext(answer)
    with pytest.raises(ProviderTimeout, match="mid-stream"):
        await anext(answer)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "status", "message", "code"),
    [
        (whole(503, b"<html><h1>503 Service Unavailable</h1></html>", "text/html", retry_after="7"),
         503, "503 Service Unavailable", None),
        (whole(429, b'{"error": {"message": "Rate limit reached", "type": "rate_limit_error", '
                    b'"code": "rate_limit_exceeded"}}', retry_after="0.5"), 429, "Rate limit reached",
         "rate_limit_exceeded"),
        (whole(400, b"", "text/plain"), 400, "HTTP 400", None),
        (whole(401, b'{"message": "no key"}'), 401, "no key", None),
        (whole(404, b"\xff\xfe not utf-8 \x00", "application/octet-stream"), 404, "not utf-8", None),
        (whole(302, b"", location="http://elsewhere/"), 502, "answered 302", None),
        (whole(200, b"<html>surprise</html>", "text/html"), 502, "not JSON", None),
        (whole(200, b'{"error": {"message": "late failure", "code": 503}}'), 503, "late failure", None),
    ],
)  # fmt: skip
async def test_error_answers_of_any_shape(
    provider: Provider, engine: RawEngine, answer: bytes, status: int, message: str, code: str | None
) -> None:
    provider.scripts.append(Script([answer]))
    with pytest.raises(ProviderStatus) as caught:
        await target_of(engine, provider).call("chat", {"messages": [{"role": "user", "content": "hi"}]}, 5)
    error = caught.value
    assert error.status_code == status and message in str(error) and error.code == code
    if status in (429, 503) and b"retry-after" in answer:
        assert error.headers["retry-after"] in ("7", "0.5")


@pytest.mark.anyio
async def test_a_json_answer_is_relayed_as_its_bytes_and_the_connection_reused(
    provider: Provider, engine: RawEngine
) -> None:
    data = b'"data":[{"embedding":[0.5,0.25],"index":0}]'
    body = b'{"object":"list","model":"echo-x",' + data + b',"usage":{"prompt_tokens":2}}'
    provider.scripts += [Script([whole(200, body)], close=False), Script([whole(200, body)])]
    target = target_of(engine, provider)
    for _ in range(2):
        answer = await target.call("embedding", {"input": ["hi"], "stream": True}, 5)
        assert isinstance(answer, Payload) and answer.raw == body
        assert answer.encoded("embed") == body.replace(b'"echo-x"', b'"embed"')
    assert len(provider.requests) == 2 and provider.requests[1][0].startswith(b"POST /v1/embeddings ")
    assert b'"stream"' in provider.requests[0][1]  # relayed as sent; the endpoint drops it for embeddings


@pytest.mark.anyio
async def test_nothing_listening_and_a_half_sent_answer(provider: Provider, engine: RawEngine) -> None:
    nowhere = DirectTarget(engine, LABEL, "http://127.0.0.1:1/v1", "echo-x", KEY)
    with pytest.raises(ProviderUnreachable) as caught:
        await nowhere.call("chat", {"messages": []}, 5)
    assert KEY not in str(caught.value)
    cut = whole(200, b'{"model":"echo-x","choices":[]}')[:-10]
    provider.scripts.append(Script([cut]))
    with pytest.raises(ProviderUnreachable, match="cut"):
        await target_of(engine, provider).call("chat", {"messages": []}, 5)


# -- through calls.py: fallback classification, keys ----------------------------------------------


def config_for(provider: Provider, models: int = 2) -> LlmConfig:
    targets = [
        {"provider": "openai", "model": f"echo-{index}", "api_base": provider.base, "api_key": KEY}
        for index in range(models)
    ]
    return LlmConfig.model_validate({"models": {"m": targets}})


@pytest.fixture(scope="module")
def litellm() -> Any:
    from kairos.ai.provider import load_litellm

    return load_litellm()


@pytest.mark.anyio
async def test_an_echoed_key_never_reaches_the_message(provider: Provider, litellm: Any) -> None:
    echoed = json.dumps({"error": {"message": f"key Bearer {KEY} is not valid", "code": "invalid_api_key"}})
    provider.scripts.append(Script([whole(401, echoed.encode())]))
    transports = Transports()
    try:
        with pytest.raises(ProviderFailed) as caught:
            await call(config_for(provider), "m", "chat", {"messages": []}, Attempted(), transports)
    finally:
        await transports.close()
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert KEY not in caught.value.message and KEY[-8:] not in caught.value.message


@pytest.mark.anyio
async def test_a_429_falls_back_and_a_stream_error_before_the_first_event_too(
    provider: Provider, litellm: Any
) -> None:
    busy = whole(429, b'{"error": {"message": "busy", "code": "rate_limit_exceeded"}}')
    failing: list[bytes | float] = [head(), chunked(sse(b'{"error": {"message": "down", "code": 503}}')), END]
    ok: list[bytes | float] = [head(), chunked(sse(chunk("fine"), b"[DONE]")), END]
    provider.scripts += [Script([busy]), Script(failing), Script(ok)]
    transports = Transports()
    attempted = Attempted()
    try:
        answer = await call(config_for(provider, 3), "m", "chat", STREAM, attempted, transports)
        assert isinstance(answer, tuple)
        first, rest = answer
        assert [item.data["choices"][0]["delta"] for item in first] == [{"content": "fine"}]
        assert [batch async for batch in rest] == []
    finally:
        await transports.close()
    assert attempted.fallbacks == 2 and attempted.transport == "direct" and attempted.calls == 3
    assert [json.loads(body)["model"] for _, body in provider.requests] == ["echo-0", "echo-1", "echo-2"]


# -- which targets are direct ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_name", "model", "kind", "extra", "expected"),
    [
        ("openai", "echo-plain", "chat", {"api_base": "http://127.0.0.1:9/v1"}, "direct"),
        ("openai", "gpt-4o-mini", "chat", {}, "direct"),
        ("openai", "gpt-4o-mini", "text", {}, "litellm"),  # litellm answers it through chat
        ("openai", "qwen2.5", "text", {"api_base": "http://127.0.0.1:9/v1"}, "direct"),
        ("openai", "o3-mini", "chat", {}, "litellm"),  # litellm rewrites max_tokens for it
        ("openai", "gpt-4o-mini", "chat", {"transport": "litellm"}, "litellm"),
        ("anthropic", "claude-3-5-haiku-latest", "chat", {}, "litellm"),
        ("groq", "llama-3.1-8b-instant", "chat", {}, "litellm"),
        ("hosted_vllm", "qwen", "chat", {"api_base": "http://127.0.0.1:9/v1"}, "litellm"),
        ("no-such-provider", "x", "chat", {}, "litellm"),
    ],
)
def test_only_openais_own_wire_is_direct(
    provider_name: str, model: str, kind: str, extra: dict[str, str], expected: str, litellm: Any
) -> None:
    target = LlmTarget.model_validate({"provider": provider_name, "model": model, **extra})
    transports = Transports()
    chosen = transports.for_target(target, kind, litellm)
    assert chosen.name == expected
    assert transports.for_target(target, kind, litellm) is chosen  # decided once
    if isinstance(chosen, DirectTarget) and "api_base" not in extra:
        assert chosen._urls["chat"] == "https://api.openai.com/v1/chat/completions"


def test_a_bad_transport_value_is_refused_with_its_field() -> None:
    with pytest.raises(ValueError, match="transport"):
        LlmTarget.model_validate({"provider": "openai", "model": "x", "transport": "http"})
