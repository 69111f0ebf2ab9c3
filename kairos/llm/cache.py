"""The LLM answer cache of ``"protocol": "llm"`` routes (the route's ``llm.cache``): exact and semantic.

**Exact.** ``exact_key`` hashes the request as it would reach a provider: every parameter counts
(``temperature``, ``n``, ``seed``, ``tools``, ...) except those that change how an answer is
delivered or recorded, not what it says (``stream``, ``stream_options``, ``user``, ``metadata``).
Key order does not matter, nor does ``1`` against ``1.0`` for a top-level number. The route, the
kind (``chat``, ``text``, ``embedding``) and the consumer are part of the key; the consumer is None
when the route shares answers across consumers (``shared_across_consumers``), so by default an
answer is only ever served to the consumer whose request stored it.

**Semantic** (chat only). ``semantic_query`` splits a chat request in two: the text of its last user
message, which the endpoint embeds with the route's ``embedding_model``, and a *scope* naming
everything else (route, model, consumer, and a digest of the earlier messages, the system prompt
and every parameter). ``get_similar`` compares the vector with those of the newest
``max_candidates`` entries of that scope by cosine similarity and returns the best one at or above
the threshold; two questions that differ only in wording share an answer, two requests with a
different system prompt, history or ``temperature`` never do.

**Stores.** Memory (this process): one LRU of at most ``max_entries`` answers (exact and semantic
ones together, so the vectors are bounded too) with a TTL, vectors kept as float32 arrays (4 bytes
per dimension). Redis (shared by replicas): answers as JSON under their own keys with ``SET ... EX
ttl``; per scope a list of candidates (``LPUSH`` then ``LTRIM`` to ``max_candidates``, the list's
TTL renewed on each push), each a small binary header (when it was stored, the answer's id) and the
vector as little-endian float32. Nothing is ever pickled. A Redis that cannot be reached never fails
a request (``kairos.redis_outage``: logged once per outage, then skipped for a second): ``get`` and
``get_similar`` answer None, ``put`` and ``put_similar`` drop the answer, and each is counted in
``stats.errors``.

**Similarity cost.** numpy is not a dependency, so cosine is computed in plain Python: vectors are
normalised when stored and when looked up, and ``cos = 1 - dist²/2`` with ``math.dist`` (C, exact
summation), the fastest plain way measured (``sum(map(operator.mul, ...))`` is ~3x slower,
``math.fsum`` of the products ~10x). Turning float32 into Python floats dominates (tuples of floats
would compare ~3x faster but take 8x the memory: 49 KB per 1,536-dimension vector). Measured for
1,000 candidates, on one core and on the event loop: memory ~1.2 ms at 64 dimensions, 5 ms at 256,
15 ms at 768, 28 ms at 1,536; Redis (LRANGE of the list, then MGET of the best answers) ~5, 11, 26
and 55 ms, a 1,536-dimension list being 6 MB to transfer. ``max_candidates`` bounds it.

**Streams** (chat only). ``StreamAssembler`` rebuilds the complete answer from the chunks of a
successful stream, so a streamed answer can be cached; ``replay`` turns a cached chat answer back
into OpenAI's server-sent events. Completions and embeddings are cached and served as JSON answers
only (a stream request for a completion is not cached).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from kairos.config.llm import LlmCacheConfig
from kairos.redis_outage import Outage, connect

PREFIX = "kairos:llm-cache:"
# Request fields that change how an answer is delivered or recorded, not what it says.
IGNORED_PARAMS = frozenset({"stream", "stream_options", "user", "metadata"})
# The semantic candidates above the threshold whose answers are fetched, best first: the best one's
# answer may have expired or been evicted while its vector is still listed.
FETCHED_MATCHES = 8
# Cosine similarity is computed from float32 vectors: an identical text scores 1 - 1e-15 or so, and a
# threshold of 1 must still match it.
TOLERANCE = 1e-6
_VECTOR_HEAD = struct.Struct("<4sd16s")  # magic, stored_at, the answer's id
_VECTOR_MAGIC = b"KLV1"
_PIECE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    answer: dict[str, Any]  # the complete non-stream JSON answer (OpenAI's shape), ``model`` the public name
    stored_at: float  # the clock's time when it was stored


@dataclass(slots=True)
class LlmCacheStats:
    """Counters for /metrics."""

    hits: int = 0  # ``get`` found an answer
    misses: int = 0  # ``get`` found none (Redis errors are counted in ``errors`` instead)
    semantic_hits: int = 0  # ``get_similar`` found one
    semantic_misses: int = 0
    stores: int = 0  # answers stored (``put`` and ``put_similar``)
    errors: int = 0  # operations Redis could not answer (lookups missed, answers dropped)
    entries: int | None = 0  # answers held by the memory store; None for Redis (it does not say cheaply)


# -- keys ------------------------------------------------------------------------------------------


def exact_key(route: str, consumer: str | None, kind: str, request: dict[str, Any]) -> str:
    """The key of a request's answer: a SHA-256 (hex) of the route, the consumer (None when answers are
    shared across consumers), the kind and the request without ``IGNORED_PARAMS``, keys sorted."""
    material = {"route": route, "consumer": consumer, "kind": kind, "request": _normalised(request)}
    return _digest(material)


def semantic_query(route: str, consumer: str | None, request: dict[str, Any]) -> tuple[str, str] | None:
    """``(scope, text)`` of a chat request for a semantic lookup: ``text`` is its last user message (what
    is embedded), ``scope`` is ``route|model|consumer|digest``, the digest covering everything else (the
    earlier messages, the system prompt, every parameter but ``IGNORED_PARAMS``). None when the request
    cannot be compared that way: no ``messages``, the last message not the user's, a content part that
    is not text (an image), an empty text."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = _text_of(last.get("content"))
    if not text or not text.strip():
        return None
    rest = _normalised(request)
    rest["messages"] = [*messages[:-1], {**last, "content": None}]
    model = request.get("model")
    digest = _digest({"route": route, "consumer": consumer, "request": rest})[:32]
    return f"{route}|{model}|{consumer if consumer is not None else '*'}|{digest}", text


def embedding_of(answer: Any) -> list[float] | None:
    """The first vector of an embeddings answer (OpenAI's shape), or None."""
    try:
        vector = answer["data"][0]["embedding"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
        return None
    return [float(x) for x in vector]


def _normalised(request: dict[str, Any]) -> dict[str, Any]:
    return {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in request.items()
        if key not in IGNORED_PARAMS
    }


def _digest(material: Any) -> str:
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


# -- vectors ---------------------------------------------------------------------------------------


def _unit(vector: Iterable[float]) -> tuple[float, ...] | None:
    """The vector scaled to length 1, or None when it has none (empty, zero, not finite)."""
    values = tuple(float(x) for x in vector)
    if not values:
        return None
    norm = math.hypot(*values)
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return tuple(x / norm for x in values)


def _similarity(query: tuple[float, ...], candidate: array[float]) -> float | None:
    """Cosine similarity of two unit vectors (None when their dimensions differ)."""
    if len(candidate) != len(query):
        return None
    return 1.0 - math.dist(query, candidate.tolist()) ** 2 / 2


def _float32(unit: tuple[float, ...]) -> array[float]:
    return array("f", unit)


def _vector_bytes(vector: array[float]) -> bytes:
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return vector.tobytes()


def _vector_from(raw: bytes) -> array[float]:
    vector = array("f")
    vector.frombytes(raw)
    if sys.byteorder == "big":
        vector.byteswap()
    return vector


# -- stores ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    raw: bytes  # the answer as JSON
    stored_at: float
    expires_at: float
    scope: str | None = None  # semantic entries: their scope and vector
    vector: array[float] | None = None


class _MemoryStore:
    """One LRU of exact and semantic entries, ``max_entries`` in all, and per scope the keys of its
    semantic entries (oldest first, at most ``max_candidates``). Nothing awaits."""

    def __init__(self, max_entries: int, ttl: float, max_candidates: int) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.max_candidates = max_candidates
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._scopes: dict[str, OrderedDict[str, None]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self._remove(key)
        self._entries[key] = entry
        if entry.scope is not None:
            keys = self._scopes.setdefault(entry.scope, OrderedDict())
            keys[key] = None
            while len(keys) > self.max_candidates:
                self._remove(next(iter(keys)))
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def put_similar(self, scope: str, vector: array[float], raw: bytes, now: float) -> None:
        self._serial += 1
        self.put(f"\0{self._serial}", _Entry(raw, now, now + self.ttl, scope, vector))

    def similar(
        self, scope: str, query: tuple[float, ...], threshold: float, now: float
    ) -> tuple[_Entry, float] | None:
        keys = self._scopes.get(scope)
        if not keys:
            return None
        best: tuple[str, _Entry, float] | None = None
        expired = []
        for key in reversed(keys):  # newest first: among equal scores the newest wins
            entry = self._entries[key]
            if entry.expires_at <= now:
                expired.append(key)
                continue
            assert entry.vector is not None
            score = _similarity(query, entry.vector)
            if score is not None and score >= threshold - TOLERANCE and (best is None or score > best[2]):
                best = (key, entry, score)
        for key in expired:
            self._remove(key)
        if best is None:
            return None
        self._entries.move_to_end(best[0])
        return best[1], min(1.0, best[2])

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None or entry.scope is None:
            return
        keys = self._scopes.get(entry.scope)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._scopes[entry.scope]

    def clear(self) -> None:
        self._entries.clear()
        self._scopes.clear()


class _RedisStore:
    """Answers under ``{prefix}x:{key}`` (exact) and ``{prefix}s:{id}`` (semantic), each a JSON object
    ``{"stored_at", "answer"}`` with the TTL; the candidates of a scope in the list ``{prefix}v:{scope}``,
    newest first. Methods raise RedisError/OSError; ``LlmCache`` turns them into misses."""

    def __init__(self, url: str, ttl: int, max_candidates: int, prefix: str = PREFIX) -> None:
        self.url = url
        self.ttl = ttl
        self.max_candidates = max_candidates
        self.prefix = prefix
        self.client = connect(url)

    async def get(self, key: str) -> bytes | None:
        raw = await self.client.get(self.prefix + "x:" + key)
        return _bytes(raw) if raw is not None else None

    async def put(self, key: str, value: bytes) -> None:
        await self.client.set(self.prefix + "x:" + key, value, ex=self.ttl)

    async def put_similar(self, scope: str, vector: array[float], value: bytes, now: float) -> None:
        ident = os.urandom(16)
        item = _VECTOR_HEAD.pack(_VECTOR_MAGIC, now, ident) + _vector_bytes(vector)
        listed = self.prefix + "v:" + scope
        # One transaction on one Redis. On a cluster the answer and the list are in different slots,
        # which a transaction cannot span: the commands are sent without one (the answer first; a
        # listed vector whose answer is missing is skipped by ``similar``).
        async with self.client.pipeline(transaction=not isinstance(self.client, RedisCluster)) as pipe:
            pipe.set(self.prefix + "s:" + ident.hex(), value, ex=self.ttl)
            pipe.lpush(listed, item)
            pipe.ltrim(listed, 0, self.max_candidates - 1)
            pipe.expire(listed, self.ttl)
            await pipe.execute()

    async def similar(
        self, scope: str, query: tuple[float, ...], threshold: float, now: float
    ) -> tuple[bytes, float] | None:
        items = await self.client.lrange(self.prefix + "v:" + scope, 0, self.max_candidates - 1)
        matches: list[tuple[float, bytes]] = []
        size = _VECTOR_HEAD.size
        for listed in items:
            item = _bytes(listed)
            if len(item) <= size or (len(item) - size) % 4:
                continue
            magic, stored_at, ident = _VECTOR_HEAD.unpack_from(item)
            if magic != _VECTOR_MAGIC or stored_at + self.ttl <= now:
                continue
            score = _similarity(query, _vector_from(item[size:]))
            if score is not None and score >= threshold - TOLERANCE:
                matches.append((score, ident))  # newest first; sort() keeps that order among equals
        if not matches:
            return None
        matches.sort(key=lambda match: match[0], reverse=True)
        best = matches[:FETCHED_MATCHES]
        names = [self.prefix + "s:" + ident.hex() for _, ident in best]
        if isinstance(self.client, RedisCluster):  # the answers are in several slots: one MGET per slot
            values = await self.client.mget_nonatomic(names)
        else:
            values = await self.client.mget(names)
        for (score, _), value in zip(best, values, strict=True):
            if value is not None:
                return _bytes(value), min(1.0, score)
        return None

    async def close(self) -> None:
        await self.client.aclose()


def _bytes(value: bytes | str) -> bytes:
    """What the client returned (bytes: it does not decode responses)."""
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _encode(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()


def _stored(raw: bytes, stored_at: float) -> bytes:
    """The Redis value: the answer's JSON inside ``{"stored_at", "answer"}`` (not parsed again)."""
    return b'{"stored_at":' + repr(float(stored_at)).encode() + b',"answer":' + raw + b"}"


def _from_stored(value: bytes) -> CachedAnswer | None:
    try:
        data = json.loads(value)
        answer, stored_at = data["answer"], float(data["stored_at"])
    except (ValueError, KeyError, TypeError):
        return None  # not this version's format: a miss
    return CachedAnswer(answer, stored_at) if isinstance(answer, dict) else None


class LlmCache:
    """One route's cache. ``storage_uri`` ``memory://`` (the default) is this process's memory; a
    ``redis://``, ``rediss://`` or ``unix://`` URI is Redis; ``None`` is ``redis_url_default`` (the
    gateway's ``KAIROS_REDIS_URL``) when given, else memory. Every answer handed out is a fresh dict
    (decoded from JSON), so the caller may change it."""

    def __init__(
        self,
        config: LlmCacheConfig,
        redis_url_default: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = LlmCacheStats()
        self._clock = clock
        self.ttl = config.ttl_seconds
        max_candidates = config.semantic.max_candidates if config.semantic is not None else 1000
        uri = config.storage_uri if config.storage_uri is not None else redis_url_default
        self._memory: _MemoryStore | None = None
        self._redis: _RedisStore | None = None
        if uri and not uri.lower().startswith("memory:"):
            self._redis = _RedisStore(uri, config.ttl_seconds, max_candidates)
            self._outage = Outage("LLM cache store", uri)
            self.stats.entries = None
        else:
            self._memory = _MemoryStore(config.max_entries, config.ttl_seconds, max_candidates)

    @property
    def store(self) -> str:
        """``memory`` or ``redis``."""
        return "redis" if self._redis is not None else "memory"

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key`` (see ``exact_key``), or None."""
        found: CachedAnswer | None = None
        if self._memory is not None:
            entry = self._memory.get(key, self._clock())
            if entry is not None:
                found = CachedAnswer(json.loads(entry.raw), entry.stored_at)
            self.stats.entries = len(self._memory)
        else:
            assert self._redis is not None
            if self._outage.down():
                self.stats.errors += 1
                return None
            try:
                value = await self._redis.get(key)
            except (RedisError, OSError) as exc:
                self._failed(exc, ": LLM answers not served from the cache")
                return None
            self._outage.reached()
            found = _from_stored(value) if value is not None else None
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    async def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store a complete answer (JSON-serialisable) under ``key`` for ``ttl_seconds``."""
        now = self._clock()
        raw = _encode(answer)
        if self._memory is not None:
            self._memory.put(key, _Entry(raw, now, now + self.ttl))
            self.stats.entries = len(self._memory)
        else:
            assert self._redis is not None
            if self._outage.down():
                self.stats.errors += 1
                return
            try:
                await self._redis.put(key, _stored(raw, now))
            except (RedisError, OSError) as exc:
                self._failed(exc, ": LLM answers not stored")
                return
            self._outage.reached()
        self.stats.stores += 1

    async def get_similar(
        self, scope: str, vector: list[float], threshold: float
    ) -> tuple[CachedAnswer, float] | None:
        """The answer of the scope's entry most similar to ``vector`` (cosine similarity at least
        ``threshold``, among the newest ``max_candidates``), with its similarity; or None."""
        query = _unit(vector)
        found: tuple[CachedAnswer, float] | None = None
        if query is None:
            pass
        elif self._memory is not None:
            match = self._memory.similar(scope, query, threshold, self._clock())
            if match is not None:
                entry, score = match
                found = CachedAnswer(json.loads(entry.raw), entry.stored_at), score
            self.stats.entries = len(self._memory)
        else:
            assert self._redis is not None
            if self._outage.down():
                self.stats.errors += 1
                return None
            try:
                best = await self._redis.similar(scope, query, threshold, self._clock())
            except (RedisError, OSError) as exc:
                self._failed(exc, ": LLM answers not served from the cache")
                return None
            self._outage.reached()
            if best is not None:
                cached = _from_stored(best[0])
                found = (cached, best[1]) if cached is not None else None
        if found is None:
            self.stats.semantic_misses += 1
        else:
            self.stats.semantic_hits += 1
        return found

    async def put_similar(self, scope: str, vector: list[float], answer: dict[str, Any]) -> None:
        """Store an answer with the vector of its request's text, as the newest candidate of ``scope``
        (the oldest beyond ``max_candidates`` are no longer compared). A vector without a direction
        (empty, zero, not finite) stores nothing."""
        unit = _unit(vector)
        if unit is None:
            return
        now = self._clock()
        raw = _encode(answer)
        if self._memory is not None:
            self._memory.put_similar(scope, _float32(unit), raw, now)
            self.stats.entries = len(self._memory)
        else:
            assert self._redis is not None
            if self._outage.down():
                self.stats.errors += 1
                return
            try:
                await self._redis.put_similar(scope, _float32(unit), _stored(raw, now), now)
            except (RedisError, OSError) as exc:
                self._failed(exc, ": LLM answers not stored")
                return
            self._outage.reached()
        self.stats.stores += 1

    def _failed(self, exc: BaseException, consequence: str) -> None:
        self._outage.failed(exc, consequence)
        self.stats.errors += 1

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
        if self._memory is not None:
            self._memory.clear()
            self.stats.entries = 0


# -- streams ---------------------------------------------------------------------------------------

_TEXT_FIELDS = ("content", "refusal", "reasoning_content")  # delta strings that add up


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    role: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)  # _TEXT_FIELDS seen, their pieces
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None


class StreamAssembler:
    """Builds the complete answer from the SSE chunks of a successful chat stream (what the provider
    sent, as JSON objects: ``usage`` chunks included), so a streamed answer can be cached.

    Assembled per choice (``n`` > 1 works): the role, the ``content``, ``refusal`` and
    ``reasoning_content`` pieces, tool calls (by index: id, type and name as sent, arguments joined),
    the finish reason; the first ``id``, ``created`` and ``system_fingerprint``; the last ``usage``.
    Anything it cannot rebuild faithfully makes the answer None (not cached): a choice without a
    finish reason (the stream did not end), ``logprobs``, a legacy ``function_call`` or another delta
    field it does not know, an ``error``, a malformed chunk."""

    __slots__ = ("_broken", "_choices", "_created", "_fingerprint", "_id", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._id: str | None = None
        self._created: int | None = None
        self._fingerprint: str | None = None
        self._usage: dict[str, Any] | None = None
        self._broken = False

    def add(self, chunk: dict[str, Any]) -> None:
        if self._broken:
            return
        if not self._add(chunk):
            self._broken = True

    def _add(self, chunk: Any) -> bool:
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            return False
        if self._id is None and isinstance(chunk.get("id"), str):
            self._id = chunk["id"]
        created = chunk.get("created")
        if self._created is None and isinstance(created, int) and not isinstance(created, bool):
            self._created = created
        if self._fingerprint is None and isinstance(chunk.get("system_fingerprint"), str):
            self._fingerprint = chunk["system_fingerprint"]
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self._usage = dict(usage)
        choices = chunk.get("choices")
        if choices is None:
            return True
        if not isinstance(choices, list):
            return False
        return all(self._add_choice(choice) for choice in choices)

    def _add_choice(self, choice: Any) -> bool:
        if not isinstance(choice, dict):
            return False
        index = choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return False
        if choice.get("logprobs") is not None:
            return False
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            return False
        for key, value in delta.items():
            if value is None:
                continue
            if key == "role":
                if not isinstance(value, str):
                    return False
                state.role = value
            elif key in _TEXT_FIELDS:
                if not isinstance(value, str):
                    return False
                state.texts.setdefault(key, []).append(value)
            elif key == "tool_calls":
                if not isinstance(value, list) or not all(self._add_tool_call(state, call) for call in value):
                    return False
            elif value not in ("", [], {}):  # an empty field of some provider's is no content
                return False
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                return False
            state.finish_reason = finish
        return True

    @staticmethod
    def _add_tool_call(state: _Choice, delta: Any) -> bool:
        if not isinstance(delta, dict):
            return False
        index = delta.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return False
        call = state.tool_calls.get(index)
        if call is None:
            call = state.tool_calls[index] = _ToolCall()
        for attribute in ("id", "type"):
            value = delta.get(attribute)
            if value is not None:
                if not isinstance(value, str):
                    return False
                setattr(call, attribute, value)
        function = delta.get("function")
        if function is None:
            return True
        if not isinstance(function, dict):
            return False
        name = function.get("name")
        if name is not None:
            if not isinstance(name, str):
                return False
            call.name = name
        arguments = function.get("arguments")
        if arguments is not None:
            if not isinstance(arguments, str):
                return False
            call.arguments.append(arguments)
        return True

    def answer(self, model: str) -> dict[str, Any] | None:
        """The non-stream answer (``object: "chat.completion"``, ``model`` as given), or None when the
        stream cannot be rebuilt (see the class)."""
        if self._broken or not self._choices or sorted(self._choices) != list(range(len(self._choices))):
            return None
        choices = []
        for index in range(len(self._choices)):
            state = self._choices[index]
            if state.finish_reason is None:
                return None
            content = state.texts.get("content")
            message: dict[str, Any] = {
                "role": state.role or "assistant",
                "content": "".join(content) if content is not None else None,
            }
            for name in ("refusal", "reasoning_content"):
                if name in state.texts:
                    message[name] = "".join(state.texts[name])
            if state.tool_calls:
                if sorted(state.tool_calls) != list(range(len(state.tool_calls))):
                    return None
                calls = []
                for position in range(len(state.tool_calls)):
                    call = state.tool_calls[position]
                    if call.id is None or call.name is None:
                        return None
                    calls.append(
                        {
                            "id": call.id,
                            "type": call.type or "function",
                            "function": {"name": call.name, "arguments": "".join(call.arguments)},
                        }
                    )
                message["tool_calls"] = calls
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": state.finish_reason}
            )
        answer: dict[str, Any] = {
            "id": self._id or "",
            "object": "chat.completion",
            "created": self._created or 0,
            "model": model,
            "choices": choices,
        }
        if self._fingerprint is not None:
            answer["system_fingerprint"] = self._fingerprint
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer


def replay(answer: dict[str, Any], include_usage: bool, *, piece_chars: int | None = None) -> list[bytes]:
    """A cached chat answer as OpenAI SSE events: per choice a role chunk, the content (one chunk, or
    with ``piece_chars`` pieces of about that many characters cut after whitespace), the refusal and
    the tool calls (one chunk each), a finish chunk; then the usage chunk (``choices: []``) only if
    ``include_usage`` and the answer has usage (every chunk carries ``"usage": null`` then, as OpenAI
    sends them), then ``data: [DONE]``. Each element is one complete ``data: ...\\n\\n`` event.
    Raises ValueError for an answer that is not a chat completion."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not all(
        isinstance(choice, dict) and isinstance(choice.get("message"), dict) for choice in choices
    ):
        raise ValueError("not a chat completion: no choices with a message")
    base: dict[str, Any] = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    if "system_fingerprint" in answer:
        base["system_fingerprint"] = answer["system_fingerprint"]

    def event(data_choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        data = {**base, "choices": data_choices}
        if include_usage:
            data["usage"] = usage
        return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    def chunk(index: int, delta: dict[str, Any], finish: Any = None) -> bytes:
        return event([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])

    events = []
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        message = choice["message"]
        content = message.get("content")
        first: dict[str, Any] = {"role": message.get("role") or "assistant"}
        if isinstance(content, str):
            first["content"] = ""
        events.append(chunk(index, first))
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            events.append(chunk(index, {"reasoning_content": reasoning}))
        if isinstance(content, str) and content:
            events.extend(chunk(index, {"content": piece}) for piece in _pieces(content, piece_chars))
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            events.append(chunk(index, {"refusal": refusal}))
        for number, call in enumerate(message.get("tool_calls") or ()):
            events.append(chunk(index, {"tool_calls": [{"index": number, **call}]}))
        events.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    usage = answer.get("usage")
    if include_usage and isinstance(usage, dict):
        events.append(event([], usage))
    events.append(b"data: [DONE]\n\n")
    return events


def _pieces(content: str, size: int | None) -> list[str]:
    if size is None or len(content) <= size:
        return [content]
    pieces: list[str] = []
    current = ""
    for word in _PIECE.findall(content):
        if current and len(current) + len(word) > size:
            pieces.append(current)
            current = ""
        current += word
    if current:
        pieces.append(current)
    return pieces
