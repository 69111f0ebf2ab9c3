"""The direct transport: a target whose wire is OpenAI's unchanged (kairos/llm/transport.py decides which),
called over HTTP without litellm's SDK.

The client's request goes as it came (the public model replaced by the target's, ``stream_options.
include_usage`` forced on for a stream by the endpoint, ``max_tokens`` already checked against the route's
cap) to ``{api_base}/chat/completions``, ``/completions`` or ``/embeddings`` with the target's key as a
bearer token, over the gateway's raw HTTP/1.1 engine (kairos/proxy/raw_engine.py: one keep-alive pool per
LlmService, closed in the lifespan; a POST never goes out on a pooled connection the provider already
closed, so a target gets exactly one call per attempt). Why not litellm's SDK: its request and response
objects, logging hooks and per-chunk stream wrapper cost ~6 ms of CPU per call here, 85-90% of the
gateway's CPU per LLM call (bench/llm_bench.py); this path costs a few hundred µs. Why not httpx: its
pool costs ~10x the raw engine's per request (kairos/proxy/engine.py).

**Answers.** A JSON answer is parsed once (usage, the ``model`` to relabel) and relayed as the provider's
bytes with only the model's value replaced (``Payload.encoded``). A stream is read as server-sent events
(``SseDecoder``) and each event relayed the same way, as it arrives: nothing is serialised again unless a
field has to go (the ``usage`` the client did not ask for, when it is not ``null``).

**Failures**, sorted by kairos/llm/calls.py as litellm's are: an HTTP error status is ``ProviderStatus``
with the provider's ``Retry-After`` and its error's message and code (any body: JSON in OpenAI's shape
or another, text, HTML, nothing); no connection or a cut answer ``ProviderUnreachable``; a silent
provider ``ProviderTimeout``. What is not OpenAI's answer is a 502 ``ProviderStatus``: a body that is not
a JSON object, an event that is not JSON, a line or event over ``MAX_EVENT`` bytes, more than
``MAX_IGNORED_LINES`` lines in a row that are no SSE field. An error event (``event: error``, or a
``{"error": ...}`` object, the way vLLM and sglang fail a stream after its 200) takes its status from
the error's numeric ``code`` (else 500), and a choice with ``finish_reason: "abort"`` is a 500: litellm's
rules, so either transport fails the same stream the same way. Keys never appear in a message: they are
only ever in the ``Authorization`` header, and calls.py scrubs every message anyway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from kairos.llm.transport import Answer, Events, Payload, ProviderStatus, ProviderTimeout, ProviderUnreachable
from kairos.proxy.engine import UpstreamError, UpstreamRequest, UpstreamResponse, UpstreamTimeout
from kairos.proxy.raw_engine import RawEngine

PATHS = {"chat": "/chat/completions", "text": "/completions", "embedding": "/embeddings"}
MAX_ANSWER = 64 * 1024 * 1024  # a JSON answer (embeddings of many inputs are the big ones)
MAX_EVENT = 8 * 1024 * 1024  # one SSE line, and one event's data
MAX_ERROR_BODY = 64 * 1024  # what is read of an error answer (an HTML error page can be big)
MAX_IGNORED_LINES = 10_000  # lines in a row that are no SSE field: a provider speaking something else
MAX_EVENTS = 10_000_000  # events of one stream
MESSAGE_CHARS = 300  # of a provider's error message
# After `[DONE]`, the end of the chunked body is waited for this long (and read up to this much), so the
# connection goes back to the pool instead of being dropped: it is normally in the same packet.
DRAIN_SECONDS = 1.0
MAX_DRAIN = 64 * 1024
USER_AGENT = "kairos"


class DirectTarget:
    """One target called directly: its URLs, its headers (the key among them), the pool it shares."""

    name = "direct"

    def __init__(self, engine: RawEngine, label: str, base: str, model: str, key: str | None) -> None:
        self.label = label
        self.model = model
        self._engine = engine
        self._urls = {kind: base + path for kind, path in PATHS.items()}
        common = [("content-type", "application/json"), ("accept-encoding", "identity")]
        common.append(("user-agent", USER_AGENT))
        if key:
            common.append(("authorization", f"Bearer {key}"))
        self._json_headers = [*common, ("accept", "application/json")]
        self._stream_headers = [*common, ("accept", "text/event-stream")]

    async def call(self, kind: str, params: dict[str, Any], seconds: float) -> Answer:
        stream = bool(params.get("stream")) and kind != "embedding"
        body = json.dumps({"model": self.model, **params}).encode()
        headers = self._stream_headers if stream else self._json_headers
        request = UpstreamRequest("POST", self._urls[kind], headers, body, connect_timeout=seconds)
        try:
            response: UpstreamResponse | None = await self._engine.send(request)
        except UpstreamTimeout:
            raise ProviderTimeout(f"{self.label}: no connection within {seconds:.3g} s") from None
        except UpstreamError as exc:
            raise ProviderUnreachable(f"{self.label}: {exc}") from None
        assert response is not None
        try:
            if not 200 <= response.status < 300:
                raise await failure(response, self.label)
            if stream:
                events = relay(response, self.label, seconds)
                response = None  # the stream's to close
                return events
            body = await read(response, MAX_ANSWER, self.label)
            return answer(body, self.label)
        finally:
            if response is not None:
                await response.close()


async def read(response: UpstreamResponse, limit: int, label: str, truncate: bool = False) -> bytes:
    """The answer's body, at most ``limit`` bytes: over it, a 502 (or, ``truncate``, what fits)."""
    ready = response.ready_body()
    if ready is not None:
        if len(ready) > limit and not truncate:
            raise ProviderStatus(502, f"{label}'s answer is over {limit:,} bytes")
        return ready[:limit]
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.iter_chunks():
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise ProviderStatus(502, f"{label}'s answer is over {limit:,} bytes")
    except UpstreamError as exc:
        if truncate and parts:
            return b"".join(parts)[:limit]
        raise ProviderUnreachable(f"{label}: the answer was cut: {exc}") from None
    return b"".join(parts)[:limit]


def answer(body: bytes, label: str) -> Payload:
    """A JSON answer (a 2xx): an object, and not an error in disguise."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ProviderStatus(502, f"{label} answered something that is not JSON: {_excerpt(body)}") from None
    if not isinstance(data, dict):
        raise ProviderStatus(502, f"{label} answered JSON that is not an object")
    if data.get("error"):
        status, message, code = error_detail(data["error"])
        raise ProviderStatus(status, f"{label} answered an error: {message}", code=code)
    return Payload(data, body)


async def failure(response: UpstreamResponse, label: str) -> ProviderStatus:
    """The error a non-2xx answer is: its status (a 1xx/3xx one is a 502), headers, message and code."""
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1").strip() for name, value in response.headers
    }
    body = await read(response, MAX_ERROR_BODY, label, truncate=True)
    message, code = f"HTTP {response.status}", None
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        _, message, code = error_detail(data["error"])
    elif isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"][:MESSAGE_CHARS]
    elif body:
        message = _excerpt(body)
    status = response.status if 400 <= response.status < 600 else 502
    return ProviderStatus(status, f"{label} answered {response.status}: {message}", headers, code)


def error_detail(error: Any) -> tuple[int, str, Any]:
    """(status, message, code) of an OpenAI-shaped ``error`` value: the status is its numeric ``code``
    when that is an HTTP error status, else 500 (litellm's rule for error events)."""
    if not isinstance(error, dict):
        return 500, str(error)[:MESSAGE_CHARS], None
    code = error.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else 500
    message = error.get("message")
    text = message if isinstance(message, str) else json.dumps(error)
    return status, text[:MESSAGE_CHARS], code


def _excerpt(body: bytes) -> str:
    return " ".join(body[: MESSAGE_CHARS * 4].decode("utf-8", "replace").split())[:MESSAGE_CHARS]


class SseDecoder:
    """Server-sent events (the WHATWG rules) from bytes as they arrive: ``feed`` returns the complete
    events as ``(event name, data)``. Lines end with LF, CRLF or CR; ``data:`` lines of one event are
    joined with LF; comments, ``id`` and ``retry`` are skipped. Bounded: a line or an event's data over
    ``limit`` bytes, or more than MAX_IGNORED_LINES lines in a row that are no field, is an error
    (``ProviderStatus`` 502), so a provider sending garbage cannot grow memory or spin."""

    __slots__ = ("_buffer", "_data", "_event", "_ignored", "_label", "_limit", "_overflow", "_size")

    def __init__(self, label: str, limit: int | None = None) -> None:
        self._label = label
        self._limit = MAX_EVENT if limit is None else limit
        self._buffer = bytearray()  # an incomplete line
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._ignored = 0
        self._overflow = False  # a line went over the limit: the events before it are out, then it fails

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        buffer = self._buffer
        if self._overflow:
            self._too_long()
        if b"\n" not in chunk and b"\r" not in chunk:
            buffer += chunk
            if len(buffer) > self._limit:
                self._too_long()
            return []
        text = bytes(buffer) + chunk if buffer else chunk
        buffer.clear()
        held = b""
        if b"\r" in text:
            if text.endswith(b"\r"):  # maybe the CR of a CRLF whose LF is in the next chunk
                text, held = text[:-1], b"\r"
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        rest = lines.pop()
        if len(rest) > self._limit:
            self._overflow = True
        else:
            buffer += rest
            buffer += held
        return self._lines(lines)

    def end(self) -> list[tuple[bytes, bytes]]:
        """The stream ended: a last line or event without its blank line still counts."""
        if self._overflow:
            self._too_long()
        lines = [bytes(self._buffer).rstrip(b"\r"), b""] if self._buffer else [b""]
        self._buffer.clear()
        return self._lines(lines)

    def _too_long(self) -> None:
        self._buffer.clear()
        raise ProviderStatus(502, f"{self._label} sent an SSE line over {self._limit:,} bytes")

    def _lines(self, lines: list[bytes]) -> list[tuple[bytes, bytes]]:
        events: list[tuple[bytes, bytes]] = []
        for line in lines:
            if not line:  # the blank line: dispatch
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append((self._event, data))
                self._data = []
                self._size = 0
                self._event = b""
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._size += len(value) + 1
                if self._size > self._limit:
                    raise ProviderStatus(502, f"{self._label} sent an SSE event over {self._limit:,} bytes")
                self._data.append(value)
                self._ignored = 0
            elif name == b"event":
                self._event = value
                self._ignored = 0
            elif not name or name == b"id" or name == b"retry":
                continue  # a comment (a keep-alive), or fields that mean nothing here
            else:
                self._ignored += 1
                if self._ignored > MAX_IGNORED_LINES:
                    raise ProviderStatus(
                        502, f"{self._label} sent over {MAX_IGNORED_LINES:,} lines in a row that are not SSE"
                    )
        return events


def event(name: bytes, data: bytes, label: str) -> Payload:
    """One stream event as a Payload; an error event, or one that is not a JSON object, raises."""
    try:
        parsed = json.loads(data)
    except ValueError:
        if name == b"error":
            raise ProviderStatus(500, f"{label} sent an error event: {_excerpt(data)}") from None
        raise ProviderStatus(502, f"{label} sent an event that is not JSON: {_excerpt(data)}") from None
    if not isinstance(parsed, dict):
        raise ProviderStatus(502, f"{label} sent an event that is not a JSON object")
    if name == b"error" or parsed.get("error"):
        status, message, code = error_detail(parsed.get("error") or parsed)
        raise ProviderStatus(status, f"{label} sent an error event: {message}", code=code)
    choices = parsed.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason") == "abort":
                raise ProviderStatus(500, f"{label} aborted the generation (finish_reason abort)")
    # The provider's bytes are relayed as one `data:` line: an event spread over several lines is not.
    return Payload(parsed, None if b"\n" in data else data)


async def relay(response: UpstreamResponse, label: str, seconds: float) -> Events:
    """The events of a streaming answer until ``[DONE]`` or its end, in batches: the events one read
    brought, so they go out in one write (nothing waits to fill a batch). An event that fails (an error
    event, garbage) fails the stream once the events before it are out. The response is closed when
    this ends, fails or is closed (the client left): the connection is dropped unless it was read whole.
    Each wait for bytes is bounded by the target's timeout, and the events by MAX_EVENTS."""
    decoder = SseDecoder(label)
    chunks = response.iter_chunks()
    count = 0
    try:
        while True:
            try:
                async with asyncio.timeout(seconds):
                    chunk = await anext(chunks, None)
            except TimeoutError:
                raise ProviderTimeout(f"{label} sent nothing for {seconds:.3g} s mid-stream") from None
            except UpstreamError as exc:
                raise ProviderUnreachable(f"{label}: the stream broke: {exc}") from None
            batch: list[Payload] = []
            failure: ProviderStatus | None = None
            done = chunk is None
            try:
                for name, data in decoder.feed(chunk) if chunk is not None else decoder.end():
                    if data == b"[DONE]":
                        done = True
                        break
                    count += 1
                    if count > MAX_EVENTS:
                        raise ProviderStatus(502, f"{label} sent over {MAX_EVENTS:,} events")
                    batch.append(event(name, data, label))
            except ProviderStatus as exc:
                failure = exc
            if batch:
                yield batch
            if failure is not None:
                raise failure
            if done:
                if chunk is not None:
                    await _drain(response, chunks)
                return
    finally:
        await response.close()


async def _drain(response: UpstreamResponse, chunks: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (normally nothing but the body's end), briefly and bounded."""
    if response.ready_body() is not None:
        return
    size = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_DRAIN:
                    return
    except (TimeoutError, UpstreamError):  # the connection is dropped instead of pooled: no harm
        return
