"""Secret redaction of what the admin API shows, and restoring secrets sent back as "***"."""

from __future__ import annotations

import json
from typing import Any

from kairos.admin.redact import MASK, redact, restore

SECRETS = (
    "jwt-secret-value-0123456789abcdef0123",
    "consumer-key-1",
    "consumer-key-2",
    "sk-openai-key",
    "redis-password",
    "bearer-upstream-token",
    "private-key-pem",
    "cookie-value",
)

DOCUMENT: dict[str, Any] = {
    "version": 1,
    "jwt": {"secret": SECRETS[0], "issuer": "kairos", "public_key": "-----BEGIN PUBLIC KEY-----"},
    "api_keys": [{"name": "ci", "keys": [SECRETS[1], SECRETS[2]]}],
    "api_key_header": "X-API-Key",
    "ai": {"provider": "openai", "model": "gpt-4o", "api_key": SECRETS[3]},
    "rate_limit": {"storage_uri": f"redis://:{SECRETS[4]}@127.0.0.1:6379/0", "strategy": "PerIP"},
    "vendor": {"client_private_key": SECRETS[6], "session_token": None},
    "routers": [
        {
            "external_path": "/x",
            "request_transformation": {
                "headers": [
                    {"action": "set", "name": "Authorization", "value": f"Bearer {SECRETS[5]}"},
                    {"action": "set", "name": "Cookie", "value": SECRETS[7]},
                    {"action": "set", "name": "X-Team", "value": "blue"},
                ]
            },
        }
    ],
}


def test_no_secret_survives_and_the_rest_stays_readable() -> None:
    shown = redact(DOCUMENT)
    text = json.dumps(shown)
    for secret in SECRETS:
        assert secret not in text, secret
    assert shown["jwt"] == {"secret": MASK, "issuer": "kairos", "public_key": "-----BEGIN PUBLIC KEY-----"}
    assert shown["api_keys"] == [{"name": "ci", "keys": [MASK, MASK]}]  # count kept, names kept
    assert shown["api_key_header"] == "X-API-Key"
    assert shown["ai"]["model"] == "gpt-4o"
    assert shown["rate_limit"]["storage_uri"] == "redis://***@127.0.0.1:6379/0"
    assert shown["vendor"] == {"client_private_key": MASK, "session_token": None}
    rules = shown["routers"][0]["request_transformation"]["headers"]
    assert [rule["value"] for rule in rules] == [MASK, MASK, "blue"]
    assert DOCUMENT["jwt"]["secret"] == SECRETS[0]  # the input is not changed


def test_a_redacted_document_sent_back_gets_its_secrets_back() -> None:
    sent = redact(DOCUMENT)
    sent["jwt"]["issuer"] = "changed"
    restored = restore(sent, DOCUMENT)
    assert restored["jwt"] == {**DOCUMENT["jwt"], "issuer": "changed"}
    assert restored["api_keys"] == DOCUMENT["api_keys"]
    assert restored["rate_limit"]["storage_uri"] == DOCUMENT["rate_limit"]["storage_uri"]
    assert restored["routers"] == DOCUMENT["routers"]


def test_a_new_secret_value_is_taken_as_sent() -> None:
    sent = redact(DOCUMENT)
    sent["jwt"]["secret"] = "a-brand-new-secret-of-enough-length-000"
    sent["routers"][0]["request_transformation"]["headers"][0]["value"] = "Bearer new"
    restored = restore(sent, DOCUMENT)
    assert restored["jwt"]["secret"] == "a-brand-new-secret-of-enough-length-000"
    assert restored["routers"][0]["request_transformation"]["headers"][0]["value"] == "Bearer new"
    # "***" where nothing was running stays "***" (and will fail validation where it matters).
    assert restore({"secret": MASK}, {}) == {"secret": MASK}
