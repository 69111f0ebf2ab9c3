"""Transformation rules at load time: every problem with its JSON path, like `kairos validate`."""

from __future__ import annotations

from typing import Any

from tests.config.builders import config, errors, load, route, warnings

WHERE = "routers[0].request_transformation"
VARIABLES = "${client_ip}, ${request_id}, ${route}, ${path.<param>}, ${jwt.<claim>}, ${env.<NAME>}"


def transformed(request: Any = None, response: Any = None) -> dict[str, Any]:
    extra = {"request_transformation": request, "response_transformation": response}
    return config(route("/api/{id}", "/items/{id}", **{k: v for k, v in extra.items() if v is not None}))


def test_regexes_replacements_and_conditions_are_checked() -> None:
    raw = transformed(
        {
            "headers": [
                {"action": "replace", "name": "X-A", "pattern": "(a)", "replacement": "$2"},
                {"action": "set", "name": "X-B", "value": "1", "condition": {"header": "x", "equal": "1"}},
                {"action": "set", "name": "Host", "value": "x"},
                {"action": "add", "name": "X-S", "value": "1", "condition": {"status": 404}},
                {"action": "set", "name": "X-C", "value": "1", "condition": {"query": "a", "matches": "("}},
                {"action": "set", "name": "X-D", "value": "a\r\nb"},
            ],
            "path": {"pattern": "^/items/(.*)$", "replacement": "//evil.example/$1"},
            "query_params": [
                {"action": "replace", "name": "q", "pattern": "(?P<w>x)", "replacement": "${w}${v}"}
            ],
            "body": {"add": {"a..b": 1}},
        },
        {"headers": [{"action": "set", "name": "X-E", "value": "1", "condition": {"status": [404, 1000]}}]},
    )
    assert errors(raw) == [
        f"{WHERE}.headers[0]: `replacement` refers to group $2 but the pattern has 1 group(s)",
        f"{WHERE}.headers[1].condition: unknown key(s) 'equal'; a condition takes one of `header`, `query`, "
        "`path`, `status`, `response_header` and at most one of `equals`, `matches`, `present`",
        f"{WHERE}.headers[2].name: is set by the gateway itself; a request rule cannot change it "
        '(got "Host")',
        f"{WHERE}.headers[3].condition: `status` is only for response rules",
        f"{WHERE}.headers[4].condition.matches: invalid regular expression: "
        'missing ), unterminated subpattern at position 0 (got "(")',
        f"{WHERE}.headers[5].value: a header value must not contain control characters (CR, LF, ...) "
        '(got "a\\r\\nb")',
        f"{WHERE}.path: replacement must build a plain absolute path: no `//`, scheme, `\\`, `?`, `#`, "
        "`.`/`..` segments or whitespace",
        f"{WHERE}.query_params[0]: `replacement` refers to group ${{v}}, which the pattern does not define",
        f"{WHERE}.body: add: 'a..b' is not a dotted field path (like `user.id`)",
        "routers[0].response_transformation.headers[0].condition.status: "
        "must be a status code (100-999) or a non-empty array of them (got [404, 1000])",
    ]


def test_unknown_variables_are_errors() -> None:
    raw = transformed(
        {
            "headers": [
                {"action": "set", "name": "X-A", "value": "${user}"},
                {"action": "set", "name": "X-B", "value": "${env.TRANSFORM_UNSET}"},
            ],
            "body": {"set": {"who": "${jwt}"}},
        }
    )
    assert errors(raw) == [
        f"{WHERE}.headers[1].value: environment variable TRANSFORM_UNSET is not set",
        f'{WHERE}.headers[0].value: unknown variable ${{user}}; use one of {VARIABLES} (got "${{user}}")',
        f"{WHERE}.body: set['who']: unknown variable ${{jwt}}; use one of {VARIABLES}",
    ]
    raw = transformed({"headers": [{"action": "set", "name": "X-A", "value": "${path.nope}"}]})
    assert errors(raw) == [
        f"{WHERE}.headers[0].value: uses ${{path.nope}} but external_path defines no such parameter "
        "(it defines: id)"
    ]


def test_env_variables_are_read_at_load_and_escapes_stay_literal() -> None:
    raw = transformed(
        {"headers": [{"action": "set", "name": "X-A", "value": "${env.Mixed_Case}:$${env.X}:${path.id}"}]}
    )
    transformation = load(raw, {"Mixed_Case": "v"}).config.routers[0].request_transformation
    assert transformation is not None and transformation.headers[0].template is not None
    assert (
        transformation.headers[0].template.render(lambda variable: f"<{variable.arg}>") == "v:${env.X}:<id>"
    )
    assert transformation.headers[0].compiled.constant is None


def test_free_text_status_conditions_are_a_warning() -> None:
    raw = transformed(response={"status_code_mappings": [{"from": 404, "to": 200, "condition": "if legacy"}]})
    assert warnings(raw) == [
        "routers[0].response_transformation.status_code_mappings[0].condition: free text is not evaluated "
        "(kairos-rs ignored it too): the mapping applies to every response; write an object such as "
        '{"header": "x-legacy", "equals": "1"}'
    ]


def test_replacements_read_groups_as_the_rust_regex_crate_does() -> None:
    """``$1``, ``${1}``, ``${name}``, ``$$``; literal ``%`` and ``\\`` kept as text; an unmatched group
    inserts nothing (each replacement shape: no group, one group, several)."""
    import re

    from kairos.config.transform import compile_replacement

    cases = [
        ("^(.*)$", "$1 via-kairos", "wrk", "wrk via-kairos"),
        ("^/v1/(.*)$", "/v2/$1%s%%", "/v1/a%db", "/v2/a%db%s%%"),
        ("(a)|(b)", "x${2}y", "ab", "xyxby"),
        ("(?P<n>\\d+)", "<${n}>", "a12b3", "a<12>b<3>"),
        ("(a)(b)", "$2$1", "abab", "baba"),
        ("a", "\\$$", "cat", "c\\$t"),
        ("(a)", "${1}\\1", "a", "a\\1"),
    ]
    for pattern, replacement, value, expected in cases:
        regex = re.compile(pattern)
        assert regex.sub(compile_replacement(replacement, regex), value) == expected, (pattern, replacement)


def test_rewrite_memos_answer_as_the_regex_does_and_stay_bounded() -> None:
    """Header ``replace`` and ``path`` rewrites are memoized: the same result as the substitution
    itself for every input (first sight and repeat), at most MEMO_ENTRIES remembered per rule, and
    inputs longer than MEMO_MAX_INPUT never stored."""
    import random

    from kairos.config.transform import MEMO_ENTRIES, MEMO_MAX_INPUT, HeaderRule, PathRewrite

    header = HeaderRule.model_validate(
        {"action": "replace", "name": "User-Agent", "pattern": "(\\w+)/([\\d.]+)", "replacement": "$2-$1"}
    ).compiled
    path = PathRewrite.model_validate({"pattern": "^/api/(v\\d)/", "replacement": "/$1/"}).compiled
    assert header.regex is not None
    rng = random.Random(5)
    words = ["curl/8.1", "wrk/4.1.0", "Mozilla/5.0", "é", "x" * MEMO_MAX_INPUT, "y" * (MEMO_MAX_INPUT + 1)]
    for _ in range(3000):
        value = " ".join(rng.choice(words) for _ in range(rng.randint(0, 3))) + str(rng.randint(0, 400))
        raw = value.encode("utf-8")
        expected = header.regex.sub(header.replacement, raw.decode("latin-1")).encode("latin-1")
        assert header.replace_header(raw) == expected, raw
        route_path = f"/api/v{rng.randint(1, 3)}/{value[:40]}"
        assert path.rewrite(route_path) == path.regex.sub(path.replacement, route_path, count=1)
    memo = header.replace_header.__closure__  # the lru_cache inside memoized()
    assert memo is not None
    remembered = next(cell.cell_contents for cell in memo if hasattr(cell.cell_contents, "cache_info"))
    info = remembered.cache_info()
    assert info.hits > 0 and info.currsize == MEMO_ENTRIES == info.maxsize
    long_input = b"z" * (MEMO_MAX_INPUT + 1)
    misses = remembered.cache_info().misses
    header.replace_header(long_input)
    assert remembered.cache_info().misses == misses  # rewritten without being looked up or stored
