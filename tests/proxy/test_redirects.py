"""The redirect mapping on its own: which references are the backend's and where they land."""

from __future__ import annotations

import pytest

from kairos.config.path_template import parse_template
from kairos.proxy.redirects import RedirectRewriter
from kairos.routing.route import UpstreamPath


def rewriter(
    external: str, internal: str, backends: list[tuple[str, str, int]] | None = None, cookies: bool = False
) -> RedirectRewriter:
    template = parse_template(external)
    tail = template.catch_all
    raw = frozenset({tail}) if tail else frozenset[str]()
    return RedirectRewriter.build(
        parse_template(internal),
        template,
        UpstreamPath.compile(template, raw).build,
        backends or [("http", "10.0.0.5", 8080)],
        cookies=cookies,
    )


PREFIX = rewriter("/hb/{*rest}", "/{rest}")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/get", "/hb/get"),
        ("/a/b%2Fc?q=1#f", "/hb/a/b%2Fc?q=1#f"),
        ("http://10.0.0.5:8080/get", "/hb/get"),
        ("HTTP://10.0.0.5:8080", "/hb/"),
        ("//10.0.0.5:8080/x", "/hb/x"),
        ("https://10.0.0.5:8080/get", None),  # another scheme is another origin
        ("http://10.0.0.5/get", None),  # port 80, not the backend's 8080
        ("http://elsewhere:8080/get", None),
        ("relative/path", None),  # already relative to the gateway's URL
        ("", None),
        ("http://[::1", None),  # unparsable: left as written
    ],
)
def test_prefix_route_locations(location: str, expected: str | None) -> None:
    assert PREFIX.reference(location, {}, "") == expected


def test_default_ports_ipv6_and_websocket_backends_are_recognised() -> None:
    v6 = rewriter("/x/{*rest}", "/{rest}", [("https", "::1", 443)])
    assert v6.reference("https://[::1]/a", {}, "") == "/x/a"
    assert v6.reference("https://[::1]:443/a", {}, "") == "/x/a"
    ws = rewriter("/w/{*rest}", "/{rest}", [("ws", "chat.internal", 80)])
    assert ws.reference("http://chat.internal/a", {}, "") == "/w/a"


def test_templates_with_parameters_and_patterns_map_both_ways() -> None:
    users = rewriter("/api/users/{id}", "/v1/user/{id}")
    assert users.reference("/v1/user/42", {}, "") == "/api/users/42"
    assert users.reference("/v1/user/42/profile", {}, "") is None  # not this route's path
    assert users.reference("/v1/user/a%2Fb", {}, "") == "/api/users/a%2Fb"
    files = rewriter("/files/{name}.json", "/blob/{name}/data")
    assert files.reference("/blob/report/data", {}, "") == "/files/report.json"


def test_a_mount_prefix_is_put_back() -> None:
    assert PREFIX.reference("/get", {}, "/gw") == "/gw/hb/get"
    assert PREFIX.reference("http://10.0.0.5:8080/z", {}, "/café") == "/caf%C3%A9/hb/z"


def test_an_absolute_backend_url_outside_the_route_still_leaves_the_backend() -> None:
    static = rewriter("/old", "/")
    assert static.reference("http://10.0.0.5:8080/login?x=1", {}, "") == "/login?x=1"
    assert static.reference("/login", {}, "") is None


def test_refresh_forms() -> None:
    assert PREFIX.rewrite(b"refresh", b"5; url=/a", {}, "") == b"5; url=/hb/a"
    assert PREFIX.rewrite(b"refresh", b"5;URL='http://10.0.0.5:8080/a'", {}, "") == b"5; url='/hb/a'"
    assert PREFIX.rewrite(b"refresh", b"5", {}, "") == b"5"


def test_cookies_only_when_asked() -> None:
    cookie = b"sid=1; Path=/items; Domain=10.0.0.5; Secure"
    assert PREFIX.rewrite(b"set-cookie", cookie, {}, "") == cookie
    assert b"set-cookie" not in PREFIX.names
    jar = rewriter("/app/{*rest}", "/{rest}", cookies=True)
    assert jar.rewrite(b"set-cookie", cookie, {}, "") == b"sid=1; Path=/app/items; Secure"
    assert jar.rewrite(b"set-cookie", b"a=1; path=/", {}, "") == b"a=1; Path=/app/"
    assert jar.rewrite(b"set-cookie", b"a=1; Domain=.example.com", {}, "") == b"a=1; Domain=.example.com"
    narrow = rewriter("/api/users/{id}", "/v1/user/{id}", cookies=True)
    assert narrow.rewrite(b"set-cookie", b"a=1; Path=/", {}, "") == b"a=1; Path=/api/users/"
    assert narrow.rewrite(b"set-cookie", b"a=1; Path=/v1/user", {}, "") == b"a=1; Path=/api/users/"
    assert narrow.rewrite(b"set-cookie", b"a=1; Path=/other", {}, "") == b"a=1; Path=/other"


def test_any_bytes_are_survived() -> None:
    for value in (b"\xff\xfe", b"http://10.0.0.5:8080/\xe9", b"5; url=", b";;;", b"http://:0/"):
        for name in (b"location", b"refresh", b"set-cookie", b"content-location"):
            assert isinstance(PREFIX.rewrite(name, value, {}, ""), bytes)
