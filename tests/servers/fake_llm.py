"""A local OpenAI-compatible LLM provider for the AI-routing tests, the LLM proxy tests and the benches.

python -m tests.servers.fake_llm --port 9400 --rule refund=1 --rule search=0

Endpoints (each also without the ``/v1`` prefix):

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: an answer chosen by the model's *mode*
  (below), as a JSON body or, with ``"stream": true``, as OpenAI's server-sent events.
- ``POST /v1/embeddings``: a deterministic bag-of-words vector per input (each lower-cased word hashed
  into one of 64 dimensions), so texts that share words are near each other.
- ``GET /v1/models`` (and ``/v1/models/{id}``): OpenAI's list of the models seen or configured.
- ``GET /whoami``: ``{"server": "fake-llm"}`` after ``whoami_delay`` seconds (a slow backend).

Modes (the answer's content):

- ``rules`` (the default, except for model names starting with ``echo``): ``{"index": N}``, N the
  index of the first rule whose keyword appears in the *last user message* (the request Kairos
  describes for AI routing), else ``default_index``. Usage counts ``len(text) // 4`` tokens per text.
- ``echo`` (the default for model names starting with ``echo``): the words of ``"echo: " + <last
  user message>`` (the prompt for ``/v1/completions``), then ``w1 w2 w3 ...``, cut to exactly
  ``max_tokens`` (or ``max_completion_tokens``) words, 16 when neither is given; the content is the
  words joined by single spaces. Usage: prompt_tokens = whitespace-separated words in all messages
  (the prompt), completion_tokens = words generated. The same request always gets the same content.
- ``content``: ``content`` verbatim (e.g. garbage or an out-of-range index).
- ``sleep``: wait ``delay`` seconds, then answer as the model's default mode (echo or rules).
- ``error``: answer ``status`` (500 when unset) with an OpenAI error body.
- ``hang``: accept the request and never answer, until the client goes away (at most 300 s; then 504).

Control, for tests: ``POST /_control`` with a JSON object; with ``"model": "<name>"`` it changes the
behaviour of requests for that model only (as the request names it), else the default (``"*"``) that
every model without its own behaviour follows. A model's own behaviour starts as a copy of the
default. Keys (an unknown key or mode is a 400):

- ``mode``: one of the modes above; ``null`` for the model's default. Setting a mode other than
  ``error`` without ``status`` also clears a ``status`` fault (``{"mode": "rules"}`` ends
  ``{"mode": "error", "status": 500}``).
- ``rules`` ``[[keyword, index], ...]``, ``default_index``, ``content``, ``delay`` (seconds): as above.
- ``status``: answer this HTTP status with an OpenAI error body, whatever the mode (``null``, 0 or
  200 clears it). 429: ``rate_limit_error``/``rate_limit_exceeded``; 400: ``invalid_request_error``;
  401, 403, 404 likewise; 5xx: ``server_error``.
- ``retry_after`` (seconds): sent as ``Retry-After`` with a ``status`` answer (``null`` clears it).
- ``cut_after`` N: a stream sends its first chunk (the role, for chat) and N content chunks, then the
  connection is closed without the final chunks, ``[DONE]`` or the chunked body's end; a non-stream
  answer declares its full ``Content-Length`` and sends half of it. ``null`` clears it.
- ``chunk_delay`` (seconds): wait this long before each content chunk of a stream.
- ``omit_usage`` (bool): no ``usage`` in answers, no usage chunk in streams even when asked for.
- ``fail_times`` K: the faults (``status``, modes ``error``, ``hang`` and ``sleep``, ``cut_after``)
  apply to the next K calls for the model only, then it answers normally (the model's default mode,
  or ``echo``/``rules``/``content`` when that is the mode). Setting it restarts the count; ``null``
  (the default) makes the faults permanent.
- ``reset`` (true): drop the model's own behaviour first (back to the default's), then apply the rest.
- ``whoami_delay`` (seconds): for ``GET /whoami`` (not per model).

E.g. ``{"model": "echo-1", "status": 429, "retry_after": 1, "fail_times": 2}``, ``{"model": "echo-2",
"chunk_delay": 0.1}``, ``{"model": "echo-3", "cut_after": 3}``, ``{"model": "echo-4", "mode": "hang"}``,
``{"model": "x", "mode": "content", "content": "not json"}``, ``{"model": "echo-5", "reset": true}``.

Streams follow OpenAI's framing exactly: ``Content-Type: text/event-stream; charset=utf-8``, chunked,
each event ``data: <compact JSON>\\n\\n``. Chat: ``object: "chat.completion.chunk"``; a first chunk
with ``delta: {"role": "assistant", "content": ""}``, one chunk per word (``{"content": "word "}``, the
last word without its space: the deltas joined are the non-stream answer's content), a chunk with
``delta: {}`` and ``finish_reason: "stop"``; with ``"stream_options": {"include_usage": true}`` every
chunk has ``"usage": null`` and one more follows with ``choices: []`` and the usage; then ``data:
[DONE]``. Completions: ``object: "text_completion"``, ``choices[0].text`` per word, no role chunk.

``GET /_stats``: hit counts (``chat_hits``, ``completion_hits``, ``embedding_hits``, ``hits_by_model``),
the messages of every chat request (``prompts``), the inputs of every embedding request, the
Authorization headers seen (``authorization``), every call (``calls``: endpoint, model, stream,
include_usage, authorization, id and outcome: ``ok``, ``cut``, ``status_429``..., ``client_gone``
(it left during a hang or a stream), ``hang_timeout`` or ``pending``) and per model (``models``:
counts of chat, completions, embeddings and streams, its calls, its last request body and headers).
``POST /_reset`` clears all stats and behaviours.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DIMENSIONS = 64
DEFAULT_ECHO_WORDS = 16
MAX_ECHO_WORDS = 10_000
HANG_LIMIT = 300.0
MODES = ("rules", "content", "sleep", "error", "echo", "hang")
_WORD = re.compile(r"[a-z0-9]+")
_PIECE = re.compile(r"\S+\s*|\s+")
_CONTROL_KEYS = {
    "model", "mode", "rules", "default_index", "content", "delay", "status", "retry_after", "cut_after",
    "chunk_delay", "omit_usage", "fail_times", "reset", "whoami_delay",
}  # fmt: skip
_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request (fake provider)."),
    401: ("authentication_error", "invalid_api_key", "Incorrect API key provided (fake provider)."),
    403: ("permission_error", None, "Permission denied (fake provider)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (fake provider)."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (fake provider)."),
}


@dataclass
class Behaviour:
    mode: str | None = None  # None: echo for models named echo*, else rules
    rules: list[tuple[str, int]] = field(default_factory=list)
    default_index: int = 0
    content: str = ""
    delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    cut_after: int | None = None
    chunk_delay: float = 0.0
    omit_usage: bool = False
    fail_times: int | None = None
    faulted: dict[str, int] = field(default_factory=dict)  # faulty calls so far, per model

    def copy(self) -> Behaviour:
        return dataclasses.replace(self, rules=list(self.rules), faulted={})

    def faulty(self, model: str) -> bool:
        """Whether this call gets the faults (and counts it against ``fail_times``)."""
        if self.fail_times is None:
            return True
        done = self.faulted.get(model, 0)
        if done >= self.fail_times:
            return False
        self.faulted[model] = done + 1
        return True

    def answer_mode(self, model: str) -> str:
        """The mode of a normal answer: echo, rules or content."""
        if self.mode in ("echo", "rules", "content"):
            return self.mode
        return "echo" if model.startswith("echo") else "rules"

    def public(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if key != "faulted"}


class State:
    def __init__(self, rules: list[tuple[str, int]], default_index: int) -> None:
        self.initial = (list(rules), default_index)
        self.reset()

    def reset(self) -> None:
        self.behaviours: dict[str, Behaviour] = {
            "*": Behaviour(rules=list(self.initial[0]), default_index=self.initial[1])
        }
        self.whoami_delay = 0.0
        self.chat_hits = 0
        self.completion_hits = 0
        self.embedding_hits = 0
        self.hits_by_model: dict[str, int] = {}
        self.prompts: list[list[dict[str, Any]]] = []
        self.inputs: list[list[str]] = []
        self.authorization: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.models: dict[str, dict[str, Any]] = {}

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.get(model) or self.behaviours["*"]

    def hit(self, model: str) -> None:
        self.hits_by_model[model] = self.hits_by_model.get(model, 0) + 1

    def record(self, endpoint: str, request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
        """Count a call (chat, completions or embeddings) and return its record in ``calls``."""
        model = str(payload.get("model", ""))
        authorization = request.headers.get("Authorization", "")
        self.hit(model)
        self.authorization.append(authorization)
        stream = payload.get("stream") is True and endpoint != "embeddings"
        options = payload.get("stream_options")
        call = {
            "endpoint": endpoint,
            "model": model,
            "stream": stream,
            "include_usage": isinstance(options, dict) and options.get("include_usage") is True,
            "authorization": authorization,
            "id": None,
            "outcome": "pending",
        }
        self.calls.append(call)
        stats = self.models.setdefault(
            model,
            {"chat": 0, "completions": 0, "embeddings": 0, "streams": 0, "calls": [],
             "last_request": None, "last_headers": None},
        )  # fmt: skip
        stats[endpoint] += 1
        stats["streams"] += int(stream)
        stats["calls"].append(call)
        stats["last_request"] = payload
        stats["last_headers"] = dict(request.headers)
        return call


STATE = web.AppKey("state", State)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def embed(text: str) -> list[float]:
    vector = [0.0] * DIMENSIONS
    for word in _WORD.findall(text.lower()):
        slot = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % DIMENSIONS
        vector[slot] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def echo_words(text: str, count: int) -> list[str]:
    """The words of an echo answer: ``echo: <text>`` then ``w1 w2 ...``, exactly ``count`` of them."""
    words = f"echo: {text}".split()[:count]
    return words + [f"w{i}" for i in range(1, count - len(words) + 1)]


def _word_limit(payload: dict[str, Any]) -> int:
    raw = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if isinstance(raw, int) and not isinstance(raw, bool):
        return min(max(raw, 1), MAX_ECHO_WORDS)
    return DEFAULT_ECHO_WORDS


def error_body(status: int, model: str) -> dict[str, Any]:
    kind, code, message = _ERRORS.get(status, ("server_error", None, "fake provider failure"))
    if status == 429:
        message = f"Rate limit reached for {model or 'the model'} (fake provider)."
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, model: str, retry_after: float | None = None) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = (
            str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
        )
    return web.json_response(error_body(status, model), status=status, headers=headers)


async def _payload(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        payload = await request.json()
    except ValueError:
        return web.json_response(error_body(400, ""), status=400)
    if not isinstance(payload, dict):
        return web.json_response(error_body(400, ""), status=400)
    return payload


async def _hang(request: web.Request) -> bool:
    """Wait until the client goes away (True) or HANG_LIMIT seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_LIMIT
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(0.05)
    return False


async def _fault(
    request: web.Request, behaviour: Behaviour, model: str, call: dict[str, Any]
) -> tuple[web.StreamResponse | None, bool]:
    """Apply the behaviour's faults before answering: (a response to send instead, whether the answer
    may be cut)."""
    if not behaviour.faulty(model):
        return None, False
    if behaviour.mode == "hang":
        gone = await _hang(request)
        call["outcome"] = "client_gone" if gone else "hang_timeout"
        return error_response(504, model), False  # not sent when the client is gone
    status = behaviour.status or (500 if behaviour.mode == "error" else None)
    if status:
        call["outcome"] = f"status_{status}"
        return error_response(status, model, behaviour.retry_after), False
    if behaviour.mode == "sleep":
        await asyncio.sleep(behaviour.delay)
    return None, behaviour.cut_after is not None


def _cut(request: web.Request, call: dict[str, Any]) -> None:
    """Close the connection where the answer stands (what was written is flushed first)."""
    call["outcome"] = "cut"
    if request.transport is not None:
        request.transport.close()


async def _send_cut(request: web.Request, body: dict[str, Any], call: dict[str, Any]) -> web.StreamResponse:
    """A JSON answer whose Content-Length promises the whole body, of which half is sent."""
    data = json.dumps(body).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _cut(request, call)
    return response


def _answer(
    behaviour: Behaviour, mode: str, model: str, texts: list[str], last: str, payload: dict[str, Any]
) -> tuple[str, dict[str, int]]:
    """(content, usage) of a chat or completions answer."""
    if mode == "echo":
        words = echo_words(last, _word_limit(payload))
        content = " ".join(words)
        prompt_tokens, completion_tokens = sum(len(text.split()) for text in texts), len(words)
    else:
        if mode == "content":
            content = behaviour.content
        else:
            lowered = last.lower()
            index = next(
                (i for keyword, i in behaviour.rules if keyword.lower() in lowered), behaviour.default_index
            )
            content = json.dumps({"index": index})
        prompt_tokens, completion_tokens = sum(_tokens(text) for text in texts), _tokens(content)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return content, usage


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def _stream(
    request: web.Request,
    endpoint: str,
    base: dict[str, Any],
    content: str,
    usage: dict[str, int] | None,
    behaviour: Behaviour,
    cut: bool,
    call: dict[str, Any],
) -> web.StreamResponse:
    """OpenAI's server-sent events for ``content`` (one content chunk per word)."""
    chat = endpoint == "chat"
    include_usage = bool(call["include_usage"]) and usage is not None  # omit_usage: as if not asked
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)

    def chunk(choice: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        chosen: dict[str, Any]
        if chat:
            chosen = {"index": 0, "delta": choice or {}, "logprobs": None, "finish_reason": finish}
        else:
            chosen = {"index": 0, "text": (choice or {}).get("content", ""), "logprobs": None,
                      "finish_reason": finish}  # fmt: skip
        body = {**base, "choices": [chosen]}
        if include_usage:
            body["usage"] = None
        return body

    try:
        if chat:
            await response.write(_sse(chunk({"role": "assistant", "content": ""})))
        for sent, piece in enumerate(_PIECE.findall(content)):
            if cut and sent == behaviour.cut_after:
                _cut(request, call)
                return response
            if behaviour.chunk_delay > 0:
                await asyncio.sleep(behaviour.chunk_delay)
            await response.write(_sse(chunk({"content": piece})))
        if cut:
            _cut(request, call)
            return response
        await response.write(_sse(chunk(None, "stop")))
        if include_usage:
            await response.write(_sse({**base, "choices": [], "usage": usage}))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
    except ConnectionError:
        call["outcome"] = "client_gone"
        return response
    call["outcome"] = "ok"
    return response


async def _complete(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[STATE]
    payload = await _payload(request)
    if isinstance(payload, web.Response):
        return payload
    model = str(payload.get("model", ""))
    if endpoint == "chat":
        state.chat_hits += 1
        messages = payload.get("messages") or []
        if not isinstance(messages, list):
            messages = []
        state.prompts.append(messages)
        texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
        last = _last_user_text(messages)
    else:
        state.completion_hits += 1
        prompt = payload.get("prompt")
        texts = [str(p) for p in prompt] if isinstance(prompt, list) else [str(prompt or "")]
        last = texts[-1] if texts else ""
    call = state.record(endpoint, request, payload)
    behaviour = state.behaviour(model)
    instead, cut = await _fault(request, behaviour, model, call)
    if instead is not None:
        return instead
    content, usage = _answer(behaviour, behaviour.answer_mode(model), model, texts, last, payload)
    hits = state.chat_hits if endpoint == "chat" else state.completion_hits
    call["id"] = f"chatcmpl-fake-{hits}" if endpoint == "chat" else f"cmpl-fake-{hits}"
    base = {
        "id": call["id"],
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model or "fake",
        "system_fingerprint": "fp_fake",
    }
    if call["stream"]:
        return await _stream(
            request, endpoint, base, content, None if behaviour.omit_usage else usage, behaviour, cut, call
        )
    if endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                  "finish_reason": "stop"}  # fmt: skip
        body = {**base, "object": "chat.completion", "choices": [choice]}
    else:
        body = {**base, "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}]}
    if not behaviour.omit_usage:
        body["usage"] = usage
    if cut:
        return await _send_cut(request, body, call)
    call["outcome"] = "ok"
    return web.json_response(body)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    payload = await _payload(request)
    if isinstance(payload, web.Response):
        return payload
    raw = payload.get("input")
    inputs = [raw] if isinstance(raw, str) else [str(item) for item in raw or []]
    model = str(payload.get("model", ""))
    state.embedding_hits += 1
    state.inputs.append(inputs)
    call = state.record("embeddings", request, payload)
    behaviour = state.behaviour(model)
    instead, cut = await _fault(request, behaviour, model, call)
    if instead is not None:
        return instead
    tokens = sum(_tokens(text) for text in inputs)
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embed(text)} for i, text in enumerate(inputs)
        ],
        "model": model or "fake-embedding",
    }
    if not behaviour.omit_usage:
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if cut:
        return await _send_cut(request, body, call)
    call["outcome"] = "ok"
    return web.json_response(body)


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "fake-llm"}


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    names = sorted((set(state.models) | set(state.behaviours)) - {"*", ""})
    return web.json_response({"object": "list", "data": [_model_entry(name) for name in names]})


async def model(request: web.Request) -> web.Response:
    return web.json_response(_model_entry(request.match_info["model"]))


async def whoami(request: web.Request) -> web.Response:
    await asyncio.sleep(request.app[STATE].whoami_delay)
    return web.json_response({"server": "fake-llm"})


def _optional(value: Any, kind: type[int] | type[float]) -> Any:
    return None if value is None else kind(value)


async def control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await _payload(request)
    if isinstance(payload, web.Response):
        return payload
    unknown = sorted(set(payload) - _CONTROL_KEYS)
    if unknown:
        return web.json_response({"ok": False, "error": f"unknown control keys: {unknown}"}, status=400)
    if payload.get("mode") is not None and payload["mode"] not in MODES:
        return web.json_response({"ok": False, "error": f"mode must be one of {MODES}"}, status=400)
    if "whoami_delay" in payload:
        state.whoami_delay = float(payload["whoami_delay"])
    model = str(payload.get("model", "*"))
    if payload.get("reset") and model != "*":
        state.behaviours.pop(model, None)
    behaviour = state.behaviours.get(model)
    if behaviour is None:
        behaviour = state.behaviours[model] = state.behaviours["*"].copy()
    if "mode" in payload:
        behaviour.mode = None if payload["mode"] is None else str(payload["mode"])
        if behaviour.mode != "error" and "status" not in payload:
            behaviour.status = None
    if "rules" in payload:
        behaviour.rules = [(str(keyword), int(index)) for keyword, index in payload["rules"]]
    if "default_index" in payload:
        behaviour.default_index = int(payload["default_index"])
    if "content" in payload:
        behaviour.content = str(payload["content"])
    if "delay" in payload:
        behaviour.delay = float(payload["delay"])
    if "status" in payload:
        status = _optional(payload["status"], int)
        behaviour.status = None if status in (None, 0, 200) else status
    if "retry_after" in payload:
        behaviour.retry_after = _optional(payload["retry_after"], float)
    if "cut_after" in payload:
        behaviour.cut_after = _optional(payload["cut_after"], int)
    if "chunk_delay" in payload:
        behaviour.chunk_delay = float(payload["chunk_delay"] or 0)
    if "omit_usage" in payload:
        behaviour.omit_usage = bool(payload["omit_usage"])
    if "fail_times" in payload:
        behaviour.fail_times = _optional(payload["fail_times"], int)
        behaviour.faulted = {}
    return web.json_response(
        {"ok": True, "model": model, "mode": behaviour.mode, "behaviour": behaviour.public()}
    )


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "chat_hits": state.chat_hits,
            "completion_hits": state.completion_hits,
            "embedding_hits": state.embedding_hits,
            "prompts": state.prompts,
            "inputs": state.inputs,
            "authorization": state.authorization,
            "hits_by_model": state.hits_by_model,
            "calls": state.calls,
            "models": state.models,
        }
    )


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def make_app(rules: list[tuple[str, int]], default_index: int = 0) -> web.Application:
    app = web.Application()
    app[STATE] = State(rules, default_index)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_get(f"{prefix}/models/{{model}}", model)
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/whoami", whoami)
    return app


def _rule(text: str) -> tuple[str, int]:
    keyword, _, index = text.rpartition("=")
    if not keyword or not index.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEYWORD=INDEX, got {text!r}")
    return keyword, int(index)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rule", type=_rule, action="append", default=[], help="KEYWORD=INDEX (repeatable)")
    parser.add_argument("--default-index", type=int, default=0)
    args = parser.parse_args()
    web.run_app(
        make_app(args.rule, args.default_index), host=args.host, port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
