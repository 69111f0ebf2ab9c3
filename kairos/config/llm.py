"""The `llm` section of a `"protocol": "llm"` route: the public models it serves, the provider
targets behind each, when to fall back, what a consumer may spend.

A public model name (what clients put in `"model"`) maps to targets tried in order (or by weight
for the first attempt), then to the targets of the models in its `fallbacks`. A target is a litellm
provider and model (`openai` + `gpt-4o-mini`, `anthropic` + `claude-3-5-haiku-latest`, any
OpenAI-compatible server through `api_base`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, Strict, field_validator, model_validator

from kairos.config.ai import litellm_model
from kairos.config.base import Bool, ConfigModel, Float, NonNegativeInt, PositiveInt, StatusCode, Str
from kairos.config.storage_uri import check_storage_uri

DEFAULT_FALLBACK_STATUSES = (408, 429, 500, 502, 503, 504)


class LlmTarget(ConfigModel):
    """One provider model that can answer for a public model."""

    ai_provider: Str | None = Field(
        None,
        description="Reuse a provider of the top-level `ai` block: `ai` (the block's own provider) or "
        "`ai.fallback_providers[N]`. Its `provider`, `model`, `api_key` and `api_base` are copied; the "
        "target's own keys (a different `model`, `timeout_ms`, `weight`, ...) override them.",
    )
    provider: Str = Field(
        "",
        description="litellm provider name (`openai`, `anthropic`, `azure`, `mistral`, `groq`, `ollama`, "
        "`hosted_vllm`, ...); any case. An OpenAI-compatible server is `openai` with `api_base`. Required "
        "unless `ai_provider` gives it.",
    )
    model: Str = Field(
        "",
        description="The provider's model name, e.g. `gpt-4o-mini`. Required unless `ai_provider` gives it.",
    )
    api_base: Str | None = Field(
        None, description="`http(s)://` base URL of the provider (an OpenAI-compatible server: its `/v1`)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="The provider's key; use `${NAME}`. Never shown in an answer, a log, a metric, an "
        "error or `/api/config`. Unset: the provider's usual environment variable (litellm's lookup).",
    )
    weight: PositiveInt = Field(
        1,
        description="Share of first attempts among the model's targets (the others stay in order after it).",
    )
    timeout_ms: PositiveInt = Field(
        60_000,
        description="Milliseconds the target has to answer (a stream: to send its first chunk); past it the "
        "next target is tried.",
    )
    max_retries: NonNegativeInt = Field(
        0,
        le=5,
        description="Retries of this target (after its `Retry-After`, when it sends one within the "
        "timeout) before the next target; only before the first byte reaches the client.",
    )
    transport: Literal["auto", "litellm"] = Field(
        "auto",
        description="How the target is called. `auto`: directly over HTTP when litellm's adapter for the "
        "provider and model is OpenAI's own, unchanged (`openai` with any `api_base`, except the o-series "
        "and gpt-5 models, which litellm rewrites; `llamafile`, `nscale`): the request relayed as the "
        "client sent it, the answer and stream events as the provider's bytes; through litellm's SDK for "
        "every other provider. `litellm`: always through litellm's SDK (its parameter mapping and "
        "dropping, its answer objects), at ~6 ms of CPU per call.",
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
        return api_base.rstrip("/") if api_base is not None else None

    @model_validator(mode="after")
    def _named(self) -> LlmTarget:
        if self.ai_provider is None:
            missing = [name for name in ("provider", "model") if not getattr(self, name)]
            if missing:
                raise ValueError(
                    f"{' and '.join(f'`{name}`' for name in missing)} required (or `ai_provider`)"
                )
        return self

    @property
    def label(self) -> str:
        """`provider/model`, what headers, metrics and analytics name it by (never the key)."""
        return litellm_model(self.provider, self.model)


class LlmModel(ConfigModel):
    """A public model: its targets, its fallbacks and, when litellm's price list does not know the
    targets (local models), its prices."""

    targets: tuple[LlmTarget, ...] = Field(min_length=1, description="Provider targets, in order.")
    fallbacks: tuple[Str, ...] = Field(
        (),
        description="Other public models whose targets are tried, in this order, after this model's own.",
    )
    input_cost_per_token: Float | None = Field(
        None, ge=0, description="USD per prompt token, overriding litellm's price list."
    )
    output_cost_per_token: Float | None = Field(
        None, ge=0, description="USD per completion token, overriding litellm's price list."
    )

    @model_validator(mode="before")
    @classmethod
    def _target_list(cls, data: Any) -> Any:
        """A bare list is the model's targets: `"gpt-4o": [{...}, {...}]`."""
        return {"targets": data} if isinstance(data, list) else data


class LlmLimits(ConfigModel):
    """Limits per consumer (the API key's consumer or the JWT subject) and public model, charged
    before the call with an estimate (prompt tokens + `max_tokens`) and corrected from the real
    usage after it, so a burst cannot overshoot by more than one request. Memory, or Redis shared by
    replicas when `KAIROS_REDIS_URL` is set."""

    tokens_per_minute: PositiveInt | None = Field(None, description="Prompt + completion tokens per minute.")
    requests_per_minute: PositiveInt | None = Field(None, description="Calls per minute.")
    budget_usd_per_day: Float | None = Field(None, gt=0, description="USD per UTC day.")
    budget_usd_per_month: Float | None = Field(None, gt=0, description="USD per UTC month.")


class LlmSemanticCache(ConfigModel):
    """How a semantic cache compares requests: the last user message is embedded by one of the route's
    models, and a cached answer is served when an earlier request of the same route, model and consumer
    (and the same earlier messages and parameters) came close enough."""

    embedding_model: Str = Field(
        min_length=1,
        description="A public model of this route (in `models`) that answers `embeddings` requests; it "
        "embeds the last user message of each chat request.",
    )
    threshold: Float = Field(
        0.95,
        gt=0,
        le=1,
        description="The cosine similarity (over 0, at most 1) from which a cached answer is served; 1: only "
        "the same text.",
    )
    max_candidates: PositiveInt = Field(
        1000,
        le=10_000,
        description="The newest entries compared per route, model and consumer (at most 10,000). Comparing "
        "costs CPU on every lookup: about 1 ms for 1,000 vectors of 64 dimensions, 30 ms of 1,536.",
    )


class LlmCacheConfig(ConfigModel):
    """A cache of complete answers: a request that comes again (exactly, or with `mode: "semantic"` a
    question close enough) is answered from it without calling a provider. Chat answers are cached
    whether they were streamed or not and can be replayed as a stream; completions and embeddings are
    cached as JSON answers. An entry is served only to the consumer that stored it, unless
    `shared_across_consumers`."""

    mode: Literal["exact", "semantic"] = Field(
        "exact",
        description="`exact`: the same request (parameters included; `stream`, `stream_options`, `user` and "
        "`metadata` aside) gets the same answer. `semantic`: also a chat request whose last user message "
        "is close to an earlier one's (see `semantic`).",
    )
    ttl_seconds: PositiveInt = Field(3600, description="Seconds an answer stays in the cache.")
    max_entries: PositiveInt = Field(
        10_000,
        description="Answers the in-memory store keeps (least recently used go first); a Redis store is "
        "bounded by `ttl_seconds` and Redis's `maxmemory`.",
    )
    storage_uri: Str | None = Field(
        "memory://",
        description="`memory://` (this process), or Redis (`redis://`, `rediss://`, `unix://`, "
        "`redis+sentinel://`, `redis+cluster://`) to share the cache between replicas. `null`: "
        "`KAIROS_REDIS_URL` when set, else memory.",
    )
    shared_across_consumers: Bool = Field(
        False,
        description="Serve an answer to every consumer of the route. `false`: only to the consumer (API key "
        "consumer or JWT subject) whose request stored it.",
    )
    semantic: LlmSemanticCache | None = Field(
        None, description='How requests are compared; required with `mode: "semantic"`.'
    )

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, uri: str | None) -> str | None:
        return None if uri is None else check_storage_uri(uri, with_limits=False)

    @model_validator(mode="after")
    def _semantic_settings(self) -> LlmCacheConfig:
        if self.mode == "semantic" and self.semantic is None:
            raise ValueError('semantic: required with mode "semantic" (its embedding_model at least)')
        return self


def _pattern(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


class LlmPromptGuard(ConfigModel):
    """What is checked and changed in a request before anything leaves for a provider: secrets and
    personal data redacted (the same rules as AI routing's context: e-mail addresses, card numbers,
    tokens, keys), and patterns that refuse the request outright."""

    redact: Bool = Field(
        True,
        description="Replace e-mail addresses, card numbers, bearer tokens, API keys and secret-looking "
        "strings in the messages (or prompt, or input) with `[REDACTED:kind]` before the call.",
    )
    deny_patterns: tuple[Annotated[str, Strict(), AfterValidator(_pattern)], ...] = Field(
        (),
        description="Regular expressions (Python syntax, searched case-insensitively) that refuse a request "
        "whose text matches: 400 `invalid_request_error`, `code: content_denied`. Checked before redaction.",
    )


class LlmConfig(ConfigModel):
    """An OpenAI-compatible API on the route's `external_path`: `POST .../chat/completions`,
    `.../completions`, `.../embeddings`, `GET .../models`."""

    models: dict[Str, LlmModel] = Field(
        min_length=1,
        description='Public model name → its targets (a list, or `{"targets": [...], "fallbacks": '
        "[...], ...}`).",
    )
    on_status_codes: tuple[StatusCode, ...] = Field(
        DEFAULT_FALLBACK_STATUSES,
        description="Provider answers that move to the next target (timeouts and connection errors always "
        "do); any other error is the client's answer (a 400 for a bad request is not retried elsewhere).",
    )
    max_tokens: PositiveInt | None = Field(
        None,
        description="The largest `max_tokens` a request may ask for (400 above it); also the estimate "
        "when a request names none.",
    )
    default_max_tokens: PositiveInt = Field(
        1024,
        description="The completion tokens reserved against `limits` for a request that names no "
        "`max_tokens` (and no route `max_tokens`).",
    )
    limits: LlmLimits | None = Field(None, description="Token, request and spend limits. Unset: none.")
    prompt_guard: LlmPromptGuard | None = Field(
        None, description="Redaction and deny patterns applied before a request leaves. Unset: none."
    )
    cache: LlmCacheConfig | None = Field(
        None, description="A cache of answers, exact or semantic. Unset: every request reaches a provider."
    )

    @model_validator(mode="after")
    def _known_fallbacks(self) -> LlmConfig:
        for name, model in self.models.items():
            for fallback in model.fallbacks:
                if fallback not in self.models:
                    raise ValueError(f"models.{name}.fallbacks: {fallback!r} is not a model of this route")
                if fallback == name:
                    raise ValueError(f"models.{name}.fallbacks: a model cannot fall back to itself")
        semantic = self.cache.semantic if self.cache is not None else None
        if semantic is not None and semantic.embedding_model not in self.models:
            known = ", ".join(sorted(self.models))
            raise ValueError(
                f"cache.semantic.embedding_model: {semantic.embedding_model!r} is not a model of this route "
                f"(models: {known})"
            )
        return self


AI_PROVIDER_KEYS = ("provider", "model", "api_key", "api_base")
_AI_REFERENCE = re.compile(r"ai(?:\.fallback_providers\[(\d+)\])?")


def reuse_ai_providers(document: dict[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The document with every LLM target that says ``"ai_provider": "ai"`` (or
    ``"ai.fallback_providers[N]"``) completed from that provider of the top-level ``ai`` block, so one
    key and base URL serve AI routing and the LLM routes. Runs on the raw document (before the
    models: the loader validates each route alone), so the written document keeps the reference; a
    reference that cannot be resolved is appended to ``problems`` as (path, message) and left as is."""
    routers = document.get("routers")
    if not isinstance(routers, list):
        return document
    ai = document.get("ai")
    changed: list[Any] = []
    for index, route in enumerate(routers):
        llm = route.get("llm") if isinstance(route, dict) else None
        models = llm.get("models") if isinstance(llm, dict) else None
        if not isinstance(llm, dict) or not isinstance(models, dict):
            changed.append(route)
            continue
        resolved: dict[str, Any] = {}
        for name, entry in models.items():
            listed = entry.get("targets") if isinstance(entry, dict) else entry
            if not isinstance(listed, list):
                resolved[name] = entry
                continue
            path = f"routers[{index}].llm.models.{name}" + (".targets" if isinstance(entry, dict) else "")
            done = [_completed(target, ai, f"{path}[{n}]", problems) for n, target in enumerate(listed)]
            resolved[name] = {**entry, "targets": done} if isinstance(entry, dict) else done
        changed.append({**route, "llm": {**llm, "models": resolved}})
    return {**document, "routers": changed}


def _completed(target: Any, ai: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if not isinstance(target, dict) or target.get("ai_provider") is None:
        return target
    reference = target["ai_provider"]
    found = _AI_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
    where = f"{path}.ai_provider"
    if found is None:
        problems.append((where, f"must be `ai` or `ai.fallback_providers[N]` (got {reference!r})"))
        return target
    if not isinstance(ai, dict):
        problems.append((where, f"there is no top-level `ai` block to take {reference!r} from"))
        return target
    source: Any = ai
    if found.group(1) is not None:
        fallbacks = ai.get("fallback_providers") or []
        number = int(found.group(1))
        if not isinstance(fallbacks, list) or number >= len(fallbacks):
            problems.append((where, f"`ai.fallback_providers` has no entry {number}"))
            return target
        source = fallbacks[number]
    if not isinstance(source, dict):
        return target
    return {**{key: source[key] for key in AI_PROVIDER_KEYS if key in source}, **target}
