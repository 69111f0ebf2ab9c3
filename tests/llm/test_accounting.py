"""What an LLM call is counted and priced at (kairos/llm/service.py): litellm's price list read once per
target and its token counter with its per-model setup kept must give litellm's own figures, and a model
whose tokenizer litellm would download is counted with the bundled encoding instead.

Imports litellm (~5 s, once for the module).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kairos.llm.service import COUNTER, Price, answer_text

MESSAGES: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "How much does a gateway add to a chat completion"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "parts"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "done"},
    ],
]


@pytest.fixture(scope="module")
def litellm() -> Any:
    from kairos.ai.provider import load_litellm

    return load_litellm()


@pytest.mark.parametrize(
    "label", ["openai/gpt-4o-mini", "openai/echo-local", "anthropic/claude-3-5-haiku-latest"]
)
def test_the_kept_counter_counts_what_litellms_counter_counts(label: str, litellm: Any) -> None:
    for messages in MESSAGES:
        assert COUNTER.messages(litellm, label, messages) == litellm.token_counter(
            model=label, messages=messages
        )
    text = "a prompt for a text completion"
    assert COUNTER.text(litellm, label, text) == litellm.token_counter(model=label, text=text)


def test_a_model_whose_tokenizer_litellm_would_download_is_counted_offline(litellm: Any) -> None:
    label = "groq/llama-3.1-8b-instant"
    chosen = COUNTER.tokenizer(label)
    assert chosen is not None and chosen["type"] == "openai_tokenizer"  # litellm's bundled tiktoken
    assert COUNTER.tokenizer("openai/gpt-4o-mini") is None  # litellm's own choice, already local
    started = time.monotonic()
    count = COUNTER.messages(litellm, label, MESSAGES[0])
    assert 5 < count < 40 and time.monotonic() - started < 3  # no download and its retries (~23 s)


def test_a_price_is_litellms_read_once(litellm: Any) -> None:
    price = Price.of("openai/gpt-4o-mini")
    assert price is not None and not price.tiered
    expected = sum(
        litellm.cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=1234, completion_tokens=56)
    )
    assert price.cost(1234, 56) == pytest.approx(expected, rel=1e-12)
    assert Price.of("openai/a-local-model-litellm-does-not-know") is None


def test_the_text_of_an_answer_for_an_estimate() -> None:
    chat = {"choices": [{"message": {"content": "one"}}, {"message": {"content": " two"}}]}
    assert answer_text(chat) == "one two"
    assert answer_text({"choices": [{"text": "completed"}]}) == "completed"
    assert answer_text({"data": [{"embedding": [0.1]}]}) == ""
