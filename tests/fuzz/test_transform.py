"""Property 6: transformation rules compile or are a config error; compiled rules never raise.

Why: the rules are config, but what they are applied to is the client's request and the backend's
response. A rule must never turn a request into a 500, nor write CR/LF/NUL into a header value
(request splitting upstream, a broken response downstream). Rules run standalone and inside the
gateway (matched route, parameters, verified identity), since the variables differ.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from kairos.config.transform import RequestTransformation
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import (
    asgi_header_lists,
    header_lists,
    json_bodies,
    json_scalars,
    nasty_text,
    raw_paths,
    transformations,
)
from tests.fuzz.targets import Headers, TransformInput, check_transform

queries = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"", b"sort=-name&debug=1", b"user=%ZZ&&=x", b"a=%ED%A0%80", b"source=x&source=y"]),
)
hostile_claims = st.dictionaries(
    st.sampled_from(["sub", "roles", "x"]), st.one_of(json_scalars, nasty_text, st.just("\ud800")), max_size=3
)

# Generated patterns such as "[[" make re warn about a future syntax change: expected, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")


@fuzz_settings(scale=3)
@given(
    transformations(),
    asgi_header_lists,
    header_lists,
    raw_paths(),
    queries,
    st.sampled_from(["GET", "POST", "HEAD"]),
    json_bodies,
    st.sampled_from([200, 204, 304, 401, 404, 418, 500]),
    hostile_claims,
)
def test_rules_compile_or_fail_and_never_raise(
    rules: dict[str, Any],
    headers: Headers,
    response_headers: Headers,
    raw_path: bytes,
    query: bytes,
    method: str,
    body: bytes,
    status: int,
    claims: dict[str, Any],
) -> None:
    content_type = [(b"content-type", b"application/json")]
    check_transform(
        TransformInput(
            rules,
            [*content_type, *headers],
            raw_path if raw_path.startswith(b"/") else b"/" + raw_path,
            query,
            method,
            body,
            status,
            [*content_type, *response_headers],
            body,
            claims,
        )
    )


# Valid rules of every action, variable and condition kind: applied to hostile values, they must
# compile (so the property above cannot pass by rejecting everything) and apply cleanly.
EVERY_RULE: dict[str, Any] = {
    "request_transformation": {
        "headers": [
            {"action": "add", "name": "X-Client-IP", "value": "${client_ip}"},
            {"action": "set", "name": "X-User", "value": "${jwt.sub} ${jwt.roles}"},
            {"action": "remove", "name": "X-Internal-Debug"},
            {
                "action": "replace",
                "name": "Authorization",
                "pattern": "^Token (.+)$",
                "replacement": "Bearer $1",
            },
            {"action": "replace", "name": "X-Custom", "pattern": "(?P<v>.)", "replacement": "[${v}]"},
            {
                "action": "set",
                "name": "X-Legacy",
                "value": "1",
                "condition": {"header": "user-agent", "matches": "^Old"},
            },
            {
                "action": "set",
                "name": "X-Q",
                "value": "${path.id}",
                "condition": {"query": "debug", "present": True},
            },
        ],
        "path": {"pattern": "^/v1/users/(.*)$", "replacement": "/v2/u/$1"},
        "query_params": [
            {"action": "add", "name": "source", "value": "gateway ${request_id}"},
            {"action": "set", "name": "user", "value": "${jwt.sub}"},
            {"action": "remove", "name": "debug"},
            {"action": "replace", "name": "sort", "pattern": "^-(\\w+)$", "replacement": "${1}:desc"},
        ],
        "body": {
            "remove": ["password"],
            "rename": {"name": "full_name"},
            "set": {"meta.id": "${request_id}"},
        },
    },
    "response_transformation": {
        "headers": [
            {"action": "set", "name": "X-Served-By", "value": "kairos ${route}"},
            {"action": "remove", "name": "Server"},
            {"action": "replace", "name": "Set-Cookie", "pattern": "Domain=[^;]*", "replacement": "Domain=x"},
            {
                "action": "set",
                "name": "Cache-Control",
                "value": "no-store",
                "condition": {"status": [401, 403]},
            },
        ],
        "status_code_mappings": [{"from": 404, "to": 200, "condition": {"response_header": "x-legacy"}}],
        "body": {"add": {"meta.source": "gateway"}},
    },
}


@fuzz_settings(scale=3)
@given(asgi_header_lists, header_lists, queries, json_bodies, hostile_claims)
@example([(b"content-length", b"\xb2")], [], b"", b"{}", {})
@example([(b"content-length", b"0" * 5000)], [(b"content-length", b"0" * 5000)], b"", b"{}", {})
@example([], [], b"", b'{"x": "\\ud800", "name": 1}', {})
@example([], [], b"sort=-a&user=1", b"{}", {"sub": "\ud800", "roles": ["\udfff"]})
def test_valid_rules_apply_to_any_values(
    headers: Headers, response_headers: Headers, query: bytes, body: bytes, claims: dict[str, Any]
) -> None:
    content_type = [(b"content-type", b"application/json"), (b"authorization", b"Token abc")]
    case = TransformInput(
        EVERY_RULE,
        [*content_type, *headers, (b"x-custom", b"ab\tc")],
        b"/users/42",
        query,
        "POST",
        body,
        404,
        [*content_type, *response_headers, (b"set-cookie", b"a=1; Domain=evil")],
        body,
        claims,
    )
    assert check_transform(case)


@pytest.mark.parametrize("replacement", ["\r\nInjected: 1", "a\nb", "x\x00"])
def test_header_replacement_with_control_characters_is_a_config_error(replacement: str) -> None:
    """Regression (fixed in kairos/config/transform.py): a `replacement` with CR/LF was accepted and
    wrote the line break into the header value (raw engine: 502; response side: a broken head)."""
    rule = {"action": "replace", "name": "X-A", "pattern": "a", "replacement": replacement}
    with pytest.raises(ValidationError):
        RequestTransformation.model_validate({"headers": [rule]})


def test_path_rewrite_to_characters_beyond_latin1_standalone() -> None:
    """Regression (fixed in kairos/middleware/transform.py): standalone, a rewrite to ``/€`` raised
    UnicodeEncodeError while encoding raw_path."""
    rules = {"request_transformation": {"path": {"pattern": "^/users", "replacement": "/€"}}}
    assert check_transform(TransformInput(rules, [], b"/users/42"))
