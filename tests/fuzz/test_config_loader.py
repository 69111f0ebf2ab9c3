"""Property 1: any document either loads or raises ConfigError whose problems name a path.

Why: config reaches the loader from files, ``kairos validate`` and the admin API's route edits; an
exception other than ConfigError is a traceback for the operator, a 500 from the admin API, or a
reload that dies. What loads must also compile (routes, route table), since the gateway does that
with every config it accepts.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given

from kairos.config import ConfigError, load_data, load_text
from kairos.routing.matcher import RouteMatch, RouteTable
from kairos.routing.route import compile_route
from tests.fuzz.known_bugs import tolerated
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import config_texts, json_values, mutated_configs, valid_configs
from tests.fuzz.targets import ENVIRON, check_config_document, check_config_text

# Generated patterns such as "[[" make re warn about a future syntax change: expected, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")


@fuzz_settings()
@given(json_values(20))
def test_arbitrary_json_documents(document: Any) -> None:
    with tolerated():
        check_config_document(document)


@fuzz_settings(scale=2)
@given(mutated_configs())
def test_mutated_valid_configs(document: Any) -> None:
    with tolerated():
        check_config_document(document)


@fuzz_settings(scale=0.5)
@given(valid_configs())
def test_generated_base_configs_are_valid(document: Any) -> None:
    """The mutations start from documents that really load; otherwise they would test nothing but
    the first error."""
    assert check_config_document(document) is not None


@fuzz_settings()
@given(config_texts)
def test_arbitrary_config_text(text: str) -> None:
    with tolerated():
        check_config_text(text)


def _route(**extra: Any) -> dict[str, Any]:
    return {
        "external_path": "/a/{id}",
        "internal_path": "/b/{id}",
        "methods": ["GET"],
        "backends": [{"host": "http://10.0.0.5", "port": 8080}],
        **extra,
    }


@pytest.mark.parametrize(
    "pattern",
    ["a{4294967296}", "(" * 3000 + ")" * 3000],
    ids=["repeat-count-overflow", "nesting-beyond-recursion-limit"],
)
def test_regex_that_re_cannot_compile_is_a_config_error(pattern: str) -> None:
    """Regression (fixed in kairos/config/transform.py): OverflowError / RecursionError from
    re.compile escaped pydantic and load_data."""
    rule = {"action": "replace", "name": "X-A", "pattern": pattern, "replacement": "b"}
    document = {"version": 1, "routers": [_route(request_transformation={"headers": [rule]})]}
    with pytest.raises(ConfigError) as caught:
        load_data(document, environ=ENVIRON)
    assert any(
        p.path == "routers[0].request_transformation.headers[0].pattern" for p in caught.value.problems
    )


@pytest.mark.parametrize("depth", [600, 1200])
def test_deeply_nested_document_is_a_config_error(depth: int) -> None:
    """An unknown key holding a deeply nested value (``{"x": [[[...]]]}``): load_data recurses in
    substitute_env() (~500 levels are enough), load_text's json.loads at ~1000."""
    text = '{"version": 1, "routers": [], "x": ' + "[" * depth + "]" * depth + "}"
    with contextlib.suppress(ConfigError):  # refusing it is fine; any other exception is the bug
        load_text(text)


@pytest.mark.parametrize("name", ["1", "1a", "²"])
def test_non_identifier_parameter_in_mixed_segment_works(name: str) -> None:
    """Parameter names need not be regex group names: mixed segments match by position."""
    document = {"version": 1, "routers": [_route(external_path=f"/a/{{{name}}}.json", internal_path="/b")]}
    loaded = load_data(document, environ=ENVIRON)
    table = RouteTable([compile_route(0, loaded.config.routers[0], {})])
    match = table.match("GET", "/a/x.json")
    assert isinstance(match, RouteMatch) and match.params == {name: "x"}


@pytest.mark.parametrize("where", ["external_path", "internal_path"])
def test_config_that_loads_compiles(where: str) -> None:
    """JSON allows ``"\\ud800"``; the loader accepts such a literal, compiling the route fails."""
    document = json.loads(
        '{"version": 1, "routers": [{"external_path": "/a", "internal_path": "/b", "methods": ["GET"],'
        '"backends": [{"host": "http://10.0.0.5", "port": 8080}]}]}'
    )
    document["routers"][0][where] = "/x\ud800"
    try:
        loaded = load_data(document, environ=ENVIRON)
    except ConfigError:
        return  # refusing it is a fix too
    RouteTable([compile_route(0, loaded.config.routers[0], {})])


def test_huge_integer_literal_is_a_config_error() -> None:
    """json.loads refuses integers over 4300 digits with a plain ValueError, not JSONDecodeError."""
    with contextlib.suppress(ConfigError):
        load_text('{"version": 1, "routers": [], "max_body_size": ' + "9" * 5000 + "}")


@pytest.mark.parametrize("external_path", ["/a/{i\udcff}", "/a/{\ud800}.json"])
def test_error_quoting_a_lone_surrogate_is_a_config_error(external_path: str) -> None:
    """JSON ``"\\udcff"`` escapes are legal; a validator message quoting one breaks pydantic-core."""
    document = {"version": 1, "routers": [_route(external_path=external_path, internal_path="/b")]}
    with pytest.raises(ConfigError):
        load_data(document, environ=ENVIRON)
