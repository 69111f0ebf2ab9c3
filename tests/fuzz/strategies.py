"""Hypothesis strategies for hostile input: mostly-valid structures with the nasty pieces mixed in.

Why not ``st.text()`` alone: random text almost never gets past the first check of a parser
(a template must start with ``/``, a config must be an object with ``routers``), so the code behind
it would go untested. Each strategy here draws from the grammar the parser expects and from the
pieces known to break parsers (percent-encodings, dot segments, surrogates, control characters,
huge numbers, deep nesting), so generated inputs reach every layer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from kairos.config.path_template import parse_template
from tests.fuzz.targets import b64url

# ---------------------------------------------------------------------------------------------------
# text pieces

# Lone surrogates: JSON "\ud800" escapes put them into config strings and JWT claims.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_character = st.one_of(
    st.characters(codec="utf-8"), surrogates, st.sampled_from("\x00\r\n\t\x7f\x85\xa0\u2028\ufeff")
)
nasty_text = st.text(any_character, max_size=12)
SPICY = (
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    "%",
    "%%",
    "%z",
    "%c0%ae",
    "%ff",
    "%00",
    "?",
    "#",
    ";",
    "..;",
    "{",
    "}",
    "{}",
    "{*}",
    "café",
    "caf%C3%A9",
    "\x00",
    " ",
    "\r\n",
    "\ud800",
)

# ---------------------------------------------------------------------------------------------------
# JSON-ish documents

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 65535, 65536, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
    st.sampled_from(SPICY),
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), nasty_text), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# Keys the loader knows, at every level: arbitrary values under real keys reach the validators.
CONFIG_KEYS = (
    "version",
    "routers",
    "jwt",
    "jwt_secret",
    "api_keys",
    "api_key_header",
    "trusted_proxies",
    "rate_limit",
    "cors",
    "server",
    "metrics",
    "compression",
    "circuit_breaker",
    "health_check",
    "ip_filter",
    "max_body_size",
    "security_headers",
    "ai",
    "external_path",
    "internal_path",
    "methods",
    "backends",
    "host",
    "port",
    "weight",
    "protocol",
    "load_balancing_strategy",
    "timeout_ms",
    "connect_timeout_ms",
    "retry",
    "retry_config",
    "auth_required",
    "required_roles",
    "auth",
    "request_transformation",
    "response_transformation",
    "cache",
    "ai_policy",
    "secret",
    "public_key",
    "algorithms",
    "audience",
    "issuer",
    "leeway_secs",
    "headers",
    "action",
    "name",
    "value",
    "pattern",
    "replacement",
    "condition",
    "_comment",
)

templates_simple = st.sampled_from(
    ["/", "/a", "/a/{id}", "/a/{id}/b", "/files/{name}.json", "/s/{*rest}", "/x/v{major}.{minor}", "/a//b"]
)


@st.composite
def valid_routes(draw: st.DrawFn) -> dict[str, Any]:
    external = draw(templates_simple)
    names = [part.strip("{}*").split("}")[0] for part in external.split("{")[1:]]
    internal = "/up/" + "/".join("{" + name + "}" for name in names) if names else "/up"
    if external.endswith("{*rest}"):
        internal = "/up/{*rest}"
    route: dict[str, Any] = {
        "external_path": external,
        "internal_path": internal,
        "methods": draw(st.lists(st.sampled_from(["GET", "post", "PUT", "DELETE"]), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        route["backends"] = [
            {"host": draw(st.sampled_from(["http://10.0.0.5", "https://api.internal"])), "port": 8080}
        ]
    else:
        route["host"], route["port"] = "http://legacy", 80
    if draw(st.booleans()):
        route["request_transformation"] = {
            "headers": [{"action": "set", "name": "X-Via", "value": "${route}"}]
        }
    return route


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {"version": 1, "routers": draw(st.lists(valid_routes(), max_size=3))}
    if draw(st.booleans()):
        document["jwt"] = {"secret": "${FUZZ_SECRET}", "algorithms": ["HS256"]}
    if draw(st.booleans()):
        document["trusted_proxies"] = ["10.0.0.0/8"]
    return document


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replace(document: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {**document, head: _replace(document[head], rest, new)}
    copy = list(document)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    """A valid config with 1-4 nodes replaced, keys added or removed, or wrapped: the documents an
    operator gets almost right, which is where validators go wrong."""
    document: Any = draw(valid_configs())
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(document)))
        node = document
        for part in path:
            node = node[part]
        kind = draw(st.sampled_from(["replace", "add", "remove", "wrap", "nest"]))
        if kind == "replace":
            new = draw(json_values(6))
        elif kind == "add" and isinstance(node, dict):
            new = {**node, draw(st.sampled_from(CONFIG_KEYS)): draw(json_values(4))}
        elif kind == "remove" and isinstance(node, dict) and node:
            drop = draw(st.sampled_from(sorted(node, key=str)))
            new = {key: value for key, value in node.items() if key != drop}
        elif kind == "wrap":
            new = [node]
        elif kind == "nest":
            new = {"_": node} if draw(st.booleans()) else {draw(st.sampled_from(CONFIG_KEYS)): node}
        else:
            new = draw(json_values(4))
        document = _replace(document, path, new)
    return document


def deeply_nested(depth: int) -> Any:
    document: Any = 1
    for _ in range(depth):
        document = [document]
    return document


config_texts = st.one_of(
    mutated_configs().map(lambda doc: json.dumps(doc, allow_nan=True)),
    st.text(any_character, max_size=40),
    st.sampled_from(["", "{", "[]", "null", '{"routers": [}', '{"version": NaN, "routers": []}']),
)

# ---------------------------------------------------------------------------------------------------
# templates and paths

param_names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
    st.sampled_from(["1", "1a", "²", "é", "", "a-b", "*x", "a b", "{a}"]),
)
literal_segments = st.one_of(
    st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True),
    st.sampled_from(SPICY),
    nasty_text,
)


@st.composite
def template_segments(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["literal", "param", "mixed", "catch", "junk"]))
    if kind == "literal":
        return draw(literal_segments)
    if kind == "param":
        return "{" + draw(param_names) + "}"
    if kind == "mixed":
        pieces = draw(st.lists(literal_segments, min_size=2, max_size=3))
        names = draw(st.lists(param_names, min_size=len(pieces) - 1, max_size=len(pieces) - 1))
        return "".join(
            piece + ("{" + name + "}" if i < len(names) else "")
            for i, (piece, name) in enumerate(zip(pieces, [*names, ""], strict=True))
        )
    if kind == "catch":
        return "{*" + draw(param_names) + "}"
    return draw(st.sampled_from(["{", "}", "{a}{b}", "{a", "a}", "{{a}}", "{*a}{b}", "{*a}x"]))


@st.composite
def templates(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(any_character, max_size=20))
    segments = draw(st.lists(template_segments(), min_size=1, max_size=5))
    return "/" + "/".join(segments)


def _parses(text: str) -> bool:
    try:
        parse_template(text)
    except ValueError:
        return False
    return True


# Templates that parse, for properties about what a parsed template does (a name used twice is the
# only way these fail to parse, and it is rare).
parseable_templates = st.builds(
    lambda segments: "/" + "/".join(segments),
    st.lists(
        st.one_of(
            st.from_regex(r"[A-Za-z0-9_~-]{1,6}", fullmatch=True),
            st.sampled_from(["café", "caf%C3%A9", "a%2Fb", "a b", "x;y", "@:", "", "%25"]),
            st.from_regex(r"\{[a-z][a-z0-9_]{0,4}\}", fullmatch=True),
            st.from_regex(r"[a-z]{0,3}\{[a-z][a-z0-9_]{0,4}\}\.[a-z]{1,4}", fullmatch=True),
        ),
        min_size=1,
        max_size=5,
    ),
).filter(_parses)


@st.composite
def raw_paths(draw: st.DrawFn) -> bytes:
    """Raw request paths: the route table's own segments, traversal spellings, junk encodings, and
    raw bytes an HTTP parser lets through (non-ASCII, backslashes, control characters)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    pieces = st.one_of(
        st.sampled_from(
            [
                "users",
                "me",
                "42",
                "files",
                "x.json",
                "v1.2",
                "static",
                "api",
                "v2",
                "cats",
                "chat",
                "orders",
                "caf%C3%A9",
                "café",
                "menu",
                "health-check",
                "a",
                "b",
                "..%2F..%2Fadmin",
                "..%5C..%5Cadmin",
                "..\\..\\admin",
                "%2e%2e%2fadmin",
                "a%2F..%2F..%2Fb",
                "%2e%2e",
                ".%2e",
                "%2e.",
                "..%00",
                "%252e%252e",
                "..;",
                "%3F",
                "%23",
                "%C0%AE%C0%AE",
                "%ED%A0%80",
                "%FF",
            ]
        ),
        st.sampled_from(SPICY),
        st.text(st.characters(codec="latin-1"), max_size=6),
    )
    segments = draw(st.lists(pieces, min_size=1, max_size=6))
    path = "/" + "/".join(segments)
    return path.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------------
# JWT

algorithms = st.sampled_from(
    ["HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "none", "None", "hs256", ""]
)
header_objects = st.fixed_dictionaries(
    {"alg": st.one_of(algorithms, json_scalars)},
    optional={"typ": st.sampled_from(["JWT", "at+jwt"]), "kid": json_scalars, "crit": json_values(3)},
)


@st.composite
def three_part_tokens(draw: st.DrawFn) -> str:
    """``header.payload.signature``: a JSON header (real algorithms and junk), a payload that is JSON
    or not, a signature of any bytes; each segment sometimes raw text instead of base64url."""

    def segment(data: bytes) -> str:
        if draw(st.integers(0, 5)) == 0:
            return draw(st.text(st.characters(codec="latin-1"), max_size=12))
        return b64url(data)

    header = json.dumps(draw(st.one_of(header_objects, json_values(4))), allow_nan=True).encode()
    payload = json.dumps(draw(st.one_of(claims(), json_values(4))), allow_nan=True).encode(
        "utf-8", "surrogatepass"
    )
    return ".".join([segment(header), segment(payload), segment(draw(st.binary(max_size=70)))])


def claims() -> st.SearchStrategy[dict[str, Any]]:
    numbers = st.one_of(
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(),
        st.sampled_from([True, "1", None, 10**30]),
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "sub": json_scalars,
            "exp": numbers,
            "nbf": numbers,
            "iat": numbers,
            "aud": st.one_of(st.sampled_from(["api", "web", "other"]), json_values(3)),
            "iss": json_scalars,
            "jti": json_scalars,
            "roles": st.one_of(nasty_text, json_values(4)),
        },
    )


authorization_values = st.one_of(
    st.binary(max_size=60),
    st.builds(
        lambda scheme, space, token: scheme + space + token.encode("latin-1", "replace"),
        st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Bearer:", b"", b"Token"]),
        st.sampled_from([b" ", b"  ", b"\t", b"", b" \x85", b"\xa0"]),
        three_part_tokens(),
    ),
)

# ---------------------------------------------------------------------------------------------------
# headers

HEADER_NAMES = (
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-foo",
    b"host",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"content-length",
    b"content-type",
    b"date",
    b"set-cookie",
    b"sec-websocket-key",
    b"sec-websocket-protocol",
    b"authorization",
    b"x-api-key",
    b"x-custom",
    b"user-agent",
    b"x-legacy",
)
header_names = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.sampled_from(HEADER_NAMES).map(bytes.upper),
    st.sampled_from(HEADER_NAMES).map(bytes.title),
    st.binary(min_size=1, max_size=10),
)
header_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [
            b"",
            b"close",
            b"keep-alive, x-custom",
            b"Upgrade, X-Request-ID",
            b"x-forwarded-for",
            b"set-cookie , date",
            b"chunked",
            b"5",
            b"0005",
            b"\xb2",
            b"-1",
            b"1e3",
            b"1, 2",
            b"10.0.0.1, 203.0.113.9",
            b"unknown, ::1",
            b"a\r\nInjected: 1",
            b"\x00",
            b"\xff\xfe",
        ]
    ),
)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)
asgi_header_lists = header_lists.map(lambda headers: [(name.lower(), value) for name, value in headers])

# ---------------------------------------------------------------------------------------------------
# transformation rules

# Patterns that are applied to generated values: valid ones with at most one quantifier on a simple
# atom, and junk without quantifiers, so no generated pair can backtrack catastrophically.
SAFE_PATTERNS = (
    "^Token (.+)$",
    "^-(\\w+)$",
    "(?P<v>[0-9]+)",
    "a",
    "^/v1/(.*)$",
    "^/v1/users/(\\d+)$",
    "x{2,3}",
    "(a)?b",
    "^",
    "$",
    "",
    "\\s",
    "[\\r\\n]",
    "(?i)OLDAPP",
    "é",
    "(?P<name>[a-z]+)=(?P<value>.*)",
)
# Patterns whose compilation itself is the test; never applied to anything long.
COMPILE_ONLY_PATTERNS = (
    "a{4294967296}",
    "(" * 3000 + ")" * 3000,
    "(" * 50,
    "[",
    "(?P<1>a)",
    "(?<=a+)b",
    "\\",
    "(?P<n>a)(?P=n)",
    "*",
    "a{3,2}",
    "(?x) a # comment",
)
_safe_patterns = st.sampled_from(SAFE_PATTERNS)
# Weighted by repetition (one_of picks a branch uniformly): mostly valid, so that rule lists compile
# often enough for their application to be tested, while every invalid shape keeps coming up.
patterns = st.one_of(
    _safe_patterns,
    _safe_patterns,
    _safe_patterns,
    st.text(st.sampled_from("()[]|^$.\\abc-:\x00\r\n"), max_size=8),
    st.sampled_from(COMPILE_ONLY_PATTERNS),
)
_good_replacements = st.sampled_from(
    ["$1", "${1}", "Bearer $1", "$$", "$0", "/v2/$1", "x", "", "%s", "${name}"]
)
replacements = st.one_of(
    _good_replacements,
    _good_replacements,
    st.sampled_from(["$name", "${value}:desc", "$9", "${²}", "${" + "9" * 5000 + "}", "$", "${"]),
    st.sampled_from(["\r\nInjected: 1", "a\x00b", "a\tb", "\\1", "%s", "%", "${1}\n", "/€", "\ud800"]),
    nasty_text,
)
_good_templates = st.sampled_from(["${client_ip}", "${request_id}", "${route}", "${jwt.sub}", "v", "", "a b"])
variable_templates = st.one_of(
    _good_templates,
    _good_templates,
    st.sampled_from(
        [
            "${client_ip}",
            "${request_id}",
            "${route}",
            "${path.id}",
            "${path.nope}",
            "${jwt.sub}",
            "${jwt.roles}",
            "${env.FUZZ_SECRET}",
            "${env.NOT_SET_ANYWHERE}",
            "${unknown}",
            "$${client_ip}",
            "${",
            "${}",
            "kairos ${route} ${request_id}",
            "a\r\nb",
            "\ud800",
            "€",
        ]
    ),
    nasty_text,
)
_good_names = st.sampled_from(
    ["X-Custom", "x-custom", "User-Agent", "Authorization", "X-Legacy", "Set-Cookie"]
)
rule_header_names = st.one_of(
    *[_good_names] * 8,
    st.sampled_from(
        ["Host", "Content-Length", "X-Request-ID", "Connection", "Transfer-Encoding", "X-Forwarded-For"]
    ),
    st.sampled_from(["", "Bad Name", "X:Y", "é", "\ud800"]),
)
conditions = st.one_of(
    st.builds(
        lambda subject, name, test: {subject: name, **test},
        st.sampled_from(["header", "query", "response_header"]),
        st.sampled_from(["x-legacy", "user-agent", "a", "Bad Name"]),
        st.one_of(
            st.just({}),
            st.fixed_dictionaries({"equals": st.one_of(st.sampled_from(["1", ""]), json_scalars)}),
            st.fixed_dictionaries({"matches": patterns}),
            st.fixed_dictionaries({"present": st.one_of(st.booleans(), json_scalars)}),
            st.fixed_dictionaries({"equals": st.just("1"), "present": st.just(True)}),
        ),
    ),
    st.fixed_dictionaries({"path": patterns}),
    st.fixed_dictionaries(
        {"status": st.one_of(st.sampled_from([404, [401, 403], [], 99, 1000, True]), json_scalars)}
    ),
    json_values(3),
)


@st.composite
def rules(draw: st.DrawFn, query: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(["add", "set", "remove", "replace"]))
        if draw(st.integers(0, 9))
        else draw(json_scalars),
        "name": draw(st.one_of(st.sampled_from(["sort", "user", "debug", "a"]), rule_header_names))
        if query
        else draw(rule_header_names),
    }
    needs = {"add": ("value",), "set": ("value",), "replace": ("pattern", "replacement")}.get(
        rule["action"], ()
    )
    for key, strategy in (
        ("value", variable_templates),
        ("pattern", patterns),
        ("replacement", replacements),
        ("condition", conditions),
    ):
        # What the action needs is there 9 times in 10; anything else 1 time in 4.
        if draw(st.integers(0, 9)) < (9 if key in needs else 0) or draw(st.integers(0, 3)) == 0:
            rule[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        rule[draw(st.sampled_from(CONFIG_KEYS))] = draw(json_values(3))
    return rule


@st.composite
def transformations(draw: st.DrawFn) -> dict[str, Any]:
    """{"request_transformation": ..., "response_transformation": ...}: rule lists of every action
    with valid and invalid names, values, patterns, replacements and conditions."""
    request: dict[str, Any] = {}
    response: dict[str, Any] = {}
    if draw(st.booleans()):
        request["headers"] = draw(st.lists(rules(), max_size=4))
    if draw(st.booleans()):
        request["query_params"] = draw(st.lists(rules(query=True), max_size=3))
    if draw(st.booleans()):
        request["path"] = {"pattern": draw(patterns), "replacement": draw(replacements)}
    if draw(st.booleans()):
        body = {
            "set": {"meta.request_id": "${request_id}", "a": draw(json_values(3))},
            "remove": draw(
                st.lists(
                    st.sampled_from(["password", "a.b", "password", "meta", "", ".", "x..y"]), max_size=2
                )
            ),
            "rename": {"name": draw(st.sampled_from(["full_name", "a.b.c", "full_name", "meta.name", ""]))},
            "add": {"meta.source": draw(variable_templates)},
        }
        request["body"] = body
        response["body"] = body
    if draw(st.booleans()):
        response["headers"] = draw(st.lists(rules(), max_size=4))
    if draw(st.booleans()):
        response["status_code_mappings"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "from": st.sampled_from([200, 404, 418, 404, 99, "404"]),
                        "to": st.sampled_from([200, 400, 502, 1000]),
                    },
                    optional={"condition": conditions},
                ),
                max_size=2,
            )
        )
    if draw(st.integers(0, 5)) == 0:
        request["max_body_bytes"] = draw(st.one_of(st.sampled_from([0, 1, 10, -1]), json_scalars))
    document: dict[str, Any] = {}
    if bool(request) or draw(st.booleans()):
        document["request_transformation"] = request if draw(st.integers(0, 9)) else draw(json_values(3))
    if response:
        document["response_transformation"] = response
    return document


json_bodies = st.one_of(
    st.just(b'{"password": "x", "name": "n", "meta": {"a": 1}}'),
    st.just(b'{"x": "\\ud800", "name": "\\udfff"}'),
    st.just(b"[1, 2]"),
    st.just(b'{"a": ' * 40 + b"1" + b"}" * 40),
    st.binary(max_size=30),
    json_values(6).map(lambda value: json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")),
)
