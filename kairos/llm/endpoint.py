"""The endpoint of ``"protocol": "llm"`` routes: OpenAI's API below the route's ``external_path``.

``POST {path}/chat/completions``, ``{path}/completions``, ``{path}/embeddings`` and ``GET
{path}/models``, for the route's public models. The gateway's pipeline has already run (auth,
rate limits, IP filters, metrics); then, per request:

1. the body is read (bounded by the route's ``max_body_size``), checked (``model`` known,
   ``max_tokens`` within the route's cap), and the consumer named (the API key's consumer or the
   JWT subject; ``anonymous``);
2. with ``limits``: an estimate (prompt tokens + ``max_tokens``) is reserved, or the answer is 429
   with ``x-ratelimit-remaining-tokens``/``-requests``;
3. the targets are called (kairos/llm/calls.py) until one answers before the first byte, each over its
   transport (kairos/llm/transport.py: direct HTTP for OpenAI's wire, else litellm's SDK);
4. the answer goes out: JSON as the provider gave it (its ``model`` field the public name), or the
   stream event by event as SSE (no buffering: the events that arrived together, in one write; the
   direct transport's as the provider's bytes). Usage is always asked of a streaming provider
   (``stream_options.include_usage``) and recorded (estimated by litellm's counter when the provider
   sends none); the usage chunk reaches the client only if it asked for it. A stream that fails
   after its first chunk ends with an SSE ``error`` event and an aborted connection, never a clean
   end;
5. usage reconciles the reservation, and one analytics record goes to the store (off the request
   path). ``x-kairos-model``, ``x-kairos-provider`` and ``x-kairos-attempted-fallbacks`` say which
   target answered.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, plus the gateway's
``type``, ``timestamp`` and ``request_id`` beside it, so OpenAI SDKs and Kairos clients both read
them. Target keys never appear in an answer, a header, a log line or an error.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from kairos.ai.context import redact
from kairos.config.llm import LlmConfig, LlmPromptGuard
from kairos.errors import timestamp
from kairos.exchange import Exchange, get_exchange
from kairos.llm.cache import (
    CachedAnswer,
    LlmCache,
    StreamAssembler,
    embedding_of,
    exact_key,
    replay,
    semantic_query,
)
from kairos.llm.calls import Attempted, ProviderFailed, call
from kairos.llm.sdk import close_stream
from kairos.llm.service import LlmService, Usage
from kairos.llm.transport import Payload, Transports
from kairos.proxy.http import ResponseAborted
from kairos.routing.route import SUBTREE_PARAM

KINDS = {"chat/completions": "chat", "completions": "text", "embeddings": "embedding"}
MAX_BODY = 8 * 1024 * 1024  # a route without max_body_size: prompts are big, not unbounded
# Parameters that are the gateway's to set (the target's), never the client's.
_RESERVED = (
    "api_key",
    "api_base",
    "base_url",
    "timeout",
    "num_retries",
    "max_retries",
    "custom_llm_provider",
)


class LlmError(Exception):
    def __init__(
        self, status: int, kind: str, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code


class LlmEndpoint:
    def __init__(self, service: LlmService, tracer: Any = None) -> None:
        self.service = service
        self.tracer = tracer  # KAIROS_TRACING: a CLIENT span per provider call (kairos/llm/calls.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route = exchange.route
        assert route is not None
        config = route.config.llm
        assert config is not None  # the loader requires it on llm routes
        below = exchange.params.get(SUBTREE_PARAM, "") if route.subtree else ""
        below = below.strip("/")
        method = scope["method"]
        try:
            if below == "models" and method in ("GET", "HEAD"):
                await _json(send, 200, _models(config), exchange)
            elif below in KINDS and method == "POST":
                limit = route.config.max_body_size or MAX_BODY
                await self._complete(scope, receive, send, exchange, config, KINDS[below], limit)
            elif below in KINDS or below == "models":
                raise LlmError(
                    405, "invalid_request_error", f"{method} is not allowed on {route.name}/{below}"
                )
            else:
                raise LlmError(
                    404,
                    "invalid_request_error",
                    f"{route.name}/{below} is not an OpenAI endpoint here: use {route.name}/chat/completions,"
                    f" {route.name}/completions, {route.name}/embeddings or {route.name}/models",
                )
        except LlmError as error:
            await _error(send, error, exchange)

    async def _complete(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        config: LlmConfig,
        kind: str,
        limit: int,
    ) -> None:
        started = time.perf_counter()
        began = datetime.now(UTC)
        body = await _read(receive, limit)
        request = _parse(body, config, kind)
        if config.prompt_guard is not None:
            request = _guard(request, config.prompt_guard, kind)
        model = request["model"]
        stream = bool(request.get("stream")) and kind != "embedding"
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        consumer = _consumer(exchange)
        service = self.service
        route_name = exchange.route.name if exchange.route is not None else "?"
        record = service.recorder(began, exchange.request_id, consumer, route_name, model, stream)
        lookup: _CacheLookup | None = None
        cache = service.cache_for(exchange.route) if exchange.route is not None else None
        if cache is not None and not (stream and kind != "chat"):  # streams replay chat answers only
            lookup = _CacheLookup(cache, config, route_name, consumer, kind, request, service.transports)
            hit = await lookup.find()
            if hit is not None:
                await _serve_hit(send, hit, exchange, stream, wants_usage)
                record(Attempted(), _usage_in(hit), started, None, "ok", 200, "hit")
                return
        reservation = await service.reserve(config, consumer, model, kind, request, send, exchange)
        if reservation is False:
            return  # refused: the 429 is out
        params = {key: value for key, value in request.items() if key not in ("model", *_RESERVED)}
        if stream:
            params["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
        elif kind == "embedding":  # embeddings are never streamed
            params.pop("stream", None)
            params.pop("stream_options", None)
        attempted = Attempted()
        cached = "miss" if lookup is not None else "off"
        try:
            answer = await call(config, model, kind, params, attempted, service.transports, self.tracer)
        except ProviderFailed as failed:
            await service.settle(reservation, None, config, model)
            record(attempted, Usage(), started, None, "error", failed.status, cached)
            raise LlmError(failed.status, failed.kind, failed.message, code=failed.code) from None
        headers = _kairos_headers(attempted)
        if lookup is not None:
            headers.append((b"x-kairos-cache", b"miss"))
        if isinstance(answer, Payload):
            usage = await service.usage_of(answer.data, config, model, kind, request, attempted)
            await _respond(send, 200, answer.encoded(model), exchange, headers)
            await service.settle(reservation, usage, config, model)
            record(attempted, usage, started, None, "ok", 200, cached)
            if lookup is not None:
                await lookup.store({**answer.data, "model": model})
            return
        first, rest = answer
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", exchange.request_id.encode()),
                    *headers,
                ],
            }
        )
        ttft = (time.perf_counter() - started) * 1000
        usage = Usage()
        pieces: list[str] = []  # the answer's text, for an estimate if the provider reports no usage
        outcome = "ok"
        watcher: _DisconnectWatcher | None = None
        assembler = StreamAssembler() if lookup is not None else None
        try:
            await _send_events(send, first, model, wants_usage, usage, assembler, pieces)
            watcher = _DisconnectWatcher(receive)  # after the first event: not in its way
            async for batch in rest:
                await _send_events(send, batch, model, wants_usage, usage, assembler, pieces)
        except asyncio.CancelledError:
            if watcher is None or not watcher.gone:
                raise
            watcher.forgive()  # our own cancellation: the client left, so the provider's stream is dropped
            outcome = "client_cancelled"
        except OSError:  # the client went away (the server's send failed): stop reading the provider
            outcome = "client_cancelled"
        except Exception as exc:  # the provider failed mid-stream: an error event, then cut
            if watcher is not None:
                watcher.stop()
            outcome = "stream_error"
            error = {
                "error": {"message": "the provider failed mid-stream", "type": "api_error", "code": None}
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n",
                    "more_body": True,
                }
            )
            text = "".join(pieces)
            await service.complete_usage(usage, config, model, kind, request, attempted, text)
            await service.settle(reservation, usage, config, model)
            record(attempted, usage, started, ttft, outcome, 200, cached)
            raise ResponseAborted(
                f"{attempted.target.label if attempted.target else model}: {type(exc).__name__}"
            ) from None
        finally:
            if watcher is not None:
                watcher.stop()
            if outcome == "client_cancelled":
                await close_stream(rest)
        if outcome == "ok":
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        await service.complete_usage(usage, config, model, kind, request, attempted, "".join(pieces))
        await service.settle(reservation, usage, config, model)
        record(attempted, usage, started, ttft, outcome, 200, cached)
        if lookup is not None and assembler is not None and outcome == "ok":
            whole = assembler.answer(model)
            if whole is not None:
                await lookup.store(whole)


class _CacheLookup:
    """One request's way through the route's response cache: the exact key, then (``mode:
    semantic``, chat) the nearest earlier question by the embedding of its last user message."""

    def __init__(
        self,
        cache: LlmCache,
        config: LlmConfig,
        route: str,
        consumer: str,
        kind: str,
        request: dict[str, Any],
        transports: Transports,
    ) -> None:
        settings = config.cache
        assert settings is not None
        self.cache = cache
        self.config = config
        self.transports = transports
        self.settings = settings
        owner = None if settings.shared_across_consumers else consumer
        self.key = exact_key(route, owner, kind, request)
        self.semantic = (
            semantic_query(route, owner, request) if settings.semantic and kind == "chat" else None
        )
        self.vector: list[float] | None = None

    async def find(self) -> CachedAnswer | None:
        hit = await self.cache.get(self.key)
        if hit is not None or self.semantic is None or self.settings.semantic is None:
            return hit
        scope, text = self.semantic
        model = self.settings.semantic.embedding_model
        try:
            query = {"input": [text]}
            answer = await call(self.config, model, "embedding", query, Attempted(), self.transports)
        except ProviderFailed:  # no embedding, no semantic lookup: the request goes on as a miss
            return None
        self.vector = embedding_of(answer.data) if isinstance(answer, Payload) else None
        if self.vector is None:
            return None
        found = await self.cache.get_similar(scope, self.vector, self.settings.semantic.threshold)
        return found[0] if found is not None else None

    async def store(self, answer: dict[str, Any]) -> None:
        await self.cache.put(self.key, answer)
        if self.semantic is not None and self.vector is not None:
            await self.cache.put_similar(self.semantic[0], self.vector, answer)


async def _serve_hit(
    send: Send, hit: CachedAnswer, exchange: Exchange, stream: bool, wants_usage: bool
) -> None:
    headers = [(b"x-kairos-cache", b"hit")]
    if not stream:
        await _json(send, 200, hit.answer, exchange, headers)
        return
    start_headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-request-id", exchange.request_id.encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": start_headers})
    events = replay(hit.answer, wants_usage)
    for index, event in enumerate(events):
        await send({"type": "http.response.body", "body": event, "more_body": index < len(events) - 1})


def _usage_in(hit: CachedAnswer) -> Usage:
    """What the cached answer reports (no provider was paid: no cost)."""
    found = hit.answer.get("usage") or {}
    return Usage(
        prompt_tokens=int(found.get("prompt_tokens") or 0),
        completion_tokens=int(found.get("completion_tokens") or 0),
        reported=bool(found),
    )


class _DisconnectWatcher:
    """Cancels the streaming task when the client disconnects, so the provider's stream is closed
    at once instead of being read to its end for nobody (the server's ``send`` to a departed client
    silently does nothing). The request body has been read: the next ``receive`` is the disconnect."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._streaming = asyncio.current_task()
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self._streaming is not None:
                    self._streaming.cancel()
                return

    def forgive(self) -> None:
        if self._streaming is not None:
            self._streaming.uncancel()

    def stop(self) -> None:
        self._task.cancel()


async def _send_events(
    send: Send,
    batch: list[Payload],
    model: str,
    wants_usage: bool,
    usage: Usage,
    assembler: StreamAssembler | None,
    pieces: list[str],
) -> None:
    """One batch of stream events (those that arrived together) to the client, in one write: each with
    the public model, without the usage the client did not ask for; the usage and the text (for an
    estimate, until the provider reports usage) noted on the way."""
    out = []
    for chunk in batch:
        data = chunk.data
        if assembler is not None:
            assembler.add(data)  # as the provider sent it (its usage too), before it is trimmed below
        choices = data.get("choices")
        if choices and isinstance(choices, list) and not usage.reported:
            for choice in choices:
                if isinstance(choice, dict):
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                    if isinstance(piece, str):
                        pieces.append(piece)
        found = data.get("usage")
        if isinstance(found, dict) and found:
            usage.prompt_tokens = int(found.get("prompt_tokens") or 0)
            usage.completion_tokens = int(found.get("completion_tokens") or 0)
            usage.reported = usage.prompt_tokens + usage.completion_tokens > 0  # 0/0: none (usage_of)
            if not choices and not wants_usage:
                continue  # the usage-only chunk asked for by the gateway
        elif not wants_usage and not choices:
            continue  # an empty chunk (litellm's end-of-stream marker without usage): nothing for the client
        out.append(b"data: " + chunk.encoded(model, drop_usage=not wants_usage) + b"\n\n")
    if out:
        body = out[0] if len(out) == 1 else b"".join(out)
        await send({"type": "http.response.body", "body": body, "more_body": True})


def _kairos_headers(attempted: Attempted) -> list[tuple[bytes, bytes]]:
    target = attempted.target
    if target is None:
        return []
    return [
        (b"x-kairos-model", target.label.encode()),
        (b"x-kairos-provider", target.provider.encode()),
        (b"x-kairos-attempted-fallbacks", str(attempted.fallbacks).encode()),
    ]


def _consumer(exchange: Exchange) -> str:
    identity = exchange.identity
    subject = getattr(identity, "subject", None)
    return subject if isinstance(subject, str) and subject else "anonymous"


def _models(config: LlmConfig) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "kairos"} for name in config.models
        ],
    }


def _guard(request: dict[str, Any], guard: LlmPromptGuard, kind: str) -> dict[str, Any]:
    """Deny patterns first (on the text as sent), then redaction of what goes to the provider."""
    field = {"chat": "messages", "text": "prompt", "embedding": "input"}[kind]
    texts = list(_texts(request[field]))
    for pattern in guard.deny_patterns:
        compiled = re.compile(pattern, re.IGNORECASE)
        if any(compiled.search(text) for text in texts):
            raise LlmError(
                400,
                "invalid_request_error",
                "the request matches a denied pattern",
                param=field,
                code="content_denied",
            )
    if not guard.redact:
        return request
    return {**request, field: _redacted(request[field])}


def _texts(value: Any) -> Iterator[str]:
    """Every string a message list, prompt or input holds (message contents, content parts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("content", "text"):
            if key in value:
                yield from _texts(value[key])


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item) if key in ("content", "text") else item for key, item in value.items()}
    return value


def _parse(body: bytes, config: LlmConfig, kind: str) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise LlmError(400, "invalid_request_error", "the body must be a JSON object") from None
    if not isinstance(request, dict):
        raise LlmError(400, "invalid_request_error", "the body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise LlmError(400, "invalid_request_error", "`model` is required (a string)", param="model")
    if model not in config.models:
        known = ", ".join(sorted(config.models))
        raise LlmError(
            404,
            "invalid_request_error",
            f"The model `{model}` does not exist here (models: {known})",
            param="model",
            code="model_not_found",
        )
    field = {"chat": "messages", "text": "prompt", "embedding": "input"}[kind]
    if field not in request:
        raise LlmError(400, "invalid_request_error", f"`{field}` is required", param=field)
    if kind == "chat" and not (isinstance(request["messages"], list) and request["messages"]):
        raise LlmError(400, "invalid_request_error", "`messages` must be a non-empty list", param="messages")
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LlmError(400, "invalid_request_error", f"`{name}` must be a positive integer", param=name)
        if config.max_tokens is not None and value > config.max_tokens:
            raise LlmError(
                400,
                "invalid_request_error",
                f"`{name}` is {value}; this route allows at most {config.max_tokens}",
                param=name,
            )
    return request


async def _read(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise LlmError(400, "invalid_request_error", "the client went away before its request arrived")
        body += message.get("body", b"")
        if len(body) > limit:
            raise LlmError(413, "invalid_request_error", f"the request body is over {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def _json(
    send: Send, status: int, payload: Any, exchange: Exchange, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _respond(send, status, json.dumps(payload).encode(), exchange, extra)


async def _respond(
    send: Send, status: int, body: bytes, exchange: Exchange, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", exchange.request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send, error: LlmError, exchange: Exchange, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = {
        "error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code},
        "type": error.kind,
        "timestamp": timestamp(),
        "request_id": exchange.request_id,
    }
    await _json(send, error.status, payload, exchange, extra)
