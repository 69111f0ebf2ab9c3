"""How one provider target is called: the interface both transports share, and which one a target uses.

Two transports answer the same call (``kind``, the request's parameters, a timeout):

- **direct** (kairos/llm/direct.py): the request body relayed over HTTP to ``{api_base}/chat/completions``
  (``/completions``, ``/embeddings``) and the answer relayed back, stream events as the provider's own
  bytes. Only for targets whose litellm adapter is OpenAI's own, unchanged: there litellm's translation
  is the identity, and its SDK cost ~6 ms of CPU per call here (request and response objects, logging
  hooks, a stream wrapper per chunk), 85-90% of the gateway's CPU per call (bench/llm_bench.py);
- **litellm** (kairos/llm/sdk.py): ``litellm.acompletion``/``atext_completion``/``aembedding``, for
  every other provider (Anthropic, Bedrock, Groq, Mistral...: litellm rewrites their requests and
  answers), and for any target with ``"transport": "litellm"``.

Either way an answer is a ``Payload`` (a JSON answer) or an async iterator of batches of them (a
stream's events, each batch those that arrived together: they go out together, in one write, without
waiting for anything), and a failure one of the errors below or litellm's own exceptions, which
kairos/llm/calls.py sorts into fallback or answer. None of these errors is an ``OSError``: the endpoint
reads an ``OSError`` during a stream as the *client* having gone away.

**Which targets are direct** (``"transport": "auto"``, the default) is litellm's own answer, asked once
per target: the provider and model as ``litellm.get_llm_provider`` resolves them, then the chat config
litellm would use (``ProviderConfigManager.get_provider_chat_config``) must be ``OpenAIGPTConfig`` or a
subclass that overrides none of its request or response transforms. With litellm 1.110.2 that is
``openai`` (every model but the o-series and gpt-5, which litellm rewrites: ``max_completion_tokens``,
dropped ``temperature``), ``llamafile`` and ``nscale``; the other "OpenAI-compatible" providers (groq,
deepseek, together_ai, fireworks_ai, mistral, hosted_vllm...) have adapters of their own and stay on
litellm. An OpenAI-compatible server (vLLM, llama.cpp, LM Studio, a local proxy) configured as
``openai`` with its ``api_base`` is direct. A text completion for a model litellm answers through chat
(an OpenAI chat model) stays on litellm too.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from kairos.config.ai import PROVIDER_KEY_ENV
from kairos.config.llm import LlmTarget

if TYPE_CHECKING:
    from kairos.proxy.raw_engine import RawEngine

logger = logging.getLogger("kairos.llm")

OPENAI_BASE = "https://api.openai.com/v1"  # litellm's default for the openai provider
# The OpenAIGPTConfig methods that shape what is sent or what comes back: a provider config that
# overrides any of them is not OpenAI's wire unchanged. (``get_supported_openai_params`` only decides
# which parameters litellm drops; the direct transport relays them all, as the provider itself is asked.)
TRANSFORMS = (
    "transform_request",
    "transform_response",
    "map_openai_params",
    "_map_openai_params",
    "_transform_messages",
    "transform_messages",
    "get_complete_url",
    "validate_environment",
    "get_model_response_iterator",
    "should_fake_stream",
    "get_error_class",
    "remove_cache_control_flag_from_messages_and_tools",
    "translate_developer_role_to_system_role",
)
MAX_CHOICES = 4096  # targets whose transport is remembered (a config holds far fewer)


@dataclass(slots=True)
class Payload:
    """One JSON answer, or one event of a stream: ``data`` parsed, and ``raw`` the provider's own
    bytes of it (the direct transport) so it can be relayed without being serialised again."""

    data: dict[str, Any]
    raw: bytes | None = None

    def encoded(self, model: str, drop_usage: bool = False) -> bytes:
        """The JSON bytes for the client: the top-level ``model`` the public name (the target's never
        shows), without ``usage`` when ``drop_usage``. The provider's bytes with the model's value
        replaced where that is exact (its ``"model":"x"`` pair found as written), else ``data``
        serialised. Inside a JSON string a quote is escaped, so the pair cannot match string content."""
        data = self.data
        raw = self.raw
        found = data.get("model")
        if raw is not None and isinstance(found, str):
            pairs, public = _model_pairs(found, model)
            for pair in pairs:
                if pair in raw:
                    relabelled = raw.replace(pair, public)
                    if not (drop_usage and "usage" in data):
                        return relabelled
                    if data["usage"] is None and b',"usage":null' in relabelled:
                        return relabelled.replace(b',"usage":null', b"")
                    break
        out = {**data, "model": model}
        if drop_usage:
            out.pop("usage", None)
        return json.dumps(out).encode()


@functools.lru_cache(maxsize=256)
def _model_pairs(found: str, model: str) -> tuple[tuple[bytes, bytes], bytes]:
    """The ``"model"`` pairs a provider may have written (compact, or with a space), and the one that
    replaces them: the same two models for every event of every stream, so encoded once."""
    value = json.dumps(found).encode()
    return (b'"model":' + value, b'"model": ' + value), b'"model":' + json.dumps(model).encode()


Events: TypeAlias = AsyncIterator[list[Payload]]  # a stream's events, in batches (never empty)
Answer: TypeAlias = Payload | Events  # a JSON answer, or a stream


class Transport(Protocol):
    """One target, bound to the way it is called."""

    name: str  # "direct" or "litellm"

    async def call(self, kind: str, params: dict[str, Any], seconds: float) -> Answer:
        """The answer for ``kind`` (``chat``, ``text``, ``embedding``): a Payload, or (``params["stream"]``,
        not for embeddings) the stream's events in batches. ``seconds``: the target's timeout (the caller
        bounds the whole call by it too; the direct transport also bounds each wait for a stream's next
        bytes).
        Raises ProviderStatus, ProviderTimeout, ProviderUnreachable or litellm's exceptions."""
        ...


class ProviderStatus(Exception):
    """The provider answered an error (its HTTP status, or the ``code`` of an error event), or an answer
    that is not OpenAI's (502). ``headers`` are the answer's, lower-cased (``retry-after`` is read)."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None, code: Any = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}
        self.code = code if isinstance(code, str) else None


class ProviderTimeout(Exception):
    """The provider did not answer (or send the stream's next bytes) within the target's timeout."""


class ProviderUnreachable(Exception):
    """No connection, or the connection broke before the answer was complete."""


class Transports:
    """The transport of each target (decided once per target), and the HTTP engine the direct ones share.

    Owned by the LlmService: ``clear()`` on every config apply, ``close()`` in the lifespan."""

    def __init__(self) -> None:
        # By the target object's id (hashing a frozen pydantic model walks every field, per request);
        # the target is kept beside its transport, so an id reused by a later object never matches.
        self._chosen: dict[tuple[int, bool], tuple[LlmTarget, Transport]] = {}
        self._engine: RawEngine | None = None

    def for_target(self, target: LlmTarget, kind: str, litellm: Any) -> Transport:
        text = kind == "text"
        key = (id(target), text)
        found = self._chosen.get(key)
        if found is not None and found[0] is target:
            return found[1]
        if len(self._chosen) > MAX_CHOICES:
            self._chosen.clear()
        wire = openai_wire(target, litellm, text) if target.transport == "auto" else None
        chosen: Transport
        if wire is None:
            from kairos.llm.sdk import SdkTarget

            chosen = SdkTarget(target)
        else:
            from kairos.llm.direct import DirectTarget

            base, model, secret = wire
            chosen = DirectTarget(self.engine(), target.label, base, model, secret)
        self._chosen[key] = (target, chosen)
        logger.debug("llm target %s: %s transport", target.label, chosen.name)
        return chosen

    def engine(self) -> RawEngine:
        if self._engine is None:
            from kairos.proxy.raw_engine import RawEngine

            self._engine = RawEngine()
        return self._engine

    def clear(self) -> None:
        """A new config: targets are decided again (their pooled connections stay)."""
        self._chosen.clear()

    async def close(self) -> None:
        self.clear()
        if self._engine is not None:
            await self._engine.close()
            self._engine = None


def openai_wire(target: LlmTarget, litellm: Any, text: bool = False) -> tuple[str, str, str | None] | None:
    """``(api base, model as sent, key)`` when litellm would speak OpenAI's wire to this target unchanged,
    else None (see the module docstring). Anything litellm cannot resolve is None: litellm decides."""
    try:
        from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
        from litellm.types.utils import LlmProviders
        from litellm.utils import ProviderConfigManager

        model, provider, dynamic_key, resolved_base = litellm.get_llm_provider(
            target.label, api_base=target.api_base
        )
        config = ProviderConfigManager.get_provider_chat_config(model=model, provider=LlmProviders(provider))
    except Exception:  # an unknown provider, or litellm's layout changed: its SDK handles the target
        logger.debug("llm target %s: not resolved as OpenAI's wire", target.label, exc_info=True)
        return None
    if not isinstance(config, OpenAIGPTConfig):
        return None
    kind = type(config)
    if any(getattr(kind, name, None) is not getattr(OpenAIGPTConfig, name, None) for name in TRANSFORMS):
        return None
    if text and model in litellm.open_ai_chat_completion_models:
        return None  # litellm answers /completions for a chat model through chat: it stays there
    base = target.api_base or resolved_base
    if base is None and provider == "openai":  # litellm's own lookup for the openai provider
        base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE") or OPENAI_BASE
    if not base or not base.startswith(("http://", "https://")):
        return None
    if target.api_key is not None:
        key: str | None = target.api_key.get_secret_value()
    else:
        env = PROVIDER_KEY_ENV.get(provider) or f"{provider.upper()}_API_KEY"
        key = dynamic_key or os.environ.get(env) or None
    return base.rstrip("/"), model, key
