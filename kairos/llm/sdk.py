"""The litellm transport: a target called through litellm's SDK (``acompletion``, ``atext_completion``,
``aembedding``), for providers whose wire is not OpenAI's unchanged (kairos/llm/transport.py says
which) and for targets with ``"transport": "litellm"``.

litellm makes no retries of its own (``num_retries``/``max_retries`` 0): the gateway decides. Its
answers become OpenAI's JSON (``_dump``): litellm's own fields removed, a stream delta's empty fields
dropped as OpenAI omits them. Its exceptions carry ``status_code`` and, for a 429, the provider's
response headers (``Retry-After``); kairos/llm/calls.py reads them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kairos.ai.provider import ensure_litellm
from kairos.config.llm import LlmTarget
from kairos.llm.transport import Answer, Events, Payload


class SdkTarget:
    name = "litellm"

    def __init__(self, target: LlmTarget) -> None:
        self.target = target
        kwargs: dict[str, Any] = {"model": target.label, "num_retries": 0, "max_retries": 0}
        if target.api_base is not None:
            kwargs["api_base"] = target.api_base
        if target.api_key is not None:
            kwargs["api_key"] = target.api_key.get_secret_value()
        self._kwargs = kwargs

    async def call(self, kind: str, params: dict[str, Any], seconds: float) -> Answer:
        litellm = await ensure_litellm()
        function = {
            "chat": litellm.acompletion,
            "text": litellm.atext_completion,
            "embedding": litellm.aembedding,
        }[kind]
        answer = await function(**params, **self._kwargs, timeout=seconds)
        if params.get("stream") and kind != "embedding":
            return _events(answer)
        return Payload(dump(answer))


async def _events(stream: Any) -> Events:
    """litellm's stream as Payloads, one per batch (litellm hands its chunks over one at a time);
    closing this closes litellm's (and so the provider's) stream."""
    try:
        async for chunk in stream:
            yield [Payload(dump(chunk))]
    finally:
        await close_stream(stream)


async def close_stream(stream: Any) -> None:
    """Close a provider stream early (litellm's wrapper, or an iterator), if it can be."""
    for name in ("aclose", "close"):
        closer = getattr(stream, name, None)
        if closer is None:
            continue
        try:
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # closing a half-read stream may complain; it is being dropped anyway
            pass
        return


def dump(answer: Any) -> dict[str, Any]:
    """An answer or chunk as OpenAI's JSON: litellm's own fields (``provider_specific_fields``,
    ``_hidden_params``) removed, and a stream delta's empty fields dropped as OpenAI omits them."""
    if isinstance(answer, dict):
        dumped = dict(answer)
    else:
        dumped = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)
    cleaned = _clean(dumped)
    assert isinstance(cleaned, dict)
    for choice in cleaned.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            choice["delta"] = {key: value for key, value in delta.items() if value is not None}
    return cleaned


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _clean(item)
            for key, item in value.items()
            if key != "provider_specific_fields" and not key.startswith("_")
        }
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value
