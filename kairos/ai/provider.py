"""One AI provider (litellm), its circuit breaker and its accounting; litellm is imported lazily.

litellm takes ~5 s to import and is only needed when a route uses an AI strategy that calls a
provider, so nothing imports it at module level: ``load_litellm()`` does, once, from a worker
thread at startup (or when a reload adds the first such route). Before the import it sets
``LITELLM_LOCAL_MODEL_COST_MAP=True`` and ``LITELLM_OFFLINE_MODE=true`` (each unless the operator set
it), so litellm never downloads anything at run time: it reads its bundled model price list instead
of fetching one, its bundled Anthropic beta-header table, and counts the tokens of a model whose
HuggingFace tokenizer it would fetch from huggingface.co (Llama, Cohere) with its bundled tiktoken
encoding (its bundled Anthropic and DeepSeek tokenizers are still used). Without offline mode, a
stream on litellm's SDK whose provider reports no usage made litellm count it with the Llama
tokenizer, whose download retries for ~23 s without a network before the stream could end (found by
tests/llm/test_offline.py, which runs the gateway in an empty network namespace). Its debug banners
and telemetry are switched off and its loggers kept at WARNING (at DEBUG they print request
parameters).

Every call goes through litellm's own code (``acompletion`` / ``aembedding``) with
``model="<provider>/<model>"``, the key, ``api_base``, the time left of the decision's budget as
``timeout`` and no retries of its own (the gateway decides about fallbacks). A failed call or a
timeout is a failure for the provider's ``CircuitBreaker`` (the same class that guards backends):
once it opens, the provider is skipped without a call until its probe time, so an outage costs
nothing per request. An answer the gateway cannot use is *not* a provider failure (the provider
works; the model answered badly).

The API key lives in this object only (a ``SecretStr`` until the call). It is never in a label, a
log line or an error message: errors are logged by type plus a message scrubbed of the key and of
anything key-like (``scrub``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kairos.ai.context import redact
from kairos.config.ai import PROVIDER_KEY_ENV, AiProviderConfig, litellm_model
from kairos.config.policies import CircuitBreakerConfig
from kairos.resilience.breaker import CircuitBreaker

logger = logging.getLogger("kairos.ai")

_LOCK = threading.Lock()
_LITELLM: Any = None
_WARM = False


def litellm_loaded() -> bool:
    return _LITELLM is not None


async def ensure_litellm() -> Any:
    """litellm, imported in a worker thread the first time (the event loop keeps serving), then
    warmed up on this loop."""
    if _LITELLM is not None:
        return _LITELLM
    litellm = await asyncio.to_thread(load_litellm)
    global _WARM
    if not _WARM:
        _WARM = True
        try:  # one mocked call (no network): litellm's first call builds ~0.5 s of lazy state
            await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "warm-up"}],
                mock_response='{"index": 0}',
                api_key="warm-up",
            )
        except Exception:  # pragma: no cover - the first real call pays instead
            logger.debug("litellm warm-up call failed", exc_info=True)
    return litellm


async def close_litellm() -> None:
    """Close litellm's pooled HTTP clients (if it was ever loaded)."""
    if _LITELLM is None:
        return
    closer = getattr(_LITELLM, "close_litellm_async_clients", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # shutting down: nothing left to do about it
            logger.debug("closing litellm's clients failed", exc_info=True)


def load_litellm() -> Any:
    """Import and configure litellm once (blocking: call it from a thread on the event loop)."""
    global _LITELLM
    with _LOCK:
        if _LITELLM is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            # Whatever litellm would fetch on its own (tokenizers from huggingface.co, its price list,
            # its Anthropic beta-header table) comes from its bundled copies: see the module docstring.
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            started = time.perf_counter()
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.drop_params = True  # a provider that has no `temperature` still gets the call
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx", "openai"):
                logging.getLogger(name).setLevel(logging.WARNING)
            _warm_up(litellm)
            _LITELLM = litellm
            logger.info("litellm %s loaded in %.1f s", _version(), time.perf_counter() - started)
    return _LITELLM


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:  # pragma: no cover - metadata missing
        return "?"


def _warm_up(litellm: Any) -> None:
    """Resolve what litellm would otherwise import on the first call (~2 s here), so the first
    routed request does not pay it inside its decision budget."""
    try:
        litellm.get_llm_provider("openai/gpt-4o-mini")
        import openai.resources  # noqa: F401  (the OpenAI SDK's resources: ~1.1 s, imported by .chat)
        from litellm.llms.openai.openai import OpenAIChatCompletion  # noqa: F401
    except Exception:  # pragma: no cover - internal layout changed: the first call pays instead
        logger.debug("litellm warm-up skipped", exc_info=True)


class LogThrottle:
    """At most one log line per key per ``interval`` seconds: a provider outage or a model that
    keeps answering nonsense must not write a line per request (the metrics count every one)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


THROTTLE = LogThrottle()


class ProviderError(Exception):
    """The provider failed (error answer, connection error) or timed out."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class CircuitOpen(ProviderError):
    """Every provider of the chain is refused by its circuit breaker."""


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A provider as a route uses it: the ``ai`` fields resolved with the route's overrides."""

    provider: str
    model: str
    api_key: str | None
    api_base: str | None

    @property
    def label(self) -> str:
        """``provider/model``: what metrics and logs name it by (never the key)."""
        return litellm_model(self.provider, self.model)

    @property
    def identity(self) -> str:
        """Same provider, model, base URL and key -> same breaker and counters across reloads."""
        digest = hashlib.sha256((self.api_key or "").encode()).hexdigest()[:16]
        return f"{self.label}|{self.api_base or ''}|{digest}"

    @classmethod
    def of(cls, config: AiProviderConfig, model: str | None = None) -> ProviderSpec:
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        if key is None:
            env = PROVIDER_KEY_ENV.get(config.provider)
            key = os.environ.get(env) if env else None  # else litellm's own env lookup applies
        return cls(config.provider, model or config.model, key, config.api_base)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Provider:
    """One provider endpoint: calls, breaker, and what it cost (read by /metrics)."""

    def __init__(self, spec: ProviderSpec, breaker_config: CircuitBreakerConfig) -> None:
        self.spec = spec
        self.label = spec.label
        self.breaker = CircuitBreaker()
        self.breaker_config = breaker_config
        self.usage = Usage()
        self.calls: dict[str, int] = {}  # result (success, error, timeout, circuit_open) -> count

    def _count(self, result: str) -> None:
        self.calls[result] = self.calls.get(result, 0) + 1

    def blocked(self, now: float) -> bool:
        if self.breaker.blocks(now):
            self._count("circuit_open")
            return True
        return False

    def _kwargs(self, timeout: float) -> dict[str, Any]:
        spec = self.spec
        kwargs: dict[str, Any] = {"model": spec.label, "timeout": timeout, "num_retries": 0, "max_retries": 0}
        if spec.api_key is not None:
            kwargs["api_key"] = spec.api_key
        if spec.api_base is not None:
            kwargs["api_base"] = spec.api_base
        return kwargs

    async def complete(self, messages: list[dict[str, str]], budget: float) -> str | None:
        """The text of the model's answer (one short completion, temperature 0)."""
        litellm = _LITELLM if _LITELLM is not None else await ensure_litellm()
        kwargs = self._kwargs(budget)
        response = await self._call(
            litellm.acompletion(messages=messages, max_tokens=20, temperature=0, **kwargs), budget
        )
        self._account(litellm, response)
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        return content if isinstance(content, str) else None

    async def embed(self, texts: list[str], budget: float) -> list[list[float]]:
        litellm = _LITELLM if _LITELLM is not None else await ensure_litellm()
        response = await self._call(litellm.aembedding(input=texts, **self._kwargs(budget)), budget)
        self._account(litellm, response)
        vectors: list[list[float]] = []
        for item in response.data:
            vector = item["embedding"] if isinstance(item, dict) else getattr(item, "embedding", None)
            if not isinstance(vector, list):
                raise ProviderError(f"{self.label}: embedding response without vectors")
            vectors.append([float(value) for value in vector])
        if len(vectors) != len(texts):
            raise ProviderError(f"{self.label}: {len(vectors)} embeddings for {len(texts)} inputs")
        return vectors

    async def _call(self, call: Any, budget: float) -> Any:
        """Run one litellm call under the breaker and the time budget."""
        breaker, config = self.breaker, self.breaker_config
        ticket = breaker.acquire(config, time.monotonic())
        try:
            response = await asyncio.wait_for(call, budget)
        except TimeoutError:
            breaker.record(config, True, time.monotonic(), ticket)
            self._count("timeout")
            raise ProviderError(
                f"{self.label}: no answer within {budget * 1000:.0f} ms", timeout=True
            ) from None
        except asyncio.CancelledError:
            breaker.release(ticket)
            raise
        except Exception as exc:
            breaker.record(config, True, time.monotonic(), ticket)
            self._count("error")
            message = f"{self.label}: {type(exc).__name__}: {self.scrub(str(exc))}"
            if THROTTLE.allow("provider:" + self.label):
                logger.warning("AI provider call failed (more within 10 s are not logged): %s", message)
            raise ProviderError(message, timeout=_is_timeout(exc)) from None
        breaker.record(config, False, time.monotonic(), ticket)
        self._count("success")
        return response

    def _account(self, litellm: Any, response: Any) -> None:
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.usage.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.usage.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=response)
            except Exception:  # an unpriced model (local servers): no cost, tokens still counted
                cost = None
        if isinstance(cost, int | float) and cost > 0:
            self.usage.cost += float(cost)

    def scrub(self, text: str) -> str:
        """``text`` without this provider's key and without anything key-like; cut to 300 characters."""
        return scrub_keys(text, [self.spec.api_key] if self.spec.api_key else [])[:300]


def scrub_keys(text: str, keys: Iterable[str]) -> str:
    """``text`` without these keys (whole, or their head or tail as some SDKs print them) and without
    anything key-like (``redact``), on one line."""
    for key in keys:
        if key:
            text = text.replace(key, "[REDACTED:api_key]")
            if len(key) > 8:
                text = text.replace(key[-8:], "[REDACTED]").replace(key[:8], "[REDACTED]")
    return redact(" ".join(text.split()))


def _is_timeout(exc: Exception) -> bool:
    return "timeout" in type(exc).__name__.lower()
