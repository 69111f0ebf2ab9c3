"""Reading config files: ``${VAR}`` substitution, file-level checks, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kairos.config import ConfigError, default_config_text, load_data, load_file, load_text
from kairos.config.loader import MAX_CONFIG_BYTES
from tests.config.builders import SECRET, backend, config, errors, load, route, warnings

# -- ${VAR} substitution -----------------------------------------------------------------------


def test_env_variables_are_substituted_in_string_values() -> None:
    raw = config(
        route(backends=[backend("http://${UPSTREAM_HOST}", 8080)], description="on ${REGION}-${ZONE}"),
        jwt={"secret": "${JWT_SECRET}"},
    )
    env = {"UPSTREAM_HOST": "10.1.2.3", "JWT_SECRET": SECRET, "REGION": "eu", "ZONE": "b"}
    cfg = load(raw, env).config
    assert cfg.routers[0].upstreams[0].host == "http://10.1.2.3"
    assert cfg.jwt is not None and cfg.jwt.secret == SECRET
    assert cfg.routers[0].model_extra == {"description": "on eu-b"}


def test_default_value_is_used_when_the_variable_is_unset() -> None:
    raw = config(route(backends=[backend("http://${UPSTREAM_HOST:-fallback.internal}", 80)]))
    assert load(raw, {}).config.routers[0].upstreams[0].host == "http://fallback.internal"
    assert (
        load(raw, {"UPSTREAM_HOST": "set.internal"}).config.routers[0].upstreams[0].host
        == "http://set.internal"
    )
    empty_default = config(route(note="[${NOTE:-}]"))
    assert load(empty_default).config.routers[0].model_extra == {"note": "[]"}


def test_double_dollar_escapes_a_reference() -> None:
    raw = config(route(note="literal $${HOME} and ${USER_NAME}"))
    extra = load(raw, {"HOME": "/root", "USER_NAME": "kai"}).config.routers[0].model_extra
    assert extra == {"note": "literal ${HOME} and kai"}


def test_a_missing_variable_is_an_error_naming_the_path() -> None:
    raw = config(
        route(),
        route("/b", "/b", backends=[backend("http://${MISSING_HOST}", 80), backend("http://ok", 81)]),
        jwt={"secret": "${JWT_SECRET}"},
    )
    assert errors(raw, {}) == [  # in document order
        "routers[1].backends[0].host: environment variable MISSING_HOST is not set",
        "jwt.secret: environment variable JWT_SECRET is not set",
    ]


def test_a_missing_variable_is_reported_once_not_again_as_a_bad_value() -> None:
    # "" is not a valid path; only the real cause is reported.
    assert errors(config(route(external="${PUBLIC_PATH}")), {}) == [
        "routers[0].external_path: environment variable PUBLIC_PATH is not set"
    ]


def test_lower_case_runtime_variables_are_left_alone() -> None:
    header = {"action": "set", "name": "X-Client", "value": "${client_ip} via ${path.id}"}
    raw = config(route("/u/{id}", "/u/{id}", request_transformation={"headers": [header]}))
    loaded = load(raw, {"client_ip": "should-not-be-used"})
    transformation = loaded.config.routers[0].request_transformation
    assert transformation is not None
    assert transformation.headers[0].value == "${client_ip} via ${path.id}"


def test_substitution_applies_to_strings_only() -> None:
    # Numbers stay numbers; a whole-string reference does not turn into a number either.
    assert errors(config(route(backends=[backend(port="${PORT}")])), {"PORT": "8080"}) == [
        'routers[0].backends[0].port: must be an integer (got "8080")'
    ]


def test_load_data_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_TEST_UPSTREAM", "http://from-environ")
    loaded = load_data(config(route(backends=[backend("${KAIROS_TEST_UPSTREAM}", 80)])))
    assert loaded.config.routers[0].upstreams[0].host == "http://from-environ"


# -- files -------------------------------------------------------------------------------------


def test_load_file_reads_and_names_the_source(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config(route())))
    loaded = load_file(path)
    assert loaded.source == str(path)
    assert loaded.config.routers[0].external_path == "/api/items"


def test_file_larger_than_10_mib_is_rejected_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)  # sparse: the size check must come before reading
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert [str(p) for p in caught.value.problems] == ["(file): too large: 10485761 bytes (max 10485760)"]
    assert MAX_CONFIG_BYTES == 10 * 1024 * 1024


def test_file_of_exactly_10_mib_is_read(tmp_path: Path) -> None:
    text = json.dumps(config(route()))
    path = tmp_path / "padded.json"
    path.write_text(text + " " * (MAX_CONFIG_BYTES - len(text)))
    assert len(load_file(path).config.routers) == 1


def test_missing_file_and_non_utf8_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(tmp_path / "nope.json")
    assert [str(p) for p in caught.value.problems] == ["(file): cannot read: No such file or directory"]
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"version": 1, "routers": [], "_n": "caf\xe9"}')
    with pytest.raises(ConfigError) as caught:
        load_file(latin1)
    assert [str(p) for p in caught.value.problems] == ["(file): not UTF-8 text: invalid continuation byte"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(config(route())).encode())
    assert len(load_file(path).config.routers) == 1


def test_invalid_json_reports_line_and_column() -> None:
    text = '{\n  "version": 1,\n  "routers": [\n    {"external_path": "/a",}\n  ]\n}'
    with pytest.raises(ConfigError) as caught:
        load_text(text, "bad.json")
    assert [str(p) for p in caught.value.problems] == [
        "(file): invalid JSON at line 4 column 28: Expecting property name enclosed in double quotes"
    ]
    assert str(caught.value).startswith("bad.json: 1 error(s)\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "(root): must be a JSON object (got [])"),
        ('"routers"', '(root): must be a JSON object (got "routers")'),
        ("null", "(root): must be a JSON object (got null)"),
        ("", "(file): invalid JSON at line 1 column 1: Expecting value"),
    ],
)
def test_root_must_be_an_object(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    assert [str(p) for p in caught.value.problems] == [expected]


def test_embedded_default_config_is_valid() -> None:
    loaded = load_text(default_config_text(), "(embedded default)")
    assert loaded.warnings == []
    assert [r.external_path for r in loaded.config.routers] == [
        "/demo/hello",
        "/demo/items/{id}",
        "/demo/echo/{tail}",
        "/demo/ws",
    ]
    assert all(b.hostname == "127.0.0.1" for r in loaded.config.routers for b in r.upstreams)


# -- warnings ----------------------------------------------------------------------------------


def test_empty_routers_and_missing_version_are_warnings() -> None:
    assert warnings({"routers": []}) == [
        "version: missing; kairos-rs requires it (assuming 1)",
        "routers: is empty: every request will get 404 route_not_found",
    ]


def test_unknown_keys_are_warnings_with_their_path_but_underscore_keys_are_silent() -> None:
    raw = config(
        route(
            _comment="silent",
            timeout=5,
            retry={"max_retires": 4, "_why": "silent"},
            backends=[backend(wieght=3)],
            request_transformation={"headers": [{"action": "remove", "name": "X-A", "vale": "x"}]},
        ),
        _comment="silent",
        jwt={"secret": SECRET, "issuer": "me", "algorithm": "HS256"},
        rate_limt={"requests_per_window": 1},
    )
    assert warnings(raw) == [  # in the order the file has them
        "jwt.algorithm: unknown key, ignored",
        "rate_limt: unknown key, ignored",
        "routers[0].backends[0].wieght: unknown key, ignored",
        "routers[0].timeout: unknown key, ignored",
        "routers[0].retry.max_retires: unknown key, ignored",
        "routers[0].request_transformation.headers[0].vale: unknown key, ignored",
    ]


def test_one_run_lists_every_problem_even_in_sections_that_failed() -> None:
    """Type and range errors, unknown keys in the failing sections, cross-field and cross-route
    rules: all in one run (pydantic alone stops a section at its first bad field)."""
    raw = {
        "version": 1,
        "colour": "red",
        "rate_limit": {"algorithm": "token_bucket", "requests_per_second": 0, "burst_size": 3, "foo": 1},
        "routers": [
            route(internal_path="/x/{nope}", external_path="/a/{id}", retyr={},
                  backends=[backend(port=70000, wieght=2)]),
            route(external_path="/a/{id}", internal_path="/x/{id}"),
            route(external_path="/a/{id}", internal_path="/x/{id}", auth_required=True, timeout_ms=-1),
            route(external_path="/b", internal_path="/b", protocol="websocket",
                  backends=[backend(host="ftp://h")], max_body_size="x"),
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load(raw)
    errors = [str(problem) for problem in caught.value.problems]
    warned = [str(problem) for problem in caught.value.warnings]
    assert "rate_limit.requests_per_window: must be at least 1 (got 0)" in errors
    assert "routers[0].backends[0].port: must be between 1 and 65535 (got 70000)" in errors
    assert any(line.startswith("routers[0].internal_path: uses {nope}") for line in errors), errors
    assert "routers[2].timeout_ms: must be at least 0 (got -1)" in errors
    assert any(line.startswith("routers[2].auth_required: is true but") for line in errors), errors
    assert 'routers[3].max_body_size: must be an integer (got "x")' in errors
    assert any(line.startswith("routers[3].backends[0].host: must use ws://") for line in errors), errors
    for key in ("colour", "rate_limit.foo", "routers[0].retyr", "routers[0].backends[0].wieght"):
        assert f"{key}: unknown key, ignored" in warned, warned
    assert any(line.startswith("routers[1].external_path: duplicates routers[0]") for line in warned)
    assert any(line.startswith("routers[2].external_path: duplicates routers[0]") for line in warned)
    assert "routers[2]: is shadowed: no request can ever reach it" in warned


def test_duplicate_and_shadowed_routes_are_warnings() -> None:
    raw = config(
        route("/users/{id}", "/u/{id}", methods=["GET", "PUT"]),
        route("/users/{id}", "/u2/{id}", methods=["GET"]),  # same path, all methods taken
        route("/users/{uid}", "/u3/{uid}", methods=["PUT", "DELETE"]),  # same shape, PUT taken
        route("/users/me", "/me"),  # a literal wins over a parameter: not shadowed
        route(
            "/ws/{id}", "/ws/{id}", protocol="websocket", backends=[backend("ws://w", 80)]
        ),  # other protocol
    )
    assert warnings(raw) == [
        "routers[1].external_path: duplicates routers[0] (/users/{id}); methods GET always go to routers[0] "
        '(got "/users/{id}")',
        "routers[1]: is shadowed: no request can ever reach it",
        "routers[2].external_path: has the same shape as routers[0] (/users/{id}); methods PUT always go to "
        'routers[0] (got "/users/{uid}")',
    ]


def test_warnings_are_kept_when_the_config_is_invalid() -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(route(), route(), route(methods=["FETCH"]), colour="blue"))
    assert [str(w) for w in caught.value.warnings] == [
        "colour: unknown key, ignored",
        "routers[1].external_path: duplicates routers[0] (/api/items); methods GET always go to routers[0] "
        '(got "/api/items")',
        "routers[1]: is shadowed: no request can ever reach it",
    ]
    assert len(caught.value.problems) == 1


def test_comment_keys_are_never_substituted() -> None:
    from kairos.config import load_data

    loaded = load_data(
        {"_comment": "secrets come from ${SOME_UNSET_VARIABLE}", "version": 1, "routers": []}, environ={}
    )
    assert loaded.config.routers == ()


def test_jwks_url_and_its_settings_load_without_warnings() -> None:
    jwt = {"jwks_url": "https://auth.example/jwks.json", "algorithms": ["RS256", "ES256"]}
    loaded = load_data({"version": 1, "jwt": jwt, "routers": []})
    assert not [problem for problem in loaded.warnings if problem.path.startswith("jwt")]
    assert loaded.config.jwt is not None
    assert (loaded.config.jwt.jwks_refresh_secs, loaded.config.jwt.jwks_min_refresh_secs) == (300, 30)
    assert loaded.config.jwt.jwks_timeout_secs == 5.0
    tuned = {**jwt, "jwks_refresh_secs": 60, "jwks_min_refresh_secs": 5, "jwks_timeout_secs": 2}
    loaded = load_data({"version": 1, "jwt": tuned, "routers": []})
    assert loaded.config.jwt is not None and loaded.config.jwt.jwks_min_refresh_secs == 5


def test_jwks_settings_are_bounded() -> None:
    for key, value in (("jwks_refresh_secs", 1), ("jwks_min_refresh_secs", 0), ("jwks_timeout_secs", 0)):
        jwt = {"jwks_url": "https://auth.example/jwks.json", key: value}
        with pytest.raises(ConfigError) as caught:
            load_data({"version": 1, "jwt": jwt, "routers": []})
        assert [problem.path for problem in caught.value.problems] == [f"jwt.{key}"]


def test_the_keys_of_a_mapping_field_are_names_not_unknown_keys() -> None:
    """``llm.models`` maps names the user chose to models: the names are never "unknown keys", while a
    typo inside a model (object or list shorthand) still is, with its path."""
    llm = {
        "models": {
            "fast": [{"provider": "openai", "model": "gpt-4o-mini", "wieght": 2}],
            "smart": {"targets": [{"provider": "openai", "model": "gpt-4o"}], "fallback": ["fast"]},
        }
    }
    llm_route = {"protocol": "llm", "external_path": "/v1", "internal_path": "/", "methods": ["POST"]}
    raw = {"version": 1, "routers": [{**llm_route, "llm": llm}]}
    assert warnings(raw) == [
        "routers[0].llm.models.fast.targets[0].wieght: unknown key, ignored",
        "routers[0].llm.models.smart.fallback: unknown key, ignored",
    ]


def test_any_mapping_of_models_is_walked_by_its_values() -> None:
    from pydantic import BaseModel

    from kairos.config.loader import unknown_keys

    class Inner(BaseModel):
        size: int = 0

    class Outer(BaseModel):
        by_name: dict[str, Inner] | None = None
        either: dict[str, Inner] | Inner | None = None  # with a model in the union, a dict is the model

    found = unknown_keys(
        Outer,
        {"by_name": {"a": {"size": 1}, "b": {"sise": 2}}, "either": {"size": 1, "colour": "red"}},
        (),
    )
    assert [str(problem) for problem in found] == [
        "by_name.b.sise: unknown key, ignored",
        "either.colour: unknown key, ignored",
    ]
