"""RouteTable: precedence, methods (404/405/HEAD/fallthrough), path decoding and scale.

Routes are labelled by their internal path (``/<label>``) so a match names the route that won.
"""

from __future__ import annotations

import random

import pytest

from kairos.config import ConfigError
from kairos.routing.backend import BackendState
from kairos.routing.matcher import NoMatch, RouteMatch, RouteTable
from kairos.routing.route import compile_route
from tests.routing.util import build_table, route_configs, router


def labelled(label: str, external: str, methods: tuple[str, ...] = ("GET",)) -> dict[str, object]:
    return router(external, "/" + label, methods)


def winner(table: RouteTable, method: str, path: str) -> str:
    result = table.match(method, path)
    assert isinstance(result, RouteMatch), f"{method} {path}: {result}"
    return result.route.config.internal_path[1:]


# -- basics --------------------------------------------------------------------------------------


def test_static_and_parameter_segments_capture_params() -> None:
    table = build_table(
        [
            labelled("list", "/users"),
            labelled("one", "/users/{id}"),
            labelled("post", "/users/{user_id}/posts/{post_id}"),
            labelled("v", "/api/v{major}.{minor}/ping"),
        ]
    )
    assert winner(table, "GET", "/users") == "list"
    match = table.match("GET", "/users/42")
    assert isinstance(match, RouteMatch)
    assert match.route.config.internal_path == "/one"
    assert match.params == {"id": "42"}
    match = table.match("GET", "/users/7/posts/99")
    assert isinstance(match, RouteMatch) and match.params == {"user_id": "7", "post_id": "99"}
    match = table.match("GET", "/api/v2.10/ping")
    assert isinstance(match, RouteMatch) and match.params == {"major": "2", "minor": "10"}
    assert table.match("GET", "/users/42/extra") == NoMatch()
    assert table.match("GET", "/nope") == NoMatch()
    assert len(table) == 4


def test_literal_beats_parameter_at_same_position_in_either_config_order() -> None:
    for routes in (
        [labelled("me", "/users/me"), labelled("id", "/users/{id}")],
        [labelled("id", "/users/{id}"), labelled("me", "/users/me")],
    ):
        table = build_table(routes)
        assert winner(table, "GET", "/users/me") == "me"
        assert winner(table, "GET", "/users/mine") == "id"


def test_leftmost_literal_wins_then_backtracks_when_the_literal_branch_has_no_route() -> None:
    table = build_table(
        [
            labelled("param_first", "/{org}/repos/{repo}"),
            labelled("literal_first", "/acme/{section}/{repo}"),
            labelled("deep_literal", "/acme/repos/special"),
        ]
    )
    assert winner(table, "GET", "/acme/repos/special") == "deep_literal"
    assert winner(table, "GET", "/acme/repos/x") == "literal_first"  # literal at position 1 wins
    assert winner(table, "GET", "/other/repos/x") == "param_first"
    # /acme/... literal branch exists but needs 3 segments: a 2-segment path falls through to nothing
    assert table.match("GET", "/acme/repos") == NoMatch()


def test_backtracking_from_a_dead_literal_branch_to_a_parameter() -> None:
    table = build_table([labelled("lit", "/a/b/c"), labelled("param", "/a/{x}/d")])
    assert winner(table, "GET", "/a/b/d") == "param"
    assert winner(table, "GET", "/a/b/c") == "lit"


def test_mixed_patterns_rank_between_literal_and_parameter() -> None:
    table = build_table(
        [
            labelled("any", "/files/{f}"),
            labelled("ext", "/files/{name}.{ext}"),
            labelled("json", "/files/{name}.json"),
            labelled("vjson", "/files/v{n}.json"),
            labelled("readme", "/files/README.md"),
        ]
    )
    assert winner(table, "GET", "/files/README.md") == "readme"
    assert winner(table, "GET", "/files/v1.json") == "vjson"  # 6 literal characters beat 5
    assert winner(table, "GET", "/files/a.json") == "json"
    assert winner(table, "GET", "/files/a.txt") == "ext"
    assert winner(table, "GET", "/files/abc") == "any"
    match = table.match("GET", "/files/report.final.json")
    assert isinstance(match, RouteMatch) and match.params == {"name": "report.final"}


def test_same_shape_routes_follow_config_order() -> None:
    first = build_table([labelled("a", "/users/{id}"), labelled("b", "/users/{uid}")])
    second = build_table([labelled("b", "/users/{uid}"), labelled("a", "/users/{id}")])
    assert winner(first, "GET", "/users/1") == "a"
    assert winner(second, "GET", "/users/1") == "b"
    match = second.match("GET", "/users/1")
    assert isinstance(match, RouteMatch) and match.params == {"uid": "1"}


def test_same_shape_mixed_patterns_with_different_names_follow_config_order() -> None:
    # {a}.json is first seen for a longer route; a later same-shape route must still lose to an
    # earlier one of its shape ({b}.json).
    table = build_table(
        [
            labelled("a_raw", "/f/{a}.json/raw"),
            labelled("b", "/f/{b}.json"),
            labelled("a", "/f/{a}.json"),
        ]
    )
    assert winner(table, "GET", "/f/q.json") == "b"
    assert winner(table, "GET", "/f/q.json/raw") == "a_raw"
    match = table.match("GET", "/f/q.json")
    assert isinstance(match, RouteMatch) and match.params == {"b": "q"}


def test_equally_specific_patterns_of_different_shapes_do_not_depend_on_config_order() -> None:
    for routes in (
        [labelled("prefix", "/m/a{x}"), labelled("suffix", "/m/{x}a")],
        [labelled("suffix", "/m/{x}a"), labelled("prefix", "/m/a{x}")],
    ):
        table = build_table(routes)
        assert winner(table, "GET", "/m/aba") == "prefix"  # longer literal prefix first
        assert winner(table, "GET", "/m/bca") == "suffix"
        assert table.match("GET", "/m/zz") == NoMatch()


# -- property: the winner does not depend on config order ------------------------------------------

# (label, external path, methods, tie group). Routes in one tie group have the same shape; between
# them config order decides, so the expected winner is the group member that comes first.
PROPERTY_ROUTES: list[tuple[str, str, tuple[str, ...]]] = [
    ("root", "/", ("GET",)),
    ("users", "/users", ("GET", "POST")),
    ("users_slash", "/users/", ("GET",)),
    ("users_me", "/users/me", ("GET",)),
    ("users_id", "/users/{id}", ("GET", "POST")),
    ("users_uid", "/users/{uid}", ("GET",)),
    ("users_me_x", "/users/me/{what}", ("GET",)),
    ("users_id_posts", "/users/{id}/posts", ("GET",)),
    ("users_id_posts_pid", "/users/{id}/posts/{pid}", ("GET", "DELETE")),
    ("users_x_posts_latest", "/users/{x}/posts/latest", ("GET",)),
    ("files_any", "/files/{f}", ("GET",)),
    ("files_ext", "/files/{name}.{ext}", ("GET",)),
    ("files_json", "/files/{name}.json", ("GET",)),
    ("files_json_b", "/files/{stem}.json", ("GET",)),
    ("files_json_c", "/files/{x}.json", ("GET",)),
    ("files_json_raw", "/files/{x}.json/raw", ("GET",)),
    ("files_vjson", "/files/v{n}.json", ("GET",)),
    ("files_readme", "/files/README.md", ("GET",)),
    ("m_prefix", "/m/a{x}", ("GET",)),
    ("m_suffix", "/m/{x}a", ("GET",)),
    ("api_v1", "/api/v1/items", ("GET",)),
    ("api_ver", "/api/{ver}/items", ("GET",)),
    ("api_any", "/api/{ver}/{thing}", ("GET",)),
    ("cafe", "/café", ("GET",)),
    ("deep", "/{a}/{b}/{c}/{d}", ("GET",)),
]
TIE_GROUPS = [{"users_id", "users_uid"}, {"files_json", "files_json_b", "files_json_c"}]

# (method, path) -> the label that must win, or a set (a tie group), or ("405", Allow), or "404"
PROPERTY_EXPECTED: dict[tuple[str, str], object] = {
    ("GET", "/"): "root",
    ("GET", "/users"): "users",
    ("POST", "/users"): "users",
    ("GET", "/users/"): "users_slash",
    ("GET", "/users/me"): "users_me",
    ("HEAD", "/users/me"): "users_me",
    ("POST", "/users/me"): "users_id",  # method-aware fallthrough
    ("GET", "/users/42"): TIE_GROUPS[0],
    ("POST", "/users/42"): "users_id",
    ("GET", "/users/me/posts"): "users_me_x",
    ("GET", "/users/7/posts"): "users_id_posts",
    ("GET", "/users/7/posts/latest"): "users_x_posts_latest",
    ("GET", "/users/7/posts/9"): "users_id_posts_pid",
    ("DELETE", "/users/7/posts/latest"): "users_id_posts_pid",
    ("GET", "/users/a/b/c"): "deep",  # /users/{id}/posts/... dead end: back to /{a}/{b}/{c}/{d}
    ("GET", "/files/a.json"): TIE_GROUPS[1],
    ("GET", "/files/a.json/raw"): "files_json_raw",
    ("GET", "/files/v1.json"): "files_vjson",
    ("GET", "/files/a.txt"): "files_ext",
    ("GET", "/files/README.md"): "files_readme",
    ("GET", "/files/abc"): "files_any",
    ("GET", "/m/aba"): "m_prefix",
    ("GET", "/m/bca"): "m_suffix",
    ("GET", "/api/v1/items"): "api_v1",
    ("GET", "/api/v2/items"): "api_ver",
    ("GET", "/api/v1/other"): "api_any",
    ("GET", "/caf%C3%A9"): "cafe",
    ("GET", "/a/b/c/d"): "deep",
    ("DELETE", "/users/42"): ("405", "GET, POST, HEAD"),
    ("PUT", "/users/7/posts/latest"): ("405", "GET, DELETE, HEAD"),
    ("GET", "/m/zz"): "404",
    ("GET", "/nothing/here"): "404",
    ("GET", "/users/42/"): "404",
}


def expected_outcome(expected: object, order: list[str]) -> object:
    if isinstance(expected, set):
        return min(expected, key=order.index)  # the same-shape route defined first
    return expected


def outcome(table: RouteTable, method: str, path: str) -> object:
    result = table.match(method, path)
    if isinstance(result, RouteMatch):
        return result.route.config.internal_path[1:]
    assert result.bad_path is None
    return ("405", result.allow) if result.allow is not None else "404"


def test_precedence_is_independent_of_config_order_except_between_same_shape_routes() -> None:
    configs = dict(
        zip(
            [label for label, _, _ in PROPERTY_ROUTES],
            route_configs(labelled(label, path, methods) for label, path, methods in PROPERTY_ROUTES),
            strict=True,
        )
    )
    labels = list(configs)
    orders = [labels, labels[::-1]]
    for seed in range(300):
        order = labels[:]
        random.Random(seed).shuffle(order)
        orders.append(order)
    for order in orders:
        states: dict[str, BackendState] = {}
        table = RouteTable(compile_route(i, configs[label], states) for i, label in enumerate(order))
        for (method, path), expected in PROPERTY_EXPECTED.items():
            assert outcome(table, method, path) == expected_outcome(expected, order), (method, path, order)
        # repeatable: the same table answers the same way every time
        assert outcome(table, "GET", "/users/42") == outcome(table, "GET", "/users/42")


# -- methods ---------------------------------------------------------------------------------------


def test_unknown_path_is_404_without_allow() -> None:
    table = build_table([labelled("a", "/a")])
    result = table.match("GET", "/b")
    assert isinstance(result, NoMatch) and result.allow is None and result.bad_path is None


def test_405_allow_is_the_union_of_all_matching_paths() -> None:
    table = build_table(
        [
            labelled("me", "/users/me", ("GET",)),
            labelled("id", "/users/{id}", ("DELETE", "PATCH")),
            labelled("other", "/users/{id}/x", ("PUT",)),
        ]
    )
    result = table.match("PUT", "/users/me")
    assert result == NoMatch(allow="GET, DELETE, HEAD, PATCH")
    result = table.match("PUT", "/users/42")
    assert result == NoMatch(allow="DELETE, PATCH")
    assert winner(table, "PATCH", "/users/me") == "id"


def test_head_is_allowed_wherever_get_is() -> None:
    table = build_table([labelled("get", "/g", ("GET",)), labelled("post", "/p", ("POST",))])
    assert winner(table, "HEAD", "/g") == "get"
    assert table.match("HEAD", "/p") == NoMatch(allow="POST")
    assert table.match("POST", "/g") == NoMatch(allow="GET, HEAD")
    assert table.routes[0].allow == "GET, HEAD"
    assert "HEAD" in table.routes[0].methods and "HEAD" not in table.routes[1].methods


def test_method_aware_fallthrough_from_literal_to_parameter() -> None:
    table = build_table(
        [labelled("me", "/users/me", ("GET",)), labelled("id", "/users/{id}", ("GET", "POST"))]
    )
    assert winner(table, "GET", "/users/me") == "me"
    assert winner(table, "POST", "/users/me") == "id"
    match = table.match("POST", "/users/me")
    assert isinstance(match, RouteMatch) and match.params == {"id": "me"}
    assert table.match("DELETE", "/users/me") == NoMatch(allow="GET, POST, HEAD")


def test_same_shape_routes_split_by_method() -> None:
    table = build_table(
        [labelled("read", "/items/{id}", ("GET",)), labelled("write", "/items/{key}", ("PUT",))]
    )
    assert winner(table, "GET", "/items/1") == "read"
    assert winner(table, "PUT", "/items/1") == "write"
    match = table.match("PUT", "/items/1")
    assert isinstance(match, RouteMatch) and match.params == {"key": "1"}


# -- path decoding, trailing slash, dot segments ----------------------------------------------------


def test_trailing_slash_is_significant() -> None:
    table = build_table(
        [labelled("bare", "/users"), labelled("slash", "/users/"), labelled("id", "/users/{id}")]
    )
    assert winner(table, "GET", "/users") == "bare"
    assert winner(table, "GET", "/users/") == "slash"  # an empty segment never fills {id}
    assert winner(table, "GET", "/users/1") == "id"
    assert table.match("GET", "/users/1/") == NoMatch()
    only_bare = build_table([labelled("bare", "/users")])
    assert only_bare.match("GET", "/users/") == NoMatch()
    assert winner(build_table([labelled("root", "/")]), "GET", "/") == "root"


@pytest.mark.parametrize(
    "path", ["/users/.", "/users/..", "/a/../users", "/users/%2E%2E", "/users/%2e", "/./users", "/users/.%2E"]
)
def test_dot_segments_are_bad_requests(path: str) -> None:
    table = build_table([labelled("id", "/users/{id}"), labelled("any", "/{a}/{b}/{c}")])
    result = table.match("GET", path)
    assert isinstance(result, NoMatch) and result.bad_path is not None


def test_a_parameter_cut_out_of_a_mixed_segment_cannot_be_a_dot_segment() -> None:
    table = build_table([router("/files/{name}.json", "/store/{name}")])
    result = table.match("GET", "/files/...json")  # name would be '..' -> upstream /store/..
    assert isinstance(result, NoMatch) and result.bad_path is not None
    result = table.match("GET", "/files/..json")
    assert isinstance(result, NoMatch) and result.bad_path is not None
    match = table.match("GET", "/files/....json")
    assert isinstance(match, RouteMatch) and match.params == {"name": "..."}


def test_invalid_percent_encoded_utf8_is_a_bad_request() -> None:
    table = build_table([labelled("id", "/users/{id}")])
    result = table.match("GET", "/users/%FF%FE")
    assert isinstance(result, NoMatch) and result.bad_path is not None


def test_percent_encoded_request_matches_a_unicode_literal() -> None:
    table = build_table([labelled("cafe", "/café"), labelled("menu", "/café/menü/{item}")])
    assert winner(table, "GET", "/caf%C3%A9") == "cafe"
    assert winner(table, "GET", "/caf%c3%a9") == "cafe"  # hex case does not matter
    assert winner(table, "GET", "/café") == "cafe"  # an already-decoded string is text
    match = table.match("GET", "/caf%C3%A9/men%C3%BC/cr%C3%AApe")
    assert isinstance(match, RouteMatch) and match.params == {"item": "crêpe"}
    assert table.match("GET", "/cafe") == NoMatch()


def test_percent_encoded_literal_in_config_is_the_same_literal() -> None:
    table = build_table([labelled("cafe", "/caf%C3%A9"), labelled("slash", "/a%2Fb")])
    assert winner(table, "GET", "/caf%C3%A9") == "cafe"
    assert winner(table, "GET", "/caf%c3%a9") == "cafe"
    assert winner(table, "GET", "/café") == "cafe"
    assert winner(table, "GET", "/a%2Fb") == "slash"
    assert winner(table, "GET", "/a%2fb") == "slash"
    assert table.match("GET", "/a/b") == NoMatch()  # an encoded '/' is not a segment boundary


def test_encoded_slash_stays_inside_one_parameter() -> None:
    table = build_table([labelled("id", "/cats/{id}"), labelled("two", "/cats/{a}/{b}")])
    match = table.match("GET", "/cats/a%2Fb")
    assert isinstance(match, RouteMatch)
    assert match.route.config.internal_path == "/id"
    assert match.params == {"id": "a/b"}
    refused = table.match("GET", "/cats/..%2F..%2Fadmin")  # holds '..' segments once decoded
    assert isinstance(refused, NoMatch) and refused.bad_path is not None
    match = table.match("GET", "/cats/a%3Fb%23c")
    assert isinstance(match, RouteMatch) and match.params == {"id": "a?b#c"}


def test_config_rejects_dot_segments_in_templates() -> None:
    for path in ("/a/../b", "/a/./b", "/a/%2E%2E/b"):
        with pytest.raises(ConfigError):
            route_configs([router(path, "/x")])


# -- scale -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_table() -> RouteTable:
    routers = []
    for i in range(2500):
        routers.append(router(f"/svc{i}/items/{{id}}", f"/s{i}/one"))
        routers.append(router(f"/svc{i}/items/special", f"/s{i}/special"))
        routers.append(router(f"/svc{i}/{{kind}}/{{id}}.json", f"/s{i}/json", ("GET", "POST")))
        routers.append(router(f"/static/{i}", f"/static{i}", ("POST",)))
    return build_table(routers)


def test_ten_thousand_routes_answer_correctly(big_table: RouteTable) -> None:
    assert len(big_table) == 10_000
    rng = random.Random(10_000)
    for i in [0, 1, 2499, *rng.sample(range(2500), 200)]:
        item = rng.randrange(10**6)
        assert winner(big_table, "GET", f"/svc{i}/items/{item}") == f"s{i}/one"
        match = big_table.match("GET", f"/svc{i}/items/{item}")
        assert isinstance(match, RouteMatch) and match.params == {"id": str(item)}
        assert winner(big_table, "GET", f"/svc{i}/items/special") == f"s{i}/special"
        assert big_table.match("POST", f"/svc{i}/items/special") == NoMatch(allow="GET, HEAD")
        assert winner(big_table, "POST", f"/svc{i}/things/{item}.json") == f"s{i}/json"
        assert winner(big_table, "POST", f"/static/{i}") == f"static{i}"
        assert big_table.match("GET", f"/static/{i}") == NoMatch(allow="POST")
        assert big_table.match("GET", f"/svc{i}/items") == NoMatch()
    assert big_table.match("GET", "/svc2500/items/1") == NoMatch()
    assert big_table.match("GET", "/static/2500") == NoMatch()
