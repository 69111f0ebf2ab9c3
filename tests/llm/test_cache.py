"""The LLM answer cache (kairos/llm/cache.py): exact keys, the memory and Redis stores (a real
redis-server started by this module, and one stopped mid-test), semantic lookups, and the stream
helpers against the chunks tests/servers/fake_llm.py really sends (served in-process on 127.0.0.1)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from pydantic import ValidationError
from redis.asyncio import Redis

from kairos.config.llm import LlmCacheConfig, LlmConfig
from kairos.config.loader import load_text
from kairos.config.problems import ConfigError
from kairos.llm.cache import (
    PREFIX,
    CachedAnswer,
    LlmCache,
    StreamAssembler,
    embedding_of,
    exact_key,
    replay,
    semantic_query,
)
from tests.processes import free_port, redis_server, stop
from tests.servers.fake_llm import make_app

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's own redis-server (stopped by PID when the module ends)."""
    with redis_server(tmp_path_factory.mktemp("llm-cache")) as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings(**values: Any) -> LlmCacheConfig:
    return LlmCacheConfig.model_validate(values)


def answer(content: str, model: str = "fast") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def rotated(degrees: float) -> list[float]:
    """A 2-D unit vector ``degrees`` away from (1, 0): cosine similarity cos(degrees)."""
    radians = math.radians(degrees)
    return [math.cos(radians), math.sin(radians)]


# -- exact keys --------------------------------------------------------------------------------------


def test_exact_key_ignores_the_delivery_and_the_key_order() -> None:
    key = exact_key("/v1", "alice", "chat", CHAT)
    assert len(key) == 64 and int(key, 16) >= 0
    streamed = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-42",
        "metadata": {"trace": "x"},
        **dict(reversed(list(CHAT.items()))),
    }
    assert exact_key("/v1", "alice", "chat", streamed) == key
    assert exact_key("/v1", "alice", "chat", {**CHAT, "temperature": 1}) == exact_key(
        "/v1", "alice", "chat", {**CHAT, "temperature": 1.0}
    )


def test_exact_key_changes_with_what_changes_the_answer() -> None:
    key = exact_key("/v1", "alice", "chat", CHAT)
    others = [
        exact_key("/v1", "alice", "chat", {**CHAT, "temperature": 0.2}),
        exact_key("/v1", "alice", "chat", {**CHAT, "temperature": 0.3}),
        exact_key("/v1", "alice", "chat", {**CHAT, "n": 2}),
        exact_key("/v1", "alice", "chat", {**CHAT, "max_tokens": 5}),
        exact_key("/v1", "alice", "chat", {**CHAT, "model": "smart"}),
        exact_key("/v1", "alice", "chat", {**CHAT, "messages": [{"role": "user", "content": "Hi"}]}),
        exact_key("/v1", "alice", "text", CHAT),
        exact_key("/v2", "alice", "chat", CHAT),
    ]
    assert len({key, *others}) == len(others) + 1


def test_exact_key_keeps_consumers_apart_unless_shared() -> None:
    assert exact_key("/v1", "alice", "chat", CHAT) != exact_key("/v1", "bob", "chat", CHAT)
    assert exact_key("/v1", None, "chat", CHAT) == exact_key("/v1", None, "chat", dict(CHAT))
    assert exact_key("/v1", None, "chat", CHAT) not in {
        exact_key("/v1", "alice", "chat", CHAT),
        exact_key("/v1", "None", "chat", CHAT),
    }


def test_semantic_query_embeds_the_last_user_message_and_scopes_the_rest() -> None:
    system = {"role": "system", "content": "Answer briefly."}
    ask = {**CHAT, "messages": [system, {"role": "user", "content": "Capital of France?"}]}
    scope, text = semantic_query("/v1", "alice", ask) or ("", "")
    assert text == "Capital of France?" and scope.startswith("/v1|fast|alice|")
    reworded = {**ask, "messages": [system, {"role": "user", "content": "France's capital city?"}]}
    assert semantic_query("/v1", "alice", {**reworded, "stream": True}) == (scope, "France's capital city?")
    # Anything else is the scope's: the system prompt, the parameters, the model, the consumer.
    for other in (
        {**ask, "messages": [{"role": "system", "content": "Be verbose."}, ask["messages"][1]]},
        {**ask, "temperature": 1.5},
        {**ask, "model": "smart"},
    ):
        found = semantic_query("/v1", "alice", other)
        assert found is not None and found[0] != scope
    assert (semantic_query("/v1", "bob", ask) or ("",))[0] != scope
    shared = semantic_query("/v1", None, ask)
    assert shared is not None and shared[0].startswith("/v1|fast|*|")
    parts = [{"type": "text", "text": "Capital"}, {"type": "text", "text": "of France?"}]
    in_parts = semantic_query("/v1", "alice", {**CHAT, "messages": [{"role": "user", "content": parts}]})
    assert in_parts is not None and in_parts[1] == "Capital\nof France?"
    assert in_parts[0] == (semantic_query("/v1", "alice", CHAT) or ("",))[0]
    # Not comparable: no text to embed.
    image = [{"type": "image_url", "image_url": {"url": "data:..."}}]
    for messages in ([{"role": "user", "content": image}], [{"role": "assistant", "content": "x"}], [], None):
        assert semantic_query("/v1", "alice", {**CHAT, "messages": messages}) is None
    assert semantic_query("/v1", "alice", {**CHAT, "messages": [{"role": "user", "content": "  "}]}) is None


def test_embedding_of() -> None:
    assert embedding_of({"data": [{"embedding": [1, 0.5]}]}) == [1.0, 0.5]
    assert embedding_of({"data": []}) is None
    assert embedding_of({"data": [{"embedding": ["x"]}]}) is None
    assert embedding_of(None) is None


# -- the memory store ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_ttl_with_a_fake_clock(clock: Clock) -> None:
    cache = LlmCache(settings(ttl_seconds=60), clock=clock)
    assert cache.store == "memory"
    assert await cache.get("k") is None
    await cache.put("k", answer("Paris"))
    clock.now += 59.9
    found = await cache.get("k")
    assert found == CachedAnswer(answer("Paris"), clock.now - 59.9)
    clock.now += 0.1
    assert await cache.get("k") is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.stores, stats.errors, stats.entries) == (1, 2, 1, 0, 0)
    await cache.close()


@pytest.mark.anyio
async def test_memory_is_a_bounded_lru(clock: Clock) -> None:
    cache = LlmCache(settings(max_entries=3), clock=clock)
    for name in "abc":
        await cache.put(name, answer(name))
    assert await cache.get("a") is not None  # a is now the most recently used: b goes first
    await cache.put("d", answer("d"))
    assert await cache.get("b") is None
    assert [name for name in "acd" if await cache.get(name) is not None] == ["a", "c", "d"]
    assert cache.stats.entries == 3
    await cache.put("c", answer("c again"))  # replacing an entry does not grow the store
    assert cache.stats.entries == 3
    found = await cache.get("c")
    assert found is not None and found.answer["choices"][0]["message"]["content"] == "c again"
    await cache.close()


@pytest.mark.anyio
async def test_answers_handed_out_are_copies(clock: Clock) -> None:
    cache = LlmCache(settings(), clock=clock)
    stored = answer("Paris")
    await cache.put("k", stored)
    stored["model"] = "changed after put"
    first = await cache.get("k")
    assert first is not None
    first.answer["model"] = "changed by the caller"
    second = await cache.get("k")
    assert second is not None and second.answer == answer("Paris")
    await cache.close()


# -- semantic ------------------------------------------------------------------------------------------


def semantic(**values: Any) -> LlmCacheConfig:
    return settings(mode="semantic", semantic={"embedding_model": "emb", **values})


async def make_cache(kind: str, clock: Clock, redis_url: str, config: LlmCacheConfig) -> LlmCache:
    if kind == "redis":
        client = Redis.from_url(redis_url)
        await client.flushdb()
        await client.aclose()
        config = config.model_copy(update={"storage_uri": redis_url})
    cache = LlmCache(config, clock=clock)
    assert cache.store == kind
    return cache


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_semantic_near_vectors_hit_and_far_ones_miss(kind: str, clock: Clock, redis_url: str) -> None:
    cache = await make_cache(kind, clock, redis_url, semantic(threshold=0.95))
    try:
        assert await cache.get_similar("s", rotated(0), 0.95) is None  # nothing stored yet
        await cache.put_similar("s", [3.0, 0.0], answer("east"))  # any length: compared by direction
        await cache.put_similar("s", rotated(90), answer("north"))
        near = await cache.get_similar("s", rotated(10), 0.95)  # cos 10° = 0.985
        assert near is not None
        found, score = near
        assert found.answer["choices"][0]["message"]["content"] == "east"
        assert score == pytest.approx(math.cos(math.radians(10)), abs=1e-6)
        assert found.stored_at == clock.now
        assert await cache.get_similar("s", rotated(20), 0.95) is None  # cos 20° = 0.94
        assert await cache.get_similar("s", rotated(20), 0.93) is not None  # the caller's threshold
        best = await cache.get_similar("s", rotated(60), 0.1)  # the better of two matches
        assert best is not None and best[0].answer["choices"][0]["message"]["content"] == "north"
        exact = await cache.get_similar("s", [5.0, 0.0], 1.0)  # threshold 1: the same direction only
        assert exact is not None and exact[1] == 1.0
        assert await cache.get_similar("s", [0.0, 0.0], 0.5) is None  # no direction: nothing matches
        assert await cache.get_similar("s", [1.0, 0.0, 0.0], 0.5) is None  # other dimensions: skipped
        assert await cache.get_similar("other", rotated(0), 0.5) is None
        await cache.put_similar("s", [0.0, 0.0], answer("zero"))  # not stored
        stats = cache.stats
        assert (stats.semantic_hits, stats.semantic_misses, stats.stores, stats.errors) == (4, 5, 2, 0)
        # Semantic entries are not exact ones.
        assert await cache.get("s") is None
    finally:
        await cache.close()


@pytest.mark.anyio
async def test_semantic_candidates_are_scoped_per_consumer(kind: str, clock: Clock, redis_url: str) -> None:
    cache = await make_cache(kind, clock, redis_url, semantic())
    try:
        alice = semantic_query("/v1", "alice", CHAT)
        bob = semantic_query("/v1", "bob", CHAT)
        shared = semantic_query("/v1", None, CHAT)
        assert alice is not None and bob is not None and shared is not None
        await cache.put_similar(alice[0], rotated(0), answer("for alice"))
        assert await cache.get_similar(bob[0], rotated(0), 0.9) is None
        assert await cache.get_similar(shared[0], rotated(0), 0.9) is None
        found = await cache.get_similar(alice[0], rotated(1), 0.9)
        assert found is not None and found[0].answer["choices"][0]["message"]["content"] == "for alice"
    finally:
        await cache.close()


@pytest.mark.anyio
async def test_only_the_newest_max_candidates_are_compared(kind: str, clock: Clock, redis_url: str) -> None:
    cache = await make_cache(kind, clock, redis_url, semantic(max_candidates=3))
    try:
        for degrees in (0, 30, 60, 90, 120):  # 0 and 30 fall out of the three newest
            await cache.put_similar("s", rotated(degrees), answer(str(degrees)))
        assert await cache.get_similar("s", rotated(0), 0.99) is None
        assert await cache.get_similar("s", rotated(30), 0.99) is None
        for degrees in (60, 90, 120):
            found = await cache.get_similar("s", rotated(degrees), 0.99)
            assert found is not None and found[0].answer["choices"][0]["message"]["content"] == str(degrees)
        if kind == "memory":
            assert cache.stats.entries == 3  # the others' answers went with their vectors
    finally:
        await cache.close()


@pytest.mark.anyio
async def test_semantic_entries_expire(kind: str, clock: Clock, redis_url: str) -> None:
    cache = await make_cache(kind, clock, redis_url, semantic().model_copy(update={"ttl_seconds": 60}))
    try:
        await cache.put_similar("s", rotated(0), answer("old"))
        clock.now += 30
        await cache.put_similar("s", rotated(5), answer("newer"))
        clock.now += 31  # "old" is 61 s old
        found = await cache.get_similar("s", rotated(0), 0.9)
        assert found is not None and found[0].answer["choices"][0]["message"]["content"] == "newer"
        clock.now += 30
        assert await cache.get_similar("s", rotated(0), 0.9) is None
        if kind == "memory":
            assert cache.stats.entries == 0
    finally:
        await cache.close()


@pytest.mark.anyio
async def test_memory_semantic_entries_count_against_max_entries(clock: Clock) -> None:
    cache = LlmCache(semantic().model_copy(update={"max_entries": 2}), clock=clock)
    await cache.put_similar("s", rotated(0), answer("a"))
    await cache.put("exact", answer("b"))
    await cache.put_similar("t", rotated(0), answer("c"))  # evicts "a", the least recently used
    assert await cache.get_similar("s", rotated(0), 0.9) is None
    assert await cache.get("exact") is not None
    assert await cache.get_similar("t", rotated(0), 0.9) is not None
    assert cache.stats.entries == 2
    await cache.close()


# -- Redis -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_stores_json_with_the_ttl(redis: Redis, redis_url: str, clock: Clock) -> None:
    config = settings(storage_uri=redis_url, ttl_seconds=120)
    cache, replica = LlmCache(config, clock=clock), LlmCache(settings(storage_uri=None), redis_url, clock)
    try:
        assert replica.store == "redis" and cache.stats.entries is None
        assert await cache.get("k") is None
        await cache.put("k", answer("Paris"))
        value = await redis.get(PREFIX + "x:k")
        assert value is not None
        assert json.loads(value) == {"stored_at": clock.now, "answer": answer("Paris")}
        assert 118 <= await redis.ttl(PREFIX + "x:k") <= 120
        assert await replica.get("k") == CachedAnswer(answer("Paris"), clock.now)  # replicas share it
        await redis.set(PREFIX + "x:bad", b"\x80not json")
        assert await cache.get("bad") is None  # unreadable: a miss
        await cache.put_similar("scope", rotated(0), answer("Rome"))
        lists = [key async for key in redis.scan_iter(match=PREFIX + "v:*")]
        assert lists == [(PREFIX + "v:scope").encode()]
        assert 118 <= await redis.ttl(lists[0]) <= 120
        answers = [key async for key in redis.scan_iter(match=PREFIX + "s:*")]
        assert len(answers) == 1 and 118 <= await redis.ttl(answers[0]) <= 120
        found = await replica.get_similar("scope", rotated(3), 0.99)
        assert found is not None and found[0].answer == answer("Rome")
        await redis.delete(*answers)  # the vector is listed, its answer gone: a miss
        assert await cache.get_similar("scope", rotated(0), 0.99) is None
        assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (0, 2, 0)
    finally:
        await cache.close()
        await replica.close()


@pytest.mark.anyio
async def test_a_redis_stopped_mid_test_never_raises(tmp_path: Path, clock: Clock) -> None:
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        cache = LlmCache(semantic().model_copy(update={"storage_uri": url}), clock=clock)
        try:
            await cache.put("k", answer("Paris"))
            await cache.put_similar("s", rotated(0), answer("Rome"))
            assert await cache.get("k") is not None
            assert await cache.get_similar("s", rotated(0), 0.9) is not None
            stop(server.process)  # by its PID
            started = time.monotonic()
            assert await cache.get("k") is None
            assert await cache.get_similar("s", rotated(0), 0.9) is None  # skipped: Redis is marked down
            await cache.put("k2", answer("dropped"))
            await cache.put_similar("s", rotated(0), answer("dropped"))
            assert time.monotonic() - started < 2
            stats = cache.stats
            assert (stats.hits, stats.semantic_hits, stats.stores, stats.errors) == (1, 1, 2, 4)
        finally:
            await cache.close()


@pytest.mark.anyio
async def test_an_unreachable_redis_is_a_miss(clock: Clock) -> None:
    cache = LlmCache(settings(storage_uri=f"redis://127.0.0.1:{free_port()}/0"), clock=clock)
    try:
        await cache.put("k", answer("x"))
        assert await cache.get("k") is None
        assert cache.stats.errors == 2 and cache.stats.stores == 0
    finally:
        await cache.close()


# -- streams -------------------------------------------------------------------------------------------


def events(body: bytes) -> list[Any]:
    """The data of each SSE event (``[DONE]`` as the string)."""
    found = []
    for event in body.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: "), event
            data = event[len(b"data: ") :]
            found.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return found


def assembled(chunks: list[Any], model: str = "public") -> dict[str, Any] | None:
    assembler = StreamAssembler()
    for chunk in chunks:
        if chunk != "[DONE]":
            assembler.add(chunk)
    return assembler.answer(model)


@pytest.fixture
async def fake_llm() -> AsyncIterator[str]:
    """tests/servers/fake_llm.py served in this process on 127.0.0.1."""
    server = TestServer(make_app([]), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/v1"
    finally:
        await server.close()


@pytest.mark.anyio
async def test_a_fake_llm_stream_assembles_into_its_non_stream_answer(fake_llm: str) -> None:
    request = {
        "model": "echo-cache",
        "messages": [{"role": "user", "content": "tell me about Paris in spring"}],
        "max_tokens": 12,
    }
    async with httpx.AsyncClient() as client:
        plain = (await client.post(f"{fake_llm}/chat/completions", json=request)).json()
        streamed = await client.post(
            f"{fake_llm}/chat/completions",
            json={**request, "stream": True, "stream_options": {"include_usage": True}},
        )
        without_usage = await client.post(f"{fake_llm}/chat/completions", json={**request, "stream": True})
    chunks = events(streamed.content)
    assert len(chunks) == 12 + 4  # role, a chunk per word, finish, usage, [DONE]
    built = assembled(chunks)
    assert built is not None
    assert built["choices"] == [
        {
            **plain["choices"][0],
            "message": {"role": "assistant", "content": plain["choices"][0]["message"]["content"]},
        }
    ]
    assert built["usage"] == plain["usage"]
    assert built["model"] == "public" and built["object"] == "chat.completion"
    assert built["id"] == chunks[0]["id"] and built["system_fingerprint"] == "fp_fake"
    no_usage = assembled(events(without_usage.content))
    assert no_usage is not None and "usage" not in no_usage
    assert no_usage["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    # Cut short (no finish chunk): nothing to cache.
    assert assembled(chunks[:-3]) is None


@pytest.mark.anyio
async def test_replay_round_trips(fake_llm: str) -> None:
    request = {"model": "echo-replay", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 9}
    async with httpx.AsyncClient() as client:
        plain = (await client.post(f"{fake_llm}/chat/completions", json=request)).json()
    plain["model"] = "public"
    for include_usage in (True, False):
        for piece_chars in (None, 1, 7, 10_000):
            sent = replay(plain, include_usage, piece_chars=piece_chars)
            assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in sent)
            assert all(event.count(b"\n\n") == 1 for event in sent)
            assert sent[-1] == b"data: [DONE]\n\n"
            chunks = events(b"".join(sent))
            assert all(chunk == "[DONE]" or chunk["object"] == "chat.completion.chunk" for chunk in chunks)
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            deltas = [c["choices"][0]["delta"] for c in chunks[1:] if c != "[DONE]" and c["choices"]]
            pieces = [delta["content"] for delta in deltas if delta.get("content")]
            if piece_chars in (None, 10_000):
                assert len(pieces) == 1
            elif piece_chars == 1:
                assert len(pieces) == 9  # one word each: a piece never splits a word
            built = assembled(chunks)
            assert built is not None
            expected = dict(plain) if include_usage else {k: v for k, v in plain.items() if k != "usage"}
            assert built == expected
            usage_chunks = [c for c in chunks if c != "[DONE]" and not c["choices"]]
            assert usage_chunks == ([{**usage_chunks[0], "usage": plain["usage"]}] if include_usage else [])
            assert all(("usage" in c) == include_usage for c in chunks if c != "[DONE]")


def test_tool_calls_and_several_choices_assemble_and_replay() -> None:
    base = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 5, "model": "gpt-4o-mini"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    chunks = [
        chunk(0, {"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk(1, {"role": "assistant", "content": ""}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk(1, {"content": "Hello"}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            0, {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}]}
        ),
        chunk(1, {"content": " world", "refusal": None}),
        chunk(0, {}, "tool_calls"),
        chunk(1, {}, "stop"),
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
    built = assembled(chunks)
    assert built is not None
    assert built["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hello world"},
            "logprobs": None,
            "finish_reason": "stop",
        },
    ]
    assert built["usage"]["total_tokens"] == 7
    assert assembled(events(b"".join(replay(built, True)))) == built


def test_what_cannot_be_assembled_is_not_cached() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}

    done = chunk({}, "stop")
    assert assembled([chunk({"role": "assistant", "content": "hi"}), done]) is not None
    assert assembled([]) is None
    assert assembled([chunk({"content": "hi"})]) is None  # no finish reason
    assert assembled([chunk({"content": "hi"}, logprobs={"content": []}), done]) is None
    assert assembled([chunk({"function_call": {"name": "f"}}), done]) is None
    assert assembled([chunk({"content": 3}), done]) is None
    assert assembled([chunk({"content": "hi"}), {"error": {"message": "boom"}}, done]) is None
    assert assembled([chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), done]) is None
    assert (
        assembled([{"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]}]) is None
    )  # no choice 0
    assert assembled(["not a chunk"]) is None
    with pytest.raises(ValueError, match="not a chat completion"):
        replay({"choices": [{"index": 0, "text": "a completion"}]}, False)


# -- config ----------------------------------------------------------------------------------------------


MODELS = {
    "fast": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "emb": [{"provider": "openai", "model": "e"}],
}


def validation_error(cache: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as raised:
        LlmConfig.model_validate({"models": MODELS, "cache": cache})
    return str(raised.value)


def test_cache_config_defaults_and_validation() -> None:
    config = LlmConfig.model_validate({"models": MODELS, "cache": {}})
    assert config.cache == LlmCacheConfig(
        mode="exact",
        ttl_seconds=3600,
        max_entries=10_000,
        storage_uri="memory://",
        shared_across_consumers=False,
    )
    semantic_config = LlmConfig.model_validate(
        {"models": MODELS, "cache": {"mode": "semantic", "semantic": {"embedding_model": "emb"}}}
    )
    assert semantic_config.cache is not None and semantic_config.cache.semantic is not None
    assert (semantic_config.cache.semantic.threshold, semantic_config.cache.semantic.max_candidates) == (
        0.95,
        1000,
    )
    message = validation_error({"mode": "semantic", "semantic": {"embedding_model": "nope"}})
    assert (
        "cache.semantic.embedding_model: 'nope' is not a model of this route (models: emb, fast)" in message
    )
    assert "semantic: required" in validation_error({"mode": "semantic"})
    for threshold in (0, -0.5, 1.01):
        message = validation_error({"semantic": {"embedding_model": "emb", "threshold": threshold}})
        assert "cache.semantic.threshold" in message
    assert "cache.semantic.max_candidates" in validation_error(
        {"semantic": {"embedding_model": "emb", "max_candidates": 0}}
    )
    assert "cache.storage_uri" in validation_error({"storage_uri": "http://127.0.0.1"})
    assert "cache.mode" in validation_error({"mode": "fuzzy"})
    assert "cache.ttl_seconds" in validation_error({"ttl_seconds": 0})
    for uri in ("redis://127.0.0.1:6379/0", "rediss://h", "unix:///run/redis.sock", "memory://", None):
        LlmCacheConfig.model_validate({"storage_uri": uri})


def test_the_loader_names_the_cache_field() -> None:
    route = {
        "protocol": "llm",
        "external_path": "/v1",
        "internal_path": "/",
        "methods": ["POST"],
        "llm": {"models": MODELS, "cache": {"mode": "semantic", "semantic": {"embedding_model": "missing"}}},
    }
    with pytest.raises(ConfigError) as raised:
        load_text(json.dumps({"version": 1, "routers": [route]}))
    assert "routers[0].llm: cache.semantic.embedding_model: 'missing' is not a model" in str(raised.value)
