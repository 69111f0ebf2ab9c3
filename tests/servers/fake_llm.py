"""A local OpenAI-compatible LLM provider for the AI-routing tests and the ai-routing example.

python -m tests.servers.fake_llm --port 9400 --rule refund=1 --rule search=0

``POST /v1/chat/completions`` answers ``{"index": N}`` as the assistant's message: N is the index of
the first rule whose keyword appears in the *last user message* (the request Kairos describes; the
backend list is in the system message), else ``default_index``. ``POST /v1/embeddings`` returns a
deterministic bag-of-words vector per input (each lower-cased word hashed into one of 64 dimensions),
so texts that share words are near each other: enough for the semantic strategy to be tested.

Both report ``usage`` like OpenAI does, so litellm counts tokens (and prices known model names).

Control, for tests: ``POST /_control`` with any of ``{"mode": "rules" | "content" | "sleep" | "error",
"rules": [[keyword, index], ...], "default_index": 0, "content": "<raw answer text>", "delay": 2.0,
"status": 500}`` (``mode`` content: answer ``content`` verbatim, e.g. garbage or an out-of-range index;
sleep: wait ``delay`` seconds, then answer by the rules; error: answer ``status`` with an error body).
With ``"model": "<name>"`` the behaviour applies to requests for that model only (as the request
names it, e.g. ``gpt-4o-mini``), so the tests of one module can each use their own model.
``GET /_stats`` returns hit counts (also per model), the messages of every chat request, the inputs
of every embedding request and the Authorization headers seen; ``POST /_reset`` clears them.

It can also play a slow backend: ``GET /whoami`` answers ``{"server": "fake-llm"}`` after
``whoami_delay`` seconds (set through ``/_control``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DIMENSIONS = 64
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Behaviour:
    mode: str = "rules"
    rules: list[tuple[str, int]] = field(default_factory=list)
    default_index: int = 0
    content: str = ""
    delay: float = 0.0
    status: int = 500


class State:
    def __init__(self, rules: list[tuple[str, int]], default_index: int) -> None:
        self.initial = (list(rules), default_index)
        self.reset()

    def reset(self) -> None:
        self.behaviours: dict[str, Behaviour] = {"*": Behaviour(rules=list(self.initial[0]))}
        self.behaviours["*"].default_index = self.initial[1]
        self.whoami_delay = 0.0
        self.chat_hits = 0
        self.embedding_hits = 0
        self.hits_by_model: dict[str, int] = {}
        self.prompts: list[list[dict[str, Any]]] = []
        self.inputs: list[list[str]] = []
        self.authorization: list[str] = []

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.get(model) or self.behaviours["*"]

    def hit(self, model: str) -> None:
        self.hits_by_model[model] = self.hits_by_model.get(model, 0) + 1


STATE = web.AppKey("state", State)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return str(content or "")
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


async def chat(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await request.json()
    messages = payload.get("messages") or []
    model = str(payload.get("model", ""))
    state.chat_hits += 1
    state.hit(model)
    state.prompts.append(messages)
    state.authorization.append(request.headers.get("Authorization", ""))
    behaviour = state.behaviour(model)
    if behaviour.mode == "error":
        error = {"error": {"message": "fake provider failure", "type": "server_error", "code": None}}
        return web.json_response(error, status=behaviour.status)
    if behaviour.mode == "sleep":
        await asyncio.sleep(behaviour.delay)
    if behaviour.mode == "content":
        content = behaviour.content
    else:
        text = _last_user_text(messages).lower()
        index = next(
            (i for keyword, i in behaviour.rules if keyword.lower() in text), behaviour.default_index
        )
        content = json.dumps({"index": index})
    prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in messages)
    completion_tokens = _tokens(content)
    return web.json_response(
        {
            "id": f"chatcmpl-fake-{state.chat_hits}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or "fake",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await request.json()
    raw = payload.get("input")
    inputs = [raw] if isinstance(raw, str) else [str(item) for item in raw or []]
    model = str(payload.get("model", ""))
    state.embedding_hits += 1
    state.hit(model)
    state.inputs.append(inputs)
    state.authorization.append(request.headers.get("Authorization", ""))
    behaviour = state.behaviour(model)
    if behaviour.mode == "error":
        return web.json_response({"error": {"message": "fake provider failure"}}, status=behaviour.status)
    if behaviour.mode == "sleep":
        await asyncio.sleep(behaviour.delay)
    tokens = sum(_tokens(text) for text in inputs)
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": embed(text)} for i, text in enumerate(inputs)
            ],
            "model": model or "fake-embedding",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def whoami(request: web.Request) -> web.Response:
    await asyncio.sleep(request.app[STATE].whoami_delay)
    return web.json_response({"server": "fake-llm"})


async def control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await request.json()
    if "whoami_delay" in payload:
        state.whoami_delay = float(payload["whoami_delay"])
    model = str(payload.get("model", "*"))
    behaviour = state.behaviours.get(model)
    if behaviour is None:
        behaviour = state.behaviours[model] = Behaviour(**vars(state.behaviours["*"]))
        behaviour.rules = list(behaviour.rules)
    if "mode" in payload:
        behaviour.mode = str(payload["mode"])
    if "rules" in payload:
        behaviour.rules = [(str(keyword), int(index)) for keyword, index in payload["rules"]]
    if "default_index" in payload:
        behaviour.default_index = int(payload["default_index"])
    if "content" in payload:
        behaviour.content = str(payload["content"])
    if "delay" in payload:
        behaviour.delay = float(payload["delay"])
    if "status" in payload:
        behaviour.status = int(payload["status"])
    return web.json_response({"ok": True, "model": model, "mode": behaviour.mode})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "chat_hits": state.chat_hits,
            "embedding_hits": state.embedding_hits,
            "prompts": state.prompts,
            "inputs": state.inputs,
            "authorization": state.authorization,
            "hits_by_model": state.hits_by_model,
        }
    )


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def make_app(rules: list[tuple[str, int]], default_index: int = 0) -> web.Application:
    app = web.Application()
    app[STATE] = State(rules, default_index)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/embeddings", embeddings)
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
