"""A config given as an object has no document as written: the admin API rebuilds one that the
loader accepts again (secrets included, so a route edit does not lose the AI key)."""

from __future__ import annotations

from kairos.admin.routes_api import dump_config
from kairos.config import load_data


def test_a_dumped_config_loads_back_the_same() -> None:
    original = load_data(
        {
            "version": 2,
            "jwt_secret": "a-secret-that-is-long-enough-for-hs256-00",
            "ai": {"provider": "openai", "model": "gpt-4o", "api_key": "sk-kept"},
            "rate_limit": {"algorithm": "token_bucket", "requests_per_second": 5, "burst_size": 2},
            "metrics": {"endpoint": "/m"},
            "routers": [
                {
                    "external_path": "/a/{id}",
                    "internal_path": "/b/{id}",
                    "methods": ["get"],
                    "host": "http://x",
                },
                {
                    "external_path": "/ai",
                    "internal_path": "/ai",
                    "methods": ["POST"],
                    "backends": [{"host": "http://y", "port": 81}],
                    "retry_config": {"max_retries": 1},
                    "ai_policy": {"enabled": True, "strategy": {"content_analysis": {"model": "m"}}},
                },
            ],
        }
    ).config
    document = dump_config(original)
    assert document["ai"]["api_key"] == "sk-kept"
    again = load_data(document).config
    assert again == original
