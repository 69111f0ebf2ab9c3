"""The fuzz targets: each checks one parser's contract on one input, whatever the input is.

Two layers per target, so one set of assertions serves three drivers:

- ``check_*(structured input)``: the properties, called by the Hypothesis tests with generated
  structures (``test_*.py``);
- ``TARGETS[name](data: bytes)``: a total decoder from bytes to that structure, then the check. The
  seed corpus (``corpus/<name>/``, replayed by ``test_corpus.py``) and the long run
  (``harness.py``, atheris when it is installed) drive these, since coverage-guided mutation works
  on bytes.

The byte formats are meant to be written by hand (see ``corpus/README.md``). A check returns
normally when the input was handled as the contract says (accepted, or refused the project's own
way) and raises otherwise: AssertionError for a broken property, or the unexpected exception
itself. ``tolerate_known`` lets exceptions registered in ``known_bugs`` pass, so a long run keeps
looking for new bugs past the reported ones.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from kairos.auth.authenticator import Authenticator, AuthFailure, Identity
from kairos.config import ConfigError, LoadedConfig, Problem, load_data, load_text
from kairos.config.jwt import JwtConfig
from kairos.config.model import ApiKeyConsumer, RouteConfig
from kairos.config.path_template import (
    SEGMENT_SAFE,
    CatchAll,
    Literal,
    Param,
    PathTemplate,
    Pattern,
    encode_segment_value,
    parse_template,
)
from kairos.config.transform import RequestTransformation, ResponseTransformation
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.middleware.routing import route_path
from kairos.middleware.transform import TransformMiddleware
from kairos.proxy.headers import HOP_BY_HOP, downstream_response_headers, upstream_request_headers
from kairos.routing.matcher import NoMatch, RouteMatch, RouteTable
from kairos.routing.route import Route, compile_route
from tests.fuzz.known_bugs import tolerated

Headers = list[tuple[bytes, bytes]]
ENVIRON: Mapping[str, str] = {"FUZZ_SECRET": "a-fuzz-secret-that-is-long-enough-0123456789", "EMPTY": ""}
_CONTROL = frozenset(b"\r\n\x00")


# ---------------------------------------------------------------------------------------------------
# 1. config loader: every document loads or raises ConfigError whose problems name a path; what loads
#    compiles into routes and a route table.


def check_config_document(document: Any) -> LoadedConfig | None:
    try:
        loaded = load_data(document, "fuzz.json", environ=ENVIRON)
    except ConfigError as error:
        _check_config_error(error, document)
        return None
    _check_compiles(loaded)
    return loaded


def check_config_text(text: str) -> LoadedConfig | None:
    try:
        loaded = load_text(text, "fuzz.json")
    except ConfigError as error:
        try:
            document: Any = json.loads(text)
        except (ValueError, RecursionError):
            document = None
        _check_config_error(error, document)
        return None
    _check_compiles(loaded)
    return loaded


_PSEUDO_PATHS = frozenset({"(root)", "(file)"})
# Paths that may be named although the document lacks them: required keys, and aliases the loader
# reports by the name the models use.
_IMPLIED_TOP_KEYS = frozenset({"routers", "version", "jwt", "jwt_secret"})


def _check_config_error(error: ConfigError, document: Any) -> None:
    assert error.problems, "a ConfigError must list at least one problem"
    str(error)  # the CLI prints it: it must render whatever the values are
    for problem in error.problems:
        _check_problem(problem, document)
    for warning in error.warnings:
        _check_problem(warning, document)


def _check_problem(problem: Problem, document: Any) -> None:
    assert isinstance(problem, Problem), problem
    assert isinstance(problem.path, str) and problem.path, f"problem without a path: {problem}"
    assert isinstance(problem.message, str) and problem.message, f"problem without a message: {problem}"
    str(problem)
    if problem.path in _PSEUDO_PATHS or not isinstance(document, dict):
        return
    path = problem.path
    keys = {str(key) for key in (*document, *_IMPLIED_TOP_KEYS)}
    # A key may itself hold '.' or '[' ("rou.ers"), so compare prefixes rather than split the path.
    assert any(path == key or path.startswith((key + ".", key + "[")) for key in keys), (
        f"problem path {path!r} names nothing in the document (keys: {sorted(map(str, document))[:20]})"
    )


def _check_compiles(loaded: LoadedConfig) -> None:
    """A config that validated must become a running route table: the gateway compiles exactly this
    at startup and on every reload, so a failure here is an outage with a 'valid' config."""
    states: dict[str, Any] = {}
    routes = [compile_route(index, route, states) for index, route in enumerate(loaded.config.routers)]
    table = RouteTable(routes)
    for route in routes:  # every static route answers its own path
        if not route.template.param_names and route.template.catch_all is None:
            method = next(iter(sorted(route.methods)))
            result = table.match(method, canonical_path(route.template), websocket=route.websocket)
            assert isinstance(result, RouteMatch), (route.name, result)


# ---------------------------------------------------------------------------------------------------
# 2. templates and the matcher


def sample_values(template: PathTemplate) -> dict[str, str]:
    """Distinct values for every parameter, of characters that no literal of the template holds, so
    a mixed segment (``{a}x{b}``) can be split only one way (the catch-all gets three segments)."""
    used = {
        char
        for segment in template.segments
        if isinstance(segment, Literal | Pattern)
        for char in _text(segment)
    }
    pool = [char for char in "qzQZjkJK" + "".join(map(chr, range(0x4E00, 0x4E40))) if char not in used]
    values = {name: pool[2 * index] + pool[2 * index + 1] for index, name in enumerate(template.param_names)}
    if template.catch_all is not None:
        values[template.catch_all] = "rest/of/it"
    return values


def _text(segment: Literal | Pattern) -> str:
    return segment.text if isinstance(segment, Literal) else "".join(segment.literals)


def canonical_path(template: PathTemplate, values: Mapping[str, str] | None = None) -> str:
    """The encoded request path that the template matches with ``values`` (``sample_values`` by
    default): literals encoded as the matcher's static index spells them."""
    values = sample_values(template) if values is None else values
    parts: list[str] = []
    for segment in template.segments:
        if isinstance(segment, Literal):
            parts.append(encode_segment_value(segment.text) if segment.text else "")
        elif isinstance(segment, Param):
            parts.append(encode_segment_value(values[segment.name]))
        elif isinstance(segment, CatchAll):
            parts.append(values[segment.name])
        else:
            text = ""
            for index, piece in enumerate(segment.literals):
                if index:
                    text += encode_segment_value(values[segment.names[index - 1]])
                text += _quote_piece(piece)
            parts.append(text)
    return "/" + "/".join(parts)


def _quote_piece(piece: str) -> str:
    return quote(piece, safe=SEGMENT_SAFE)


def route_for(
    external: str,
    internal: str,
    methods: Sequence[str] = ("GET",),
    *,
    index: int = 0,
    websocket: bool = False,
    **extra: Any,
) -> Route:
    """One compiled route to a never-contacted backend (``extra``: more route keys)."""
    config = RouteConfig.model_validate(
        {
            "external_path": external,
            "internal_path": internal,
            "methods": list(methods),
            "backends": [{"host": "ws://127.0.0.1" if websocket else "http://127.0.0.1", "port": 9}],
            **extra,
        }
    )
    return compile_route(index, config, {})


def check_template(text: str) -> PathTemplate | None:
    """``parse_template`` parses or raises ValueError. A parsed template compiles into a route (with
    itself as ``internal_path``) that matches its canonical path, with the parameters round-tripping
    and the upstream path equal to the request path."""
    try:
        template = parse_template(text)
    except ValueError:
        return None
    assert template.source == text
    assert len(template.segments) == text.count("/")
    assert len(set(template.param_names)) == len(template.param_names), "a parameter appears twice"
    route = route_for(text, text)
    table = RouteTable([route])
    values = sample_values(template)
    path = canonical_path(template, values)
    result = table.match("GET", path)
    assert isinstance(result, RouteMatch), f"{text!r} does not match its own path {path!r}: {result}"
    assert result.params == values, (text, path, result.params)
    assert route.upstream_path.build(result.params) == path
    check_route_match(result)
    return template


def _dot_segment(text: str) -> bool:
    return any(part in (".", "..") for part in text.replace("\\", "/").split("/"))


def check_route_match(result: RouteMatch | NoMatch) -> None:
    """What a match hands to the proxy can never climb out of ``internal_path``.

    For a route that does not opt out (``allow_dot_segment_params``): no parameter holds a ``.`` or
    ``..`` segment once decoded and split on ``/`` or ``\\`` (a backend that decodes ``%2F`` or reads
    ``\\`` as a separator would climb). For every route: the upstream path starts with ``/``, has no
    raw ``?`` or ``#``, no segment that decodes to ``.``/``..``, and exactly the template's segments
    (a catch-all may add some, never remove one)."""
    if not isinstance(result, RouteMatch):
        assert result.bad_path is None or isinstance(result.bad_path, str)
        return
    route, params = result.route, result.params
    tail = route.template.catch_all
    assert set(params) == set(route.template.param_names), (params, route.template.param_names)
    if not getattr(route, "allow_dot_segment_params", False):
        for name, value in params.items():
            decoded = "/".join(unquote(part) for part in value.split("/")) if name == tail else value
            assert not _dot_segment(decoded), f"RouteMatch carries {name}={value!r} ({route.name})"
    upstream = route.upstream_path.build(params)
    check_upstream_path(upstream, route.config.internal_template, catch_all=tail is not None)


def check_upstream_path(upstream: str, template: PathTemplate, catch_all: bool) -> None:
    assert upstream.startswith("/"), upstream
    assert "?" not in upstream and "#" not in upstream, f"raw ? or # upstream: {upstream!r}"
    segments = upstream[1:].split("/")
    for segment in segments:
        assert unquote(segment, errors="replace") not in (".", ".."), f"dot segment upstream: {upstream!r}"
    expected = len(template.segments)
    if catch_all:  # the external catch-all's value is the rest of the path: it may add segments
        assert len(segments) >= expected, (upstream, template.source)
    else:
        assert len(segments) == expected, f"{upstream!r} has more segments than {template.source!r}"


# Routes of every kind the matcher distinguishes: static (ASCII and not), whole-segment and mixed
# parameters, catch-alls at two depths, a WebSocket route sharing a path, method-specific routes.
ROUTE_SHAPES: tuple[tuple[str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("/", "/", ("GET",), {}),
    ("/health-check", "/internal/health", ("GET",), {}),
    ("/caf%C3%A9/menu", "/cafe/menu", ("GET",), {}),
    ("/users/me", "/v1/me", ("GET",), {}),
    ("/users/{id}", "/v1/users/{id}", ("GET", "PUT", "DELETE"), {}),
    ("/users/{id}/files/{name}.json", "/v1/files/{id}/{name}.json", ("GET",), {}),
    ("/users/{id}/v{major}.{minor}", "/v{major}/{id}/{minor}", ("GET",), {}),
    ("/static/{*rest}", "/assets/{*rest}", ("GET",), {}),
    ("/api/{version}/{*path}", "/backend/{version}/{*path}", ("GET", "POST"), {}),
    ("/cats/{id}", "/echo/cats/{id}", ("GET",), {}),
    ("/a//b/", "/double//slash/", ("GET",), {}),
    ("/chat/{room}", "/rooms/{room}", ("GET",), {"protocol": "websocket"}),
    ("/chat/{room}", "/http/rooms/{room}", ("GET",), {}),
    ("/orders/{id}", "/orders/{id}", ("POST",), {}),
)


@cache
def route_table() -> RouteTable:
    return RouteTable(
        route_for(
            external, internal, methods, index=index, websocket=extra.get("protocol") == "websocket", **extra
        )
        for index, (external, internal, methods, extra) in enumerate(ROUTE_SHAPES)
    )


def check_raw_path(raw: bytes, methods: Iterable[str] = ("GET", "POST")) -> None:
    """Any raw path, as an ASGI server puts it in ``scope["raw_path"]``: ``route_path`` reduces it to
    the matcher's form (also below a mount prefix) and ``RouteTable.match`` answers RouteMatch or
    NoMatch, never raising; the string read as latin-1 and handed to ``match`` directly must not
    raise either."""
    table = route_table()
    scope = {"type": "http", "raw_path": raw, "path": unquote(raw.decode("latin-1")), "root_path": ""}
    path = route_path(scope)
    assert path.isascii(), path
    for root in ("/gw", "/café", "/gw/"):  # mounted under a prefix: the prefix is stripped first
        mounted = route_path({**scope, "root_path": root})
        assert isinstance(mounted, str)
        check_route_match(table.match("GET", mounted))
    for method in methods:
        for websocket in (False, True):
            check_route_match(table.match(method, path, websocket=websocket))
    check_route_match(table.match("GET", raw.decode("latin-1")))


# ---------------------------------------------------------------------------------------------------
# 4. JWT / Authorization parsing


JWT_SECRET = "a-jwt-secret-for-the-fuzz-tests-0123456789"
API_KEY = "fuzz-api-key-0123456789"
_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


@dataclass(frozen=True, slots=True)
class AuthSetup:
    """One authenticator and the keys to check independently what it accepts."""

    name: str
    authenticator: Authenticator
    algorithms: frozenset[str]
    secret: bytes | None = None
    rsa_public: rsa.RSAPublicKey | None = None
    ec_public: ec.EllipticCurvePublicKey | None = None
    leeway: float = 30.0
    signers: dict[str, Any] = field(default_factory=dict)  # private keys, for making valid tokens


@cache
def auth_setups() -> tuple[AuthSetup, ...]:
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_private = ec.generate_private_key(ec.SECP256R1())

    def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    consumers = (ApiKeyConsumer(name="fuzz", keys=(API_KEY,)),)
    mixed = JwtConfig(
        secret=JWT_SECRET,
        public_key=pem(rsa_private),
        algorithms=("HS256", "HS384", "HS512", "RS256", "RS512", "PS256", "PS384"),
        required_claims=("sub",),
    )
    elliptic = JwtConfig(public_key=pem(ec_private), algorithms=("ES256",), audience=("api", "web"))
    signers = {"rsa": rsa_private, "ec": ec_private}
    return (
        AuthSetup(
            "hs+rs+ps",
            Authenticator(mixed, consumers),
            frozenset(mixed.algorithms or ()),
            secret=JWT_SECRET.encode(),
            rsa_public=rsa_private.public_key(),
            signers=signers,
        ),
        AuthSetup(
            "es",
            Authenticator(elliptic),
            frozenset(elliptic.algorithms or ()),
            ec_public=ec_private.public_key(),
            signers=signers,
        ),
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """As leniently as python-jose reads a segment (UTF-8 bytes, padded by their count, characters
    outside the alphabet skipped), so the signature checked here is the one the verifier checked.
    (So a token stays valid with junk bytes inserted or '=' appended: python-jose's leniency, noted
    in the fuzz report; the PS path in kairos/auth/pss.py is strict.)"""
    data = text.encode("utf-8")
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def sign_token(header: Mapping[str, Any], payload: bytes, key: str = "secret") -> str:
    """A compact JWS signed with one of the fuzz keys: ``secret`` (HS*), ``rsa`` (RS*/PS*), ``ec``."""
    setup = auth_setups()[0]
    encoded = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    algorithm = str(header.get("alg", "HS256"))
    digest = _HASHES.get(algorithm[-3:], hashes.SHA256)()
    if key == "secret":
        signature = hmac.new(JWT_SECRET.encode(), encoded.encode(), digest.name).digest()
    elif key == "rsa":
        private = setup.signers["rsa"]
        scheme = (
            padding.PSS(padding.MGF1(digest), digest.digest_size)
            if algorithm.startswith("PS")
            else padding.PKCS1v15()
        )
        signature = private.sign(encoded.encode(), scheme, digest)
    else:
        r, s = decode_dss_signature(setup.signers["ec"].sign(encoded.encode(), ec.ECDSA(digest)))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{encoded}.{b64url(signature)}"


def independently_valid(setup: AuthSetup, token: str, now: float) -> bool:
    """Whether ``token`` is one the setup's keys really signed, with an allowed algorithm of the
    key's own family, and not expired: checked with ``hmac``/``cryptography`` directly, not with the
    code under test."""
    try:
        head, body, signature_text = token.split(".")
        header = json.loads(_b64url_decode(head))
        signature = _b64url_decode(signature_text)
        claims = json.loads(_b64url_decode(body))
    except (ValueError, binascii.Error, RecursionError):
        return False
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return False
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in setup.algorithms or algorithm[-3:] not in _HASHES:
        return False
    digest = _HASHES[algorithm[-3:]]()
    signed = f"{head}.{body}".encode()
    try:
        if algorithm.startswith("HS"):
            if setup.secret is None:
                return False
            expected = hmac.new(setup.secret, signed, digest.name).digest()
            if not hmac.compare_digest(expected, signature):
                return False
        elif algorithm.startswith(("RS", "PS")):
            if setup.rsa_public is None:
                return False
            scheme = (
                padding.PSS(padding.MGF1(digest), digest.digest_size)
                if algorithm.startswith("PS")
                else padding.PKCS1v15()
            )
            setup.rsa_public.verify(signature, signed, scheme, digest)
        elif algorithm.startswith("ES"):
            if setup.ec_public is None or len(signature) != 64:
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            setup.ec_public.verify(encode_dss_signature(r, s), signed, ec.ECDSA(digest))
        else:
            return False
    except InvalidSignature:
        return False
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp < now - setup.leeway:
        return False
    return not (isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now + setup.leeway)


def check_authorization(headers: Headers) -> None:
    """Whatever the headers hold, ``authenticate`` returns an Identity or raises AuthFailure; an
    Identity only for an API key we issued or a token our keys really signed (no forgery, no
    algorithm confusion, nothing expired)."""
    now = time.time()
    for setup in auth_setups():
        for accept in ("any", "jwt", "api_key"):
            try:
                identity = setup.authenticator.authenticate(headers, accept)
            except AuthFailure as failure:
                assert isinstance(failure.message, str) and failure.message
                continue
            assert isinstance(identity, Identity)
            if identity.kind == "api_key":
                sent = [value for name, value in headers if name == b"x-api-key"]
                assert sent and sent[-1].decode("latin-1") == API_KEY, identity
                continue
            authorization = [value for name, value in headers if name == b"authorization"][-1]
            token = authorization.decode("latin-1").strip().partition(" ")[2].strip()
            assert independently_valid(setup, token, now), f"{setup.name} accepted {token!r}"


def authorization_headers(value: bytes) -> Headers:
    return [(b"authorization", value)]


# ---------------------------------------------------------------------------------------------------
# 5. header rewriting


_HOP = frozenset(name.decode() for name in HOP_BY_HOP)
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= {token.strip().lower().decode("latin-1") for token in value.split(b",")}
    return named - {"keep-alive", "close", "upgrade", ""}


def check_upstream_headers(headers: Headers, peer: str = "203.0.113.7") -> None:
    """ASGI request headers (names lower-case, as uvicorn and hypercorn deliver them) to upstream
    headers: never raises; no hop-by-hop or Proxy-* header, nor one ``Connection`` names; exactly
    one X-Forwarded-For (the peer alone unless the peer is trusted) and one X-Request-ID; no
    Content-Length next to Transfer-Encoding; no WebSocket handshake header on an upgrade."""
    named = _connection_named(headers)
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    lengths = [value for name, value in headers if name == b"content-length"]
    for trusted in (False, True):
        for websocket in (False, True):
            result = upstream_request_headers(
                headers,
                peer=peer,
                peer_trusted=trusted,
                scheme="https",
                request_id="fuzz-request-id",
                websocket=websocket,
            )
            names = [name.lower() for name, _ in result.headers]
            for name in names:
                assert name not in _HOP and not name.startswith("proxy-"), f"hop-by-hop {name!r} sent"
                assert name not in named or name.startswith("x-forwarded-") or name == "x-request-id", (
                    f"{name!r} named by Connection was sent"
                )
                assert not (websocket and name in _HANDSHAKE), name
            assert names.count("x-forwarded-for") == 1, names
            assert names.count("x-request-id") == 1, names
            assert names.count("x-forwarded-proto") == 1, names
            assert names.count("x-forwarded-host") <= 1, names
            assert "host" not in names
            values = dict((name.lower(), value) for name, value in result.headers)
            assert values["x-request-id"] == "fuzz-request-id"
            forwarded = values["x-forwarded-for"]
            assert forwarded == peer if not trusted else forwarded.endswith(peer), forwarded
            if chunked:
                assert result.chunked and result.content_length is None
                if lengths and all(value.isdigit() and len(value) < 4000 for value in lengths):
                    assert "content-length" not in names, "both framings forwarded"


# End-to-end response headers that no rule of a proxy drops (unless Connection names them).
_END_TO_END = frozenset({b"content-type", b"set-cookie", b"cache-control", b"etag", b"location", b"x-custom"})


def check_downstream_headers(headers: Headers) -> None:
    """Upstream response headers (any case) to the client: never raises; names lower-cased; no
    hop-by-hop, Proxy-*, Date or Connection-named header; exactly one X-Request-ID, ours, last;
    nothing invented or reordered (the rest is a subsequence of the input), and end-to-end headers
    all kept, repeated ones repeated (two Set-Cookie stay two)."""
    out = downstream_response_headers(headers, b"fuzz-request-id")
    named = {name.encode("latin-1") for name in _connection_named(headers)}
    assert out[-1] == (b"x-request-id", b"fuzz-request-id")
    assert [name for name, _ in out].count(b"x-request-id") == 1, out
    lowered = [(name.lower(), value) for name, value in headers]
    rest = iter(lowered)
    for name, value in out[:-1]:
        assert name not in HOP_BY_HOP and not name.startswith(b"proxy-") and name != b"date", name
        assert name not in named, f"{name!r} named by Connection was passed on"
        assert (name, value) in rest, f"{(name, value)!r} invented or reordered"  # consumes `rest`
    for name in _END_TO_END - named:
        assert [h for h in out if h[0] == name] == [h for h in lowered if h[0] == name], name


def check_headers(headers: Headers) -> None:
    check_upstream_headers([(name.lower(), value) for name, value in headers])
    check_downstream_headers(headers)


def decode_header_lines(data: bytes) -> Headers:
    """``name: value`` lines (LF-separated; a value may hold any byte but LF, CR included)."""
    headers: Headers = []
    for line in data.split(b"\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name, value[1:] if value.startswith(b" ") else value))
    return headers


# ---------------------------------------------------------------------------------------------------
# 6. transformation rules


@dataclass(frozen=True, slots=True)
class TransformInput:
    """A request (and the upstream's answer) for TransformMiddleware, in the rules' own terms."""

    rules: Any  # {"request_transformation": ..., "response_transformation": ...}, any JSON
    headers: Headers = field(default_factory=list)
    raw_path: bytes = b"/users/42"
    query: bytes = b""
    method: str = "GET"
    body: bytes = b""
    status: int = 200
    response_headers: Headers = field(default_factory=list)
    response_body: bytes = b""
    claims: Mapping[str, Any] = field(default_factory=dict)


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never really waits (every awaitable below is immediate) without an
    event loop: fast enough for thousands of examples, and a hidden ``await`` on I/O shows up."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("the transformation awaited something that was not immediately ready")


def check_transform(case: TransformInput) -> bool:
    """Rule configs validate (or raise ValidationError, what the loader turns into ConfigError);
    compiled rules applied to any request and response never raise and never put CR, LF or NUL
    into a header value that the input did not already have. Checked standalone and inside the
    gateway (with a matched route, parameters and a verified identity). Returns whether the rules
    compiled."""
    rules = case.rules if isinstance(case.rules, dict) else {}
    try:
        request = (
            RequestTransformation.model_validate(rules["request_transformation"])
            if rules.get("request_transformation") is not None
            else None
        )
        response = (
            ResponseTransformation.model_validate(rules["response_transformation"])
            if rules.get("response_transformation") is not None
            else None
        )
    except ValidationError:
        return False
    tainted = any(_CONTROL & set(value) for _, value in (*case.headers, *case.response_headers))
    standalone = TransformMiddleware(_UpstreamApp(case), request, response)
    _run_transform(standalone, case, None, tainted)
    route = _gateway_route(rules)
    if route is not None:
        exchange = Exchange("fuzz-request-id", "198.51.100.4", 0.0, route=route, params={"id": "42"})
        exchange.identity = Identity("jwt", "fuzz", frozenset(), dict(case.claims))
        _run_transform(TransformMiddleware(_UpstreamApp(case)), case, exchange, tainted)
    return True


def _gateway_route(rules: dict[str, Any]) -> Route | None:
    sides: dict[str, Any] = {
        key: rules.get(key) for key in ("request_transformation", "response_transformation")
    }
    try:
        return route_for("/users/{id}", "/v1/users/{id}", ("GET", "POST", "HEAD"), **sides)
    except ValidationError:
        return None  # not reached for rules that validated on their own; kept for safety


class _UpstreamApp:
    """The app behind the transform: answers with the case's response and keeps each scope it saw."""

    def __init__(self, case: TransformInput) -> None:
        self.case = case
        self.seen: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "http.request"
        self.seen.append(scope)
        case = self.case
        await send({"type": "http.response.start", "status": case.status, "headers": case.response_headers})
        await send({"type": "http.response.body", "body": case.response_body})


def _run_transform(
    middleware: TransformMiddleware, case: TransformInput, exchange: Exchange | None, tainted: bool
) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": case.method,
        "path": unquote(case.raw_path.decode("latin-1")),
        "raw_path": case.raw_path,
        "query_string": case.query,
        "headers": list(case.headers),
        "client": ("198.51.100.4", 4242),
    }
    if exchange is not None:
        scope[SCOPE_KEY] = exchange
    else:
        scope["state"] = {"identity": Identity("jwt", "fuzz", frozenset(), dict(case.claims))}
    sent: list[dict[str, Any]] = []
    body = [{"type": "http.request", "body": case.body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    _drive(middleware(scope, receive, send))
    app = middleware.app
    assert isinstance(app, _UpstreamApp)
    inner = app.seen
    assert sent and sent[0]["type"] == "http.response.start", sent
    start = sent[0]
    assert isinstance(start["status"], int) and 100 <= start["status"] <= 999
    out_headers = list(start.get("headers", []))
    if inner:
        seen_scope = inner[-1]
        assert isinstance(seen_scope["query_string"], bytes)
        assert isinstance(seen_scope["raw_path"], bytes)
        out_headers += seen_scope["headers"]
        if exchange is not None and exchange.upstream_target is not None:
            check_rewritten_target(exchange.upstream_target)
    else:
        assert start["status"] == 502, "only an unsafe path rewrite may stop the request"
    for name, value in out_headers:
        assert isinstance(name, bytes) and isinstance(value, bytes), (name, value)
        if not tainted:
            assert not (_CONTROL & set(value)), f"control character put into {name!r}: {value!r}"


def check_rewritten_target(target: str) -> None:
    path = target.split("?", 1)[0]
    assert path.startswith("/") and not path.startswith("//"), target
    for segment in path.split("/"):
        assert unquote(segment) not in (".", ".."), target


def decode_transform(data: bytes) -> TransformInput | None:
    """``<rules JSON>\\n\\n<request lines>\\n\\n<request body>``. Request lines are header lines, plus
    ``@path /raw/path``, ``@query a=1``, ``@method POST``, ``@status 404``, ``@claims {json}`` and
    ``@response name: value`` (a response header); the upstream answers with the request body."""
    rules_text, _, rest = data.partition(b"\n\n")
    lines, _, body = rest.partition(b"\n\n")
    try:
        rules = json.loads(rules_text)
    except (ValueError, RecursionError):
        return None
    headers: Headers = []
    response: Headers = []
    settings: dict[str, Any] = {}
    for line in lines.split(b"\n"):
        if line.startswith(b"@"):
            key, _, value = line[1:].partition(b" ")
            if key == b"response":
                response += decode_header_lines(value)
            elif key == b"status" and value.isdigit() and 100 <= int(value[:4]) <= 999:
                settings["status"] = int(value[:4])
            elif key == b"method":
                settings["method"] = value.decode("latin-1") or "GET"
            elif key == b"claims":
                try:
                    claims = json.loads(value)
                except (ValueError, RecursionError):
                    claims = None
                settings["claims"] = claims if isinstance(claims, dict) else {}
            elif key in (b"path", b"query"):
                settings["raw_path" if key == b"path" else "query"] = value
        elif line:
            headers += decode_header_lines(line)
    if "raw_path" in settings and not settings["raw_path"].startswith(b"/"):
        settings["raw_path"] = b"/" + settings["raw_path"]
    return TransformInput(
        rules,
        [(name.lower(), value) for name, value in headers],
        body=body,
        response_headers=response,
        response_body=body,
        **settings,
    )


# ---------------------------------------------------------------------------------------------------
# the byte-level targets


def _utf8(data: bytes) -> str:
    # surrogateescape: undecodable bytes become lone surrogates, which JSON "\ud800" escapes can
    # also produce in a config, so they are part of the input space.
    return data.decode("utf-8", "surrogateescape")


def _target_config(data: bytes) -> None:
    check_config_text(_utf8(data))


def _target_template(data: bytes) -> None:
    check_template(_utf8(data))


def _target_path(data: bytes) -> None:
    check_raw_path(data)


def _target_jwt(data: bytes) -> None:
    check_authorization(authorization_headers(data))
    check_authorization(authorization_headers(b"Bearer " + data))
    check_authorization([(b"x-api-key", data), (b"authorization", b"bearer " + data)])


def _target_headers(data: bytes) -> None:
    check_headers(decode_header_lines(data))


def _target_transform(data: bytes) -> None:
    case = decode_transform(data)
    if case is not None:
        check_transform(case)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "config": _target_config,
    "template": _target_template,
    "path": _target_path,
    "jwt": _target_jwt,
    "headers": _target_headers,
    "transform": _target_transform,
}


def run_target(name: str, data: bytes, tolerate_known: bool = True) -> None:
    with tolerated(tolerate_known):
        TARGETS[name](data)
