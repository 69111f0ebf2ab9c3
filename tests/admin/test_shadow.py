"""Which user route templates the admin API hides: its own sections under the prefix (routes,
config, metrics, …) and two stream paths; the rest of the prefix stays free for user routes."""

from __future__ import annotations

import pytest

from kairos.admin.shadow import admin_shadow_warning


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/api", None),  # the prefix itself is not an admin path
        ("/api/users/{id}", None),  # kairos-rs compatible: /api/... stays the user's
        ("/api/config", "is the admin API's /api/config"),
        ("/api/routes/{id}", "is the admin API's /api/routes"),
        ("/api/{section}/status", "can match the admin API's"),
        ("/{tenant}/routes", "can match the admin API's /api/routes"),
        ("/{*rest}", "can match the admin API's"),
        ("/v{n}", None),  # a pattern that cannot match "api"
        ("/apis/x", None),
        ("/", None),
        ("/ws/metrics", "admin stream /ws/metrics"),
        ("/ws/{name}", "admin stream"),
        ("/ws/metrics/more", None),
    ],
)
def test_shadowed_templates(template: str, expected: str | None) -> None:
    warning = admin_shadow_warning(template, "/api")
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and expected in warning


def test_the_prefix_is_what_counts() -> None:
    assert admin_shadow_warning("/api/config", "/admin") is None
    assert admin_shadow_warning("/admin/config/reload", "/admin") is not None
    assert admin_shadow_warning("/admin/x", "/admin") is None
    assert admin_shadow_warning("/ops/admin/{x}", "/ops/admin") is not None
    assert admin_shadow_warning("not-a-path", "/api") is None
