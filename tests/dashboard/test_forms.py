"""The dashboard's route form and sessions, without a browser: the form follows the config schema,
reads back what it shows, and places the gateway's problems beside their fields."""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import FormData, UploadFile

from admin import forms
from admin.session import Sessions
from kairos.config.model import RouteConfig


def submit(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    form = FormData(list[tuple[str, str | UploadFile]](pairs))
    return forms.read_route(form, form.getlist)


def test_every_route_field_has_a_control_chosen_by_its_type() -> None:
    controls = {control.name: control for control in forms.route_controls()}
    assert set(controls) == set(RouteConfig.model_fields)
    assert controls["external_path"].kind == "text" and controls["external_path"].required
    assert controls["methods"].kind == "checkboxes" and "GET" in controls["methods"].options
    assert controls["auth_required"].kind == "boolean"
    assert controls["load_balancing_strategy"].kind == "select"
    assert controls["timeout_ms"].kind == "integer" and controls["timeout_ms"].default == 30000
    assert controls["required_roles"].kind == "lines"
    assert controls["retry"].kind == "json"
    backends = controls["backends"]
    assert backends.kind == "rows"
    assert {"host", "port", "weight"} <= {column.name for column in backends.columns}


def test_a_submitted_form_becomes_the_route_document() -> None:
    route = submit(
        [
            ("external_path", "/cats/{id}"),
            ("internal_path", "/v1/cats/{id}"),
            ("methods", "GET"),
            ("methods", "POST"),
            ("methods", "BREW"),  # not an option: dropped
            ("backends.0.host", "http://127.0.0.1"),
            ("backends.0.port", "8080"),
            ("backends.0.tls_verify", "on"),  # checked: the default, left out
            ("backends.1.host", ""),  # the empty row that adds one: ignored
            ("backends.1.port", ""),
            ("backends.1.tls_verify", "on"),
            ("timeout_ms", ""),  # blank: the default applies
            ("auth_required", "on"),
            ("rewrite_location", "on"),  # shown ticked (its default), sent as the browser sends it
            ("required_roles", "admin\n\n ops \n"),
            ("retry", '{"max_retries": 2}'),
            ("_extra", '{"_comment": "kept as it was"}'),
        ]
    )
    assert route == {
        "_comment": "kept as it was",
        "external_path": "/cats/{id}",
        "internal_path": "/v1/cats/{id}",
        "methods": ["GET", "POST"],
        "backends": [{"host": "http://127.0.0.1", "port": 8080}],
        "auth_required": True,
        "required_roles": ["admin", "ops"],
        "retry": {"max_retries": 2},
    }
    RouteConfig.model_validate(route)


def test_a_number_that_does_not_parse_goes_as_typed_for_the_validator_to_name() -> None:
    route = submit([("external_path", "/x"), ("backends.0.host", "http://h"), ("backends.0.port", "eighty")])
    # An unticked checkbox whose default is ticked is a choice: tls_verify goes as false.
    assert route["backends"] == [{"host": "http://h", "port": "eighty", "tls_verify": False}]


def test_bad_json_in_a_section_is_a_problem_of_that_field() -> None:
    try:
        submit([("external_path", "/x"), ("retry", "{not json")])
    except forms.FormProblems as exc:
        assert list(exc.problems) == ["retry"]
        assert "not valid JSON" in exc.problems["retry"]
    else:
        raise AssertionError("bad JSON was accepted")


def test_problems_are_placed_beside_the_field_their_path_names() -> None:
    placed, general = forms.problem_fields(
        [
            "backends[0].port: must be between 1 and 65535 (got 70000)",
            "retry.max_retries: must be at most 10",
            "methods[1]: unknown method",
            "(route): something about the whole route",
            "no separator at all",
        ]
    )
    assert placed == {
        "backends.0.port": ["backends[0].port: must be between 1 and 65535 (got 70000)"],
        "retry": ["retry.max_retries: must be at most 10"],
        "methods": ["methods[1]: unknown method"],
    }
    assert general == ["(route): something about the whole route", "no separator at all"]


def test_sessions_round_trip_and_refuse_forgeries_and_old_cookies() -> None:
    sessions = Sessions(secret="s" * 32)
    cookie = sessions.issue("the-token")
    session = sessions.read(cookie)
    assert session is not None and session.token == "the-token" and session.issued <= time.time()
    assert Sessions(secret="another").read(cookie) is None  # another key
    assert sessions.read(cookie[:-2] + "xx") is None  # tampered
    assert sessions.read(None) is None and sessions.read("") is None
    expired = Sessions(secret="s" * 32, lifetime=1)
    old = expired.issue("t")
    time.sleep(2.1)
    assert expired.read(old) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    sessions = Sessions(secret="k" * 32)
    one, two = sessions.issue("a"), sessions.issue("a")
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(two, sessions.csrf(one))
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(None, sessions.csrf(one))


def test_sessions_derived_from_the_admin_token_agree_across_processes_and_end_on_rotation() -> None:
    first, second = Sessions(derived_from="token-1"), Sessions(derived_from="token-1")
    cookie = first.issue("token-1")
    assert second.read(cookie) is not None  # another worker reads it
    assert Sessions(derived_from="token-2").read(cookie) is None  # the token rotated
