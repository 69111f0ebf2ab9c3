"""`ai` (provider settings) and per-route `ai_policy` (kairos-rs §1.4, §1.10, §11).

Kairos's extensions over kairos-rs (all optional): ``ai.api_base`` (any OpenAI-compatible server),
``ai.timeout_ms`` (a decision that takes longer falls back), ``ai.max_concurrency`` (provider calls in
flight; beyond it requests fall back at once instead of queueing), ``ai.fallback_providers``,
``ai.circuit_breaker`` (the provider's own breaker); per route ``cache_ttl_secs``,
``body_preview_chars``, ``shadow`` and ``debug_header``. See kairos/ai/ for what they do.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from kairos.config.base import Bool, ConfigModel, NonNegativeInt, PositiveInt, Str
from kairos.config.policies import CircuitBreakerConfig

KNOWN_STRATEGIES = ("content_analysis", "semantic", "latency_prediction")
PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "cohere": "COHERE_API_KEY",
    "perplexity": "PERPLEXITY_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "xai": "XAI_API_KEY",
}


def litellm_model(provider: str, model: str) -> str:
    """``provider/model`` as litellm names a model (and metrics, headers and logs name it, never by
    its key); a model already written with its provider prefix is kept as it is."""
    return model if model.startswith(provider + "/") else f"{provider}/{model}"


class AiProviderConfig(ConfigModel):
    """An AI provider and model, called through litellm (so any provider it supports) as
    `provider/model`."""

    provider: Str = Field(
        min_length=1,
        description="litellm provider name (`openai`, `anthropic`, `cohere`, `perplexity`, `mistral`, "
        "`groq`, `xai`, `ollama`, `azure`, ...); any case.",
    )
    model: Str = Field(min_length=1, description="The provider's model name, e.g. `gpt-4o-mini`.")
    api_key: SecretStr | None = Field(
        None,
        description="The provider's API key; use `${NAME}`. Never shown in logs, metrics, errors or "
        "`/api/config`. Unset: the provider's environment variable ("
        + ", ".join(f"`{name}`" for name in PROVIDER_KEY_ENV.values())
        + ", or litellm's own lookup).",
    )
    api_base: Str | None = Field(
        None,
        description="`http(s)://` base URL of an OpenAI-compatible server (vLLM, llama.cpp, LM Studio, a "
        "local proxy). Unset: the provider's own endpoint.",
    )

    @field_validator("provider")
    @classmethod
    def _lower(cls, provider: str) -> str:
        return provider.strip().lower()

    @field_validator("api_base")
    @classmethod
    def _url(cls, api_base: str | None) -> str | None:
        if api_base is not None and not api_base.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return api_base


class AiConfig(AiProviderConfig):
    """The AI provider that routes with an `ai_policy` ask which backend should serve a request. A
    decision is bounded by `timeout_ms`, cached, redacted (credentials, e-mail addresses, card numbers,
    secrets never reach the model) and never an error for the client: a failed decision falls back to
    normal balancing. litellm is imported only when a route needs a provider."""

    timeout_ms: PositiveInt = Field(
        1500,
        description="The whole decision's budget in milliseconds (provider calls and fallbacks included): "
        "past it the request is balanced normally.",
    )
    # Provider calls in flight at once (cache hits are free); beyond it a request falls back at once.
    max_concurrency: PositiveInt = Field(
        64,
        description="Provider calls in flight at once; beyond it a request falls back at once instead of "
        "queueing (cached decisions are not counted).",
    )
    fallback_providers: tuple[AiProviderConfig, ...] = Field(
        (), description="Providers tried in order when the one before fails."
    )
    # The provider's own breaker (consecutive failures / timeouts open it; its calls are skipped).
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig,
        description="The provider's own circuit breaker (the backends' options): failures and timeouts open "
        "it, and an open provider is skipped without a call.",
    )


class AiStrategy(ConfigModel):
    """How the backend is chosen: a strategy name (`"latency_prediction"`), or one
    `{"<name>": {"model": ...}}` object (`{"content_analysis": {"model": "gpt-4o-mini"}}`).
    `content_analysis` makes one chat call per uncached request; `semantic` compares an embedding of
    the request with the backends' `description`/`examples` (no chat call); `latency_prediction`
    needs no provider: the lowest peak-EWMA latency times in-flight load, as measured by the gateway.
    `anomaly_detection` (kairos-rs) is refused."""

    # kairos-rs's externally tagged enum, normalised by _untag into `kind` plus options.
    input_shorthands = (
        {"type": "string", "enum": list(KNOWN_STRATEGIES), "description": "A strategy by name, no options."},
        {
            "type": "object",
            "description": 'A strategy by name with its options: `{"<name>": {"model": ...}}` (or `null` '
            "options).",
            "propertyNames": {"enum": list(KNOWN_STRATEGIES)},
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"model": {"type": "string", "description": "Overrides `ai.model`."}},
                    },
                    {"type": "null"},
                ]
            },
        },
    )

    kind: Str = Field(
        description="The strategy's name (the normalised form).",
        json_schema_extra={"enum": list(KNOWN_STRATEGIES)},
    )
    model: Str | None = Field(
        None, description="Model for the strategy's calls, overriding the first provider's `model`."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The strategy's other options (kept, not used by Kairos)."
    )

    @model_validator(mode="before")
    @classmethod
    def _untag(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"kind": data}
        elif isinstance(data, dict) and "kind" not in data:
            if len(data) != 1:
                raise ValueError('must be a strategy name or one {"name": {options}} object')
            ((kind, options),) = data.items()
            if options is not None and not isinstance(options, dict):
                raise ValueError(f"options of {kind!r} must be an object")
            options = dict(options or {})
            data = {"kind": kind, "model": options.pop("model", None), "options": options}
        if isinstance(data, dict):
            cls._check_kind(data.get("kind"))
        return data

    @staticmethod
    def _check_kind(kind: object) -> None:
        if kind == "anomaly_detection":
            raise ValueError(
                "strategy 'anomaly_detection' is not implemented in Kairos yet; use one of "
                + ", ".join(KNOWN_STRATEGIES)
            )
        if kind not in KNOWN_STRATEGIES:
            raise ValueError(f"unknown strategy {kind!r}; use one of " + ", ".join(KNOWN_STRATEGIES))


class AiPolicy(ConfigModel):
    """AI routing for one route: each request's backend is chosen by the `strategy`; the balancer
    honours the choice when that backend is available (circuit, health), else balances as usual. A
    route with a single backend makes no decision."""

    enabled: Bool = Field(description="`false` keeps the block but routes normally.")
    strategy: AiStrategy = Field(description="How the backend is chosen.")
    provider: Str | None = Field(
        None,
        description="Another provider for this route, with `ai.model` (its key comes from its own "
        "environment variable: `ai.api_key` is only sent to `ai.provider`). Unset: `ai.provider`.",
    )
    fallback_backend_index: NonNegativeInt | None = Field(
        None,
        description="Index in `backends` of the backend used when a decision fails. Unset: normal balancing.",
    )
    cache_ttl_secs: NonNegativeInt = Field(
        60,
        description="Seconds a decision is cached, keyed by a fingerprint of the normalised, redacted "
        "request; identical concurrent requests share one provider call. `0`: no cache.",
    )
    body_preview_chars: NonNegativeInt = Field(
        500,
        description="Body characters sent to the model; the body is read that far, then replayed, so the "
        "backend gets it whole.",
    )
    shadow: Bool = Field(
        False,
        description="Decide and record the decision (`kairos_ai_shadow_decisions_total`) but route "
        "normally; the request never waits for it.",
    )
    streaming: Bool = Field(False, description="Accepted for kairos-rs; not acted on.")
    fallback_providers: tuple[AiProviderConfig, ...] = Field(
        (), description="Replaces `ai.fallback_providers` for this route. Empty: `ai.fallback_providers`."
    )
    debug_header: Bool = Field(
        False,
        description="Add `X-Kairos-AI-Backend: <index or none>; outcome=<outcome>` to the response.",
    )


PROVIDER_STRATEGIES = ("content_analysis", "semantic")  # the strategies that call a provider
