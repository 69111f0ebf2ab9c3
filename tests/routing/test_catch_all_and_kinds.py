"""Trailing catch-all ``{*rest}`` routes and the HTTP/WebSocket preference at one template."""

from __future__ import annotations

import pytest

from kairos.config import ConfigError, load_data
from kairos.routing.matcher import NoMatch, RouteMatch
from tests.routing.util import build_table, router


def matched(result: RouteMatch | NoMatch) -> RouteMatch:
    assert isinstance(result, RouteMatch), result
    return result


def test_catch_all_takes_the_rest_of_the_path_at_any_depth() -> None:
    table = build_table([router("/api/{*rest}", "/v2/{*rest}", methods=("GET", "POST"))])
    for path, rest in [("/api/a", "a"), ("/api/a/b/c", "a/b/c"), ("/api/", ""), ("/api/x/", "x/")]:
        result = matched(table.match("GET", path))
        assert result.params == {"rest": rest}
        assert result.route.upstream_path.build(result.params) == "/v2/" + rest
    assert isinstance(table.match("GET", "/api"), NoMatch)  # the prefix itself is not below it
    assert isinstance(table.match("GET", "/apix/a"), NoMatch)


def ftp_router(external: str, internal: str) -> dict[str, object]:
    return {
        "protocol": "ftp",
        "external_path": external,
        "internal_path": internal,
        "methods": ["GET", "PUT"],
        "backends": [{"host": "ftp://127.0.0.1", "port": 2121}],
    }


@pytest.mark.parametrize(("external", "internal"), [("/ftp", "/"), ("/ftp/", "/pub/"), ("/ftp", "/pub")])
def test_an_ftp_route_without_parameters_serves_the_whole_tree(external: str, internal: str) -> None:
    """kairos-rs's ``{"external_path": "/ftp", "internal_path": "/"}``: the prefix is the root of
    ``internal_path`` and every path below it maps below ``internal_path``."""
    table = build_table([ftp_router(external, internal)])
    base = internal.rstrip("/")
    for path, upstream in [
        ("/ftp", base + "/"),
        ("/ftp/", base + "/"),
        ("/ftp/a.txt", base + "/a.txt"),
        ("/ftp/a/b%20c/", base + "/a/b%20c/"),
    ]:
        result = matched(table.match("GET", path))
        assert result.route.upstream_path.build(result.params) == upstream, path
    assert isinstance(table.match("GET", "/ftpx"), NoMatch)
    bad = table.match("GET", "/ftp/a/%2e%2e/%2e%2e/etc")
    assert isinstance(bad, NoMatch) and bad.bad_path is not None


def test_an_http_route_without_parameters_is_still_exact() -> None:
    table = build_table([router("/ftp", "/")])
    assert isinstance(table.match("GET", "/ftp"), RouteMatch)
    assert isinstance(table.match("GET", "/ftp/a.txt"), NoMatch)


def test_catch_all_keeps_encoding_and_cannot_climb_out() -> None:
    table = build_table([router("/api/{*rest}", "/v2/{*rest}")])
    result = matched(table.match("GET", "/api/a%2Fb/c%3Fd%23e/caf%C3%A9"))
    assert result.route.upstream_path.build(result.params) == "/v2/a%2Fb/c%3Fd%23e/caf%C3%A9"
    for path in ("/api/../admin", "/api/a/%2E%2E/b", "/api/./x"):
        bad = table.match("GET", path)
        assert isinstance(bad, NoMatch) and bad.bad_path is not None, path


def test_catch_all_comes_after_every_more_specific_route_at_its_position() -> None:
    table = build_table(
        [
            router("/api/{*rest}", "/fallback/{*rest}"),
            router("/api/users/{id}", "/users/{id}"),
            router("/api/health", "/health"),
            router("/{*all}", "/root/{*all}"),
        ]
    )
    assert matched(table.match("GET", "/api/health")).route.name == "/api/health"
    assert matched(table.match("GET", "/api/users/7")).route.name == "/api/users/{id}"
    assert matched(table.match("GET", "/api/users/7/x")).route.name == "/api/{*rest}"
    assert matched(table.match("GET", "/other/thing")).route.name == "/{*all}"


def test_catch_all_method_fallthrough_and_allow() -> None:
    table = build_table([router("/api/{*rest}", methods=("GET",)), router("/{*all}", methods=("POST",))])
    assert matched(table.match("POST", "/api/x")).route.name == "/{*all}"
    only_get = build_table([router("/api/{*rest}", methods=("GET",))])
    result = only_get.match("DELETE", "/api/x")
    assert isinstance(result, NoMatch) and result.allow == "GET, HEAD"


def test_catch_all_may_be_used_as_a_plain_name_in_internal_path() -> None:
    table = build_table([router("/files/{*path}", "/storage/{path}")])
    result = matched(table.match("GET", "/files/a/b%20c"))
    assert result.route.upstream_path.build(result.params) == "/storage/a/b%20c"


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ("/a/{*rest}/b", "must be the last segment"),
        ("/a/{*}", "invalid catch-all name"),
        ("/a/{*re st}", "invalid catch-all name"),
        ("/{rest}/{*rest}", "appears twice"),
    ],
)
def test_catch_all_template_errors(external: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_data({"version": 1, "routers": [router(external, "/")]})
    assert message in str(error.value)


def test_websocket_and_http_routes_can_share_a_path() -> None:
    ws = router("/chat", "/ws-chat", protocol="websocket")
    ws["backends"] = [{"host": "ws://127.0.0.1", "port": 9}]
    for order in ([router("/chat", "/http-chat"), ws], [ws, router("/chat", "/http-chat")]):
        table = build_table(order)
        assert matched(table.match("GET", "/chat")).route.websocket is False
        assert matched(table.match("GET", "/chat", websocket=True)).route.websocket is True
    only_ws = build_table([ws])
    assert matched(only_ws.match("GET", "/chat")).route.websocket is True  # answered 426 upstream of here
    only_http = build_table([router("/chat", "/http-chat")])
    assert matched(only_http.match("GET", "/chat", websocket=True)).route.websocket is False
