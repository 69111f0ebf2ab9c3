"""The upstream path built from ``internal_path`` and matched parameters can never change shape.

Unit tests go through the real matcher (raw path -> params -> UpstreamPath.build); the
integration tests send requests through the real gateway to a real upstream and assert the exact
raw path the upstream received.
"""

from __future__ import annotations

import http.client
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from kairos.config.path_template import encode_segment_value, parse_template
from kairos.middleware.routing import route_path
from kairos.routing.matcher import NoMatch, RouteMatch, RouteTable
from tests.processes import Server, backend, gateway_server, route
from tests.routing.util import build_table, router, single_route


def upstream_path(table: RouteTable, raw_path: str, method: str = "GET") -> str:
    match = table.match(method, raw_path)
    assert isinstance(match, RouteMatch), f"{raw_path}: {match}"
    return match.route.upstream_path.build(match.params)


CATS = build_table([router("/cats/{id}", "/cats-internal/{id}", allow_dot_segment_params=True)])
"""With the traversal check off (``allow_dot_segment_params``), to show what the builder alone does."""
GUARDED_CATS = build_table([router("/cats/{id}", "/cats-internal/{id}")])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/cats/1", "/cats-internal/1"),
        ("/cats/..%2F..%2Fadmin", "/cats-internal/..%2F..%2Fadmin"),
        ("/cats/%2E%2E%2Fadmin", "/cats-internal/..%2Fadmin"),
        ("/cats/a%3Fb%23c", "/cats-internal/a%3Fb%23c"),
        ("/cats/%3F", "/cats-internal/%3F"),
        ("/cats/%23frag", "/cats-internal/%23frag"),
        ("/cats/100%25", "/cats-internal/100%25"),
        ("/cats/a%20b", "/cats-internal/a%20b"),
        ("/cats/a+b", "/cats-internal/a+b"),
        ("/cats/%C3%A9t%C3%A9", "/cats-internal/%C3%A9t%C3%A9"),
        ("/cats/%E2%9C%93%F0%9F%90%88", "/cats-internal/%E2%9C%93%F0%9F%90%88"),
        ("/cats/été", "/cats-internal/%C3%A9t%C3%A9"),  # decoded text is re-encoded as UTF-8
        ("/cats/%5C..%5Cadmin", "/cats-internal/%5C..%5Cadmin"),
        ("/cats/...", "/cats-internal/..."),
    ],
)
def test_parameter_values_stay_inside_one_segment(raw: str, expected: str) -> None:
    assert upstream_path(CATS, raw) == expected


def test_traversal_never_reaches_admin() -> None:
    built = upstream_path(CATS, "/cats/..%2F..%2Fadmin")
    assert built == "/cats-internal/..%2F..%2Fadmin"
    assert built.count("/") == 2 and "/admin" not in built


@pytest.mark.parametrize(
    "raw",
    [
        "/cats/..%2F..%2Fadmin",
        "/cats/%2E%2E%2Fadmin",
        "/cats/%2e%2e%2fadmin",
        "/cats/a%2F..%2F..%2Fadmin",
        "/cats/%5C..%5Cadmin",
        "/cats/..%5Cadmin",
        "/cats/.%2Fx",
        "/cats/x%2F..",
        "/cats/..;",
        "/cats/..;jsessionid=1%2Fadmin",
    ],
)
def test_parameters_holding_dot_segments_are_refused_by_default(raw: str) -> None:
    """A backend that decodes %2F (or splits on a backslash) would see ``../../admin``: refused."""
    match = GUARDED_CATS.match("GET", raw)
    assert isinstance(match, NoMatch) and match.bad_path is not None, match


@pytest.mark.parametrize("raw", ["/cats/...", "/cats/a.b", "/cats/..a", "/cats/v1.2%2F3", "/cats/%2E%2E%2E"])
def test_dots_that_are_not_segments_pass(raw: str) -> None:
    assert isinstance(GUARDED_CATS.match("GET", raw), RouteMatch)


def test_random_parameter_values_never_change_the_upstream_structure() -> None:
    table = build_table(
        [router("/a/{x}/b/{y}.json", "/in/{x}/mid/{y}.json/end", allow_dot_segment_params=True)]
    )
    alphabet = "abz09-._~/?#%&=+;:@ \\\"'<>[]{}|^`éß✓🐈\x00\x7f"
    rng = random.Random(1234)
    for _ in range(3000):
        x = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        y = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        if x in (".", "..") or y in (".", ".."):
            continue
        raw = f"/a/{encode_segment_value(x)}/b/{encode_segment_value(y)}.json"
        built = upstream_path(table, raw)
        assert built.isascii()
        assert "?" not in built and "#" not in built
        segments = built.split("/")
        assert len(segments) == 6, built
        assert segments[:2] == ["", "in"] and segments[3] == "mid" and segments[5] == "end"
        assert segments[2] not in (".", "..") and segments[4] not in (".", "..")
        assert unquote(segments[2]) == x
        assert unquote(segments[4]) == y + ".json"


def test_mixed_segments_and_several_parameters_per_segment() -> None:
    table = build_table(
        [
            router("/files/{name}.json", "/blob/{name}/data.json"),
            router("/v/{major}.{minor}/x", "/api/v{major}-{minor}"),
        ]
    )
    assert upstream_path(table, "/files/report.json") == "/blob/report/data.json"
    assert upstream_path(table, "/files/a%2Fb.json") == "/blob/a%2Fb/data.json"
    assert upstream_path(table, "/files/r%C3%A9sum%C3%A9.json") == "/blob/r%C3%A9sum%C3%A9/data.json"
    assert upstream_path(table, "/v/2.10/x") == "/api/v2-10"
    assert upstream_path(table, "/v/1%3F.0/x") == "/api/v1%3F-0"


def test_internal_literals_are_encoded_once() -> None:
    assert single_route(external="/a/{x}", internal="/caf%C3%A9/{x}").upstream_path.build({"x": "1"}) == (
        "/caf%C3%A9/1"
    )
    assert (
        single_route(external="/a/{x}", internal="/café/{x}").upstream_path.build({"x": "1"})
        == "/caf%C3%A9/1"
    )
    assert single_route(external="/a/{x}", internal="/a%2Fb/{x}.txt").upstream_path.build({"x": "é"}) == (
        "/a%2Fb/%C3%A9.txt"
    )
    assert single_route(external="/a", internal="/caf%C3%A9").upstream_path.build({}) == "/caf%C3%A9"


def test_trailing_slash_and_constant_paths_are_kept() -> None:
    assert single_route(external="/x/{id}", internal="/y/{id}/").upstream_path.build({"id": "1"}) == "/y/1/"
    assert single_route(external="/x", internal="/").upstream_path.build({}) == "/"
    assert single_route(external="/x", internal="/static/path/").upstream_path.build({}) == "/static/path/"


def test_dot_values_are_never_emitted_as_dot_segments() -> None:
    assert encode_segment_value("..") == "%2E%2E"
    assert encode_segment_value(".") == "%2E"
    assert encode_segment_value("...") == "..."


def test_templates_keep_literals_decoded_and_patterns_split() -> None:
    template = parse_template("/caf%C3%A9/{name}.json")
    assert template.shape == ("L:café", "R:{}.json")
    assert parse_template("/café/{other}.json").shape == template.shape


def test_route_path_reads_the_raw_path_below_the_mount_prefix() -> None:
    assert route_path({"raw_path": b"/gw/cats/1", "root_path": "/gw", "path": "/gw/cats/1"}) == "/cats/1"
    assert route_path({"raw_path": b"/gw", "root_path": "/gw", "path": "/gw"}) == "/"
    assert route_path({"raw_path": b"/cats/a%2Fb", "path": "/cats/a/b"}) == "/cats/a%2Fb"
    # raw UTF-8 bytes (a client that did not percent-encode) become %XX
    assert route_path({"raw_path": "/café".encode(), "path": "/café"}) == "/caf%C3%A9"
    # root_path is decoded, raw_path is not
    assert (
        route_path({"raw_path": b"/caf%C3%A9/cats/1", "root_path": "/café", "path": "/café/cats/1"})
        == "/cats/1"
    )
    # no raw_path: the decoded path is re-encoded, a literal '%' included
    assert route_path({"path": "/100%/a b"}) == "/100%25/a%20b"


# -- through the real gateway ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config: dict[str, Any] = {
        "version": 1,
        "routers": [
            route("/cats/{id}", "/echo/cats-internal/{id}", [backend(upstream)]),
            route("/files/{name}.json", "/echo/blob/{name}/data.json", [backend(upstream)]),
            route("/café", "/echo/cafe-literal", [backend(upstream)]),
            route("/users/me", "/echo/me", [backend(upstream)]),
            route("/users/{id}", "/echo/user/{id}", [backend(upstream)], methods=("GET", "POST")),
            route("/slash/", "/echo/with-slash", [backend(upstream)]),
            route("/slash", "/echo/without-slash", [backend(upstream)]),
            route("/write", "/echo/write", [backend(upstream)], methods=("POST", "PUT")),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def echo(server: Server, raw: str, method: str = "GET") -> dict[str, Any]:
    response = httpx.request(method, server.url + raw, timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/cats/1", "/echo/cats-internal/1"),
        ("/cats/a%2Fb", "/echo/cats-internal/a%2Fb"),
        ("/cats/a%3Fb%23c", "/echo/cats-internal/a%3Fb%23c"),
        ("/cats/%C3%A9t%C3%A9", "/echo/cats-internal/%C3%A9t%C3%A9"),
        ("/files/report.json", "/echo/blob/report/data.json"),
        ("/files/a%2Fb.json", "/echo/blob/a%2Fb/data.json"),
        ("/caf%C3%A9", "/echo/cafe-literal"),
        ("/slash/", "/echo/with-slash"),
        ("/slash", "/echo/without-slash"),
    ],
)
def test_upstream_receives_the_exact_path(gateway: Server, raw: str, expected: str) -> None:
    data = echo(gateway, raw)
    assert data["raw_path"] == expected
    assert data["query_string"] == ""


@pytest.mark.parametrize("raw", ["/cats/..%2F..%2Fadmin", "/cats/..%5C..%5Cadmin", "/files/..%2Fx.json"])
def test_a_traversal_in_a_parameter_is_refused_with_400(gateway: Server, raw: str) -> None:
    """Re-encoded it would stay one segment, but a backend that decodes %2F would see ../../admin."""
    response = httpx.get(gateway.url + raw, timeout=10)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "bad_request" and "'..' segment" in body["error"] and body["request_id"]


def test_query_is_forwarded_as_sent_and_params_cannot_add_one(gateway: Server) -> None:
    data = echo(gateway, "/cats/x%3Fadmin=1%23y?q=1&r=%2F")
    assert data["raw_path"] == "/echo/cats-internal/x%3Fadmin=1%23y?q=1&r=%2F"  # aiohttp's includes the query
    assert data["raw_path"].count("?") == 1
    assert data["query_string"] == "q=1&r=/"  # aiohttp decodes it


@pytest.mark.parametrize(
    "target", [b"/cats/..", b"/cats/.", b"/cats/../admin", b"/cats/%2E%2E", b"/files/...json"]
)
def test_dot_segments_are_400_bad_request(gateway: Server, target: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request("GET", target.decode())
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 400, body
    assert b'"type": "bad_request"' in body


def test_404_405_head_and_fallthrough_through_the_gateway(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.get("/nope")
        assert response.status_code == 404
        assert response.json()["type"] == "route_not_found"
        assert "allow" not in response.headers

        response = client.delete("/users/me")
        assert response.status_code == 405
        assert response.json()["type"] == "method_not_allowed"
        assert response.headers["allow"] == "GET, POST, HEAD"

        response = client.get("/write")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST, PUT"

        response = client.head("/users/me")
        assert response.status_code == 200

        assert client.post("/users/me").json()["raw_path"] == "/echo/user/me"
        assert client.get("/users/me").json()["raw_path"] == "/echo/me"
        assert client.get("/users/7").json()["raw_path"] == "/echo/user/7"
        assert client.get("/users/7/").status_code == 404
