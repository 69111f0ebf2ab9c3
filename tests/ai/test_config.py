"""The `ai` section and `ai_policy`: defaults, kairos-rs spellings, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config import ConfigError, load_data


def document(ai: dict[str, Any] | None, policy: dict[str, Any], **backend: Any) -> dict[str, Any]:
    route = {
        "external_path": "/x",
        "internal_path": "/x",
        "methods": ["POST"],
        "backends": [
            {"host": "http://127.0.0.1", "port": 9001, **backend},
            {"host": "http://127.0.0.1", "port": 9002},
        ],
        "ai_policy": policy,
    }
    data: dict[str, Any] = {"version": 1, "routers": [route]}
    if ai is not None:
        data["ai"] = ai
    return data


OPENAI = {"provider": "OpenAI", "model": "gpt-4o-mini", "api_key": "sk-abc"}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_data(data)
    return [str(problem) for problem in caught.value.problems]


def test_kairos_rs_policy_with_defaults() -> None:
    policy = {"enabled": True, "strategy": {"content_analysis": {"model": "gpt-4o"}}, "provider": None,
              "fallback_backend_index": 1}  # fmt: skip
    config = load_data(document(OPENAI, policy)).config
    assert config.ai is not None
    assert config.ai.provider == "openai"  # lower-cased, as kairos-rs does
    assert config.ai.timeout_ms == 1500 and config.ai.max_concurrency == 64
    assert config.ai.circuit_breaker.failure_threshold == 5
    route_policy = config.routers[0].ai_policy
    assert route_policy is not None
    assert route_policy.strategy.kind == "content_analysis" and route_policy.strategy.model == "gpt-4o"
    assert route_policy.body_preview_chars == 500 and route_policy.cache_ttl_secs == 60
    assert not route_policy.shadow and not route_policy.debug_header
    assert "sk-abc" not in repr(config.ai)  # a SecretStr


def test_anomaly_detection_is_refused_clearly() -> None:
    found = problems(document(OPENAI, {"enabled": True, "strategy": "anomaly_detection"}))
    assert any(
        "routers[0].ai_policy.strategy" in p and "'anomaly_detection' is not implemented" in p for p in found
    )


def test_provider_strategy_without_ai_section_is_a_warning_as_kairos_rs_accepts_it() -> None:
    loaded = load_data(document(None, {"enabled": True, "strategy": {"content_analysis": {}}}))
    assert any("no top-level `ai` section" in str(w) for w in loaded.warnings)


def test_latency_prediction_needs_no_provider() -> None:
    config = load_data(document(None, {"enabled": True, "strategy": "latency_prediction"})).config
    assert config.routers[0].ai_policy is not None


def test_semantic_needs_descriptions() -> None:
    found = problems(document(OPENAI, {"enabled": True, "strategy": {"semantic": {"model": "emb"}}}))
    assert any("routers[0].backends[1]" in p and "`description` or `examples`" in p for p in found)
    ok = document(OPENAI, {"enabled": True, "strategy": "semantic"}, description="billing")
    ok["routers"][0]["backends"][1]["examples"] = ["search products"]
    assert load_data(ok).config.routers[0].upstreams[0].description == "billing"


def test_fallback_index_must_exist() -> None:
    found = problems(
        document(OPENAI, {"enabled": True, "strategy": "latency_prediction", "fallback_backend_index": 2})
    )
    assert any("fallback_backend_index" in p and "less than the number of backends (2)" in p for p in found)


def test_bad_values_name_their_field() -> None:
    found = problems(document({**OPENAI, "timeout_ms": 0, "api_base": "localhost:11434"}, {"enabled": True,
                              "strategy": "latency_prediction", "body_preview_chars": -1}))  # fmt: skip
    assert any(p.startswith("ai.timeout_ms") for p in found)
    assert any(p.startswith("ai.api_base") and "http://" in p for p in found)
    assert any(p.startswith("routers[0].ai_policy.body_preview_chars") for p in found)
