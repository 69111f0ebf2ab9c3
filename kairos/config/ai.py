"""`ai` (provider settings) and per-route `ai_policy` (kairos-rs §1.4, §1.10, §11).

Kairos's extensions over kairos-rs (all optional): ``ai.api_base`` (any OpenAI-compatible server),
``ai.timeout_ms`` (a decision that takes longer falls back), ``ai.max_concurrency`` (provider calls in
flight; beyond it requests fall back at once instead of queueing), ``ai.fallback_providers``,
``ai.circuit_breaker`` (the provider's own breaker); per route ``cache_ttl_secs``,
``body_preview_chars``, ``shadow`` and ``debug_header``. See kairos/ai/ for what they do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, field_validator, model_validator

from kairos.config.base import Bool, ConfigModel, NonNegativeInt, PositiveInt, Str
from kairos.config.policies import CircuitBreakerConfig
from kairos.config.problems import Problem, format_path

if TYPE_CHECKING:
    from kairos.config.model import RouteConfig

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


class AiProviderConfig(ConfigModel):
    provider: Str = Field(min_length=1)
    model: Str = Field(min_length=1)
    api_key: SecretStr | None = None
    api_base: Str | None = None

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
    timeout_ms: PositiveInt = 1500
    # Provider calls in flight at once (cache hits are free); beyond it a request falls back at once.
    max_concurrency: PositiveInt = 64
    fallback_providers: tuple[AiProviderConfig, ...] = ()
    # The provider's own breaker (consecutive failures / timeouts open it; its calls are skipped).
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)


class AiStrategy(ConfigModel):
    """Normalised form of kairos-rs's externally tagged enum: ``"latency_prediction"`` or
    ``{"content_analysis": {"model": "gpt-4o"}}`` both become ``kind`` plus options."""

    kind: Str
    model: Str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

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
    enabled: Bool
    strategy: AiStrategy
    provider: Str | None = None
    fallback_backend_index: NonNegativeInt | None = None
    cache_ttl_secs: NonNegativeInt = 60
    body_preview_chars: NonNegativeInt = 500
    shadow: Bool = False
    streaming: Bool = False
    fallback_providers: tuple[AiProviderConfig, ...] = ()
    debug_header: Bool = False  # answer with X-Kairos-AI-Backend: "<index|none>; outcome=<outcome>"


PROVIDER_STRATEGIES = ("content_analysis", "semantic")  # the strategies that call a provider


def check_ai_routes(
    ai: AiConfig | None, ai_given: bool, routes: list[tuple[int, RouteConfig]]
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) across ``ai`` and the routes' ``ai_policy``.

    A strategy that calls a provider without an ``ai`` section is a warning, not an error: kairos-rs
    accepts such files (and silently routes normally); Kairos routes normally too, but says so.
    ``semantic`` (a Kairos strategy) needs something to compare requests with on every backend."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for index, route in routes:
        policy = route.ai_policy
        if policy is None or not policy.enabled:
            continue
        kind = policy.strategy.kind
        if kind in PROVIDER_STRATEGIES and ai is None and not ai_given:
            warnings.append(
                Problem(
                    format_path(("routers", index, "ai_policy", "strategy")),
                    f"{kind!r} calls an AI provider but the config has no top-level `ai` section: "
                    "the route is balanced without AI routing",
                )
            )
        if kind == "semantic":
            for position, backend in enumerate(route.upstreams):
                if not backend.description and not backend.examples:
                    errors.append(
                        Problem(
                            format_path(("routers", index, "backends", position)),
                            "needs a `description` or `examples` for the 'semantic' AI strategy",
                        )
                    )
    return errors, warnings
