"""LLM targets that reuse a provider of the top-level `ai` block (`"ai_provider"`)."""

from __future__ import annotations

from typing import Any

from kairos.config.llm import LlmTarget
from tests.config.builders import errors, load, warnings

AI = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "api_key": "${OPENAI_KEY}",
    "api_base": "http://127.0.0.1:9/v1",
    "fallback_providers": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest", "api_key": "ak"}],
}
LLM_ROUTE = {"protocol": "llm", "external_path": "/v1", "internal_path": "/", "methods": ["GET", "POST"]}


def document(models: dict[str, Any], ai: dict[str, Any] | None = AI) -> dict[str, Any]:
    raw: dict[str, Any] = {"version": 1, "routers": [{**LLM_ROUTE, "llm": {"models": models}}]}
    if ai is not None:
        raw["ai"] = ai
    return raw


def targets(raw: dict[str, Any], model: str) -> tuple[LlmTarget, ...]:
    route = load(raw, {"OPENAI_KEY": "sk-test"}).config.routers[0]
    assert route.llm is not None
    return route.llm.models[model].targets


def test_a_target_takes_the_ai_blocks_provider_key_and_base() -> None:
    raw = document(
        {"fast": [{"ai_provider": "ai", "weight": 2}], "smart": {"targets": [{"ai_provider": "ai"}]}}
    )
    (fast,) = targets(raw, "fast")
    assert (fast.provider, fast.model, fast.api_base, fast.weight) == (
        "openai",
        "gpt-4o-mini",
        AI["api_base"],
        2,
    )
    assert fast.api_key is not None and fast.api_key.get_secret_value() == "sk-test"  # ${ENV} resolved
    assert targets(raw, "smart")[0].label == "openai/gpt-4o-mini"
    assert not warnings(raw, {"OPENAI_KEY": "sk-test"})  # ai_provider is a key of the target, not unknown


def test_a_fallback_provider_and_an_overridden_model() -> None:
    raw = document(
        {"m": [{"ai_provider": "ai.fallback_providers[0]"}, {"ai_provider": "ai", "model": "gpt-4o"}]}
    )
    first, second = targets(raw, "m")
    assert (first.provider, first.model) == ("anthropic", "claude-3-5-haiku-latest")
    assert (second.provider, second.model, second.api_base) == ("openai", "gpt-4o", AI["api_base"])


def test_bad_references_name_the_target() -> None:
    env = {"OPENAI_KEY": "x"}
    assert any(
        "routers[0].llm.models.m[0].ai_provider: there is no top-level `ai` block" in line
        for line in errors(document({"m": [{"ai_provider": "ai"}]}, ai=None), env)
    )
    assert any(
        "routers[0].llm.models.m.targets[1].ai_provider: `ai.fallback_providers` has no entry 3" in line
        for line in errors(
            document(
                {"m": {"targets": [{"ai_provider": "ai"}, {"ai_provider": "ai.fallback_providers[3]"}]}}
            ),
            env,
        )
    )
    assert any(
        "ai_provider: must be `ai` or `ai.fallback_providers[N]`" in line
        for line in errors(document({"m": [{"ai_provider": "providers.openai"}]}), env)
    )


def test_without_ai_provider_provider_and_model_are_required() -> None:
    found = errors(document({"m": [{"api_base": "http://127.0.0.1:9/v1"}]}, ai=None))
    assert any(
        "routers[0].llm.models.m.targets[0]" in line and "`provider` and `model` required" in line
        for line in found
    )
