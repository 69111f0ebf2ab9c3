"""TransformMiddleware: the route's ``request_transformation`` on the way in, its
``response_transformation`` on the way out (kairos-rs parsed both and never applied them).

Everything is compiled when the config loads (:mod:`kairos.config.transform`): regexes, ``$1``
replacements, ``${variable}`` templates, lower-cased header names. A route without rules costs three
attribute reads; a variable is computed only when a rule that uses it applies.

Request side, in this order, each rule list in its written order:

- ``headers``: ``add`` (only if absent), ``set`` (replace every value by one), ``remove``,
  ``replace`` (regex on each value, every match, ``$1``/``${name}`` groups). The inner app gets a
  copy of the scope with a new header list; the client's scope is never changed in place.
- ``query_params``: the same four actions on ``scope["query_string"]`` (``replace`` works on the
  decoded value and re-encodes it); untouched parameters keep their bytes.
- ``path``: the regex is searched in the upstream path built from ``internal_path`` (as the proxy
  would send it, percent-encoded) and the first match replaced. The result must be a plain
  absolute path — starting with one ``/``, no ``\\``, ``?``, ``#``, whitespace, control characters,
  ``.``/``..`` segments (also percent-encoded) — otherwise the request is answered 502 with type
  ``config`` (a rule that builds such a path is a configuration error; the request never leaves).
  The result travels to the proxy in ``Exchange.upstream_target`` (path + query), so the matched
  route, its parameters and every outer middleware keep seeing the client's path. Standalone (no
  gateway Exchange) the rewrite applies to ``scope["path"]``/``raw_path`` of the inner app.
- ``body``: for an ``application/json`` (or ``+json``) request without ``Content-Encoding`` whose
  body is at most ``max_body_bytes``: ``remove``, ``rename``, ``set``, ``add`` on dotted fields of
  the top-level object; Content-Length is fixed and Transfer-Encoding dropped after a rewrite.
  The body is read up to the bound only: a larger one (by Content-Length, or found larger while
  reading a chunked one) is replayed as read and streams on untouched, as do non-JSON bodies,
  invalid JSON and non-object documents.

Response side (upstream responses only; answers the gateway made itself, marked ``GENERATED``,
pass untouched): ``status_code_mappings`` (the first whose ``from`` and ``condition`` match),
``headers`` rules, then ``body`` rules on a JSON response up to ``max_body_bytes`` (held until
complete; a larger one is released and streams on; a rewritten body gets a new Content-Length and
loses the upstream's ETag). HEAD, 204 and 304 responses are never buffered.

Conditions look at the client's request as it arrived (and, on the response side, the upstream's
status and headers), never at what earlier rules changed. WebSocket upgrades get the request
``headers`` rules only (the rest concerns bodies and responses that an upgrade does not have).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.config.transform import (
    BodyOps,
    DottedPath,
    HeaderPass,
    RequestPlan,
    RequestTransformation,
    ResponsePlan,
    ResponseTransformation,
    RuleOp,
    Template,
    Test,
    Variable,
    clean_header_value,
    encode_header_value,
)
from kairos.errors import GENERATED, send_error
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.proxy.headers import content_length_value
from kairos.request import new_request_id, read_prefix, replaying
from kairos.routing.route import safe_upstream_path

Headers = list[tuple[bytes, bytes]]
_NO_BODY_STATUS = frozenset({204, 304})
# What a rewritten body makes wrong: its length, and the upstream's validator for the old bytes.
_STALE_AFTER_REWRITE = frozenset({b"content-length", b"etag"})
# A rewritten request body is sent whole, with its own length.
_REQUEST_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class TransformMiddleware:
    """``request``/``response``: a global policy for standalone use; a matched route's own
    ``request_transformation``/``response_transformation`` wins over it."""

    def __init__(
        self,
        app: ASGIApp,
        request: RequestTransformation | Mapping[str, Any] | None = None,
        response: ResponseTransformation | Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        if isinstance(request, Mapping):
            request = RequestTransformation.model_validate(request)
        if isinstance(response, Mapping):
            response = ResponseTransformation.model_validate(response)
        self._request = request
        self._response = response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        route = exchange.route if exchange is not None else None
        request = response = None
        if route is not None:
            config = route.config
            request, response = config.request_transformation, config.response_transformation
        if request is None:
            request = self._request
        if response is None:
            response = self._response
        if request is None and response is None:
            await self.app(scope, receive, send)
            return
        # Plain compiled objects from here on (one attribute read each): see config/transform.py.
        inbound = request.plan if request is not None and not request.plan.empty else None
        outbound = response.plan if response is not None and not response.plan.empty else None
        if outbound is not None and kind != "http":
            outbound = None
        if inbound is None and outbound is None:
            await self.app(scope, receive, send)
            return
        context = _Context(scope, exchange)
        if inbound is not None:
            if kind == "websocket":
                if inbound.headers:
                    headers = _rewrite_headers(
                        inbound.headers, inbound.header_pass, scope["headers"], context
                    )
                    scope = {**scope, "headers": headers}
            else:
                transformed = _transform_request(inbound, scope, context)
                if transformed is None:
                    await send_error(
                        send,
                        "config",
                        "The route's path rewrite produced an unsafe upstream path",
                        context.request_id,
                    )
                    return
                scope = transformed
                if inbound.body is not None:
                    scope, receive = await _transform_body(inbound, scope, receive, context)
        if outbound is not None:
            if outbound.body is None:
                send = _header_rewriter(outbound, context, send)
            else:
                send = _ResponseRewriter(outbound, context, send, scope["method"] == "HEAD").send
        await self.app(scope, receive, send)


class _Context:
    """The client's request as it arrived, and the variables, computed on first use only."""

    __slots__ = ("_query", "_request_id", "exchange", "headers", "path", "query_string", "scope")

    def __init__(self, scope: Scope, exchange: Exchange | None) -> None:
        self.scope = scope
        self.exchange = exchange
        self.headers: Headers = scope["headers"]
        self.path: str = scope["path"]
        self.query_string: bytes = scope.get("query_string", b"")
        self._query: dict[str, str] | None = None
        self._request_id: str | None = None

    @property
    def request_id(self) -> str:
        if self.exchange is not None:
            return self.exchange.request_id
        if self._request_id is None:
            self._request_id = new_request_id()
        return self._request_id

    def lookup(self, variable: Variable) -> str:
        kind, exchange = variable.kind, self.exchange
        if kind == "client_ip":
            if exchange is not None:
                return exchange.client_ip
            client = self.scope.get("client")
            return str(client[0]) if client else ""
        if kind == "request_id":
            return self.request_id
        if kind == "route":
            return exchange.route.name if exchange is not None and exchange.route is not None else ""
        if kind == "path":
            params = exchange.params if exchange is not None else self.scope.get("path_params", {})
            return str(params.get(variable.arg, ""))
        # jwt: a claim of the verified token; absent (no token, an API key, no such claim) -> ""
        identity = exchange.identity if exchange is not None else self.scope.get("state", {}).get("identity")
        claims = getattr(identity, "claims", None) or {}
        value = claims.get(variable.arg)
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    def render(self, template: Template) -> str:
        return template.render(self.lookup)

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True):
                self._query.setdefault(key, value)
        return self._query.get(name)

    def holds(
        self, condition: Test, status: int | None = None, response_headers: Headers | None = None
    ) -> bool:
        subject = condition.subject
        if subject == "header":
            return condition.check(_header(self.headers, condition.key))
        if subject == "query":
            return condition.check(self.query(condition.key))
        if subject == "path":
            regex = condition.regex
            return regex is not None and regex.search(self.path) is not None
        if subject == "status":
            return status in condition.key
        return condition.check(_header(response_headers or [], condition.key))


def _header(headers: Headers, key: bytes) -> str | None:
    values = [value for name, value in headers if name == key]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


# ---------------------------------------------------------------------------------------------------
# request


def _transform_request(rules: RequestPlan, scope: Scope, context: _Context) -> Scope | None:
    """The scope for the inner app with the header, query and path rules applied; None when the path
    rewrite is unsafe. Synchronous: only a body rule (``_transform_body``) has anything to wait for."""
    changes: dict[str, Any] = {}
    if rules.headers:
        changes["headers"] = _rewrite_headers(rules.headers, rules.header_pass, scope["headers"], context)
    query: bytes = scope.get("query_string", b"")
    if rules.query:
        query = changes["query_string"] = _apply_query_rules(rules.query, query, context)
    if rules.path is not None:
        exchange = context.exchange
        route = exchange.route if exchange is not None else None
        if exchange is not None and route is not None:
            current = route.upstream_path.build(exchange.params)
            rewritten = rules.path.rewrite(current)
            if rewritten != current:
                if not safe_upstream_path(rewritten):
                    return None
                exchange.upstream_target = rewritten + ("?" + query.decode("latin-1") if query else "")
        else:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8")
            current = raw.decode("latin-1")
            rewritten = rules.path.rewrite(current)
            if rewritten != current:
                if not safe_upstream_path(rewritten):
                    return None
                changes["raw_path"] = _raw_path_bytes(rewritten)
                changes["path"] = unquote(rewritten)
    return {**scope, **changes} if changes else scope


async def _transform_body(
    rules: RequestPlan, scope: Scope, receive: Receive, context: _Context
) -> tuple[Scope, Receive]:
    """The JSON body rules applied to a body that may fit the bound; any other body untouched."""
    assert rules.body is not None
    headers = scope["headers"]
    limit = rules.max_body_bytes
    if not _wants_body(headers, limit):
        return scope, receive
    read = await read_prefix(scope, receive, limit)
    if read is None:  # the client left during the upload: the app below learns it at once
        return scope, _client_gone
    chunks, complete = read
    if not complete:  # larger than the bound: replayed as read, the rest streams on untouched
        return scope, replaying(chunks, complete, receive)
    body = b"".join(chunks)
    rewritten_body = _rewrite_json(body, rules.body, context) if len(body) <= limit else None
    if rewritten_body is None:
        return scope, replaying([body], True, receive)
    kept = [(name, value) for name, value in headers if name not in _REQUEST_FRAMING]
    scope = {**scope, "headers": [*kept, (b"content-length", str(len(rewritten_body)).encode())]}
    return scope, replaying([rewritten_body], True, receive)


def _apply_header_rules(
    rules: tuple[RuleOp, ...],
    headers: Headers,
    context: _Context,
    status: int | None = None,
    response_headers: Headers | None = None,
) -> Headers:
    """A new list (``headers`` names lower-case, as ASGI request headers are) with the rules applied."""
    out = list(headers)
    for rule in rules:
        condition = rule.condition
        if condition is not None and not context.holds(condition, status, response_headers):
            continue
        key, action = rule.key, rule.action
        if action == "remove":
            out = [header for header in out if header[0] != key]
        elif action == "replace":
            for index, (name, raw) in enumerate(out):  # `out` is our own copy
                if name == key:
                    out[index] = (name, rule.replace_header(raw))
        else:
            value = rule.constant if rule.constant is not None else _rendered(rule, context)
            if action == "add":
                for name, _ in out:
                    if name == key:
                        break
                else:
                    out.append((key, value))
            else:  # set
                out = [header for header in out if header[0] != key]
                out.append((key, value))
    return out


def _rewrite_headers(
    rules: tuple[RuleOp, ...],
    one_pass: HeaderPass | None,
    headers: Headers,
    context: _Context,
    status: int | None = None,
    response_headers: Headers | None = None,
) -> Headers:
    """``rules`` applied to ``headers``: in one walk when the plan allows it (see HeaderPass)."""
    if one_pass is None:
        return _apply_header_rules(rules, headers, context, status, response_headers)
    by_key = one_pass.by_key
    out: Headers = []
    present: set[bytes] = set()  # the names of `add` rules the request already carries
    for header in headers:
        rule = by_key.get(header[0].lower())  # response header names may come in any case
        if rule is None:
            out.append(header)
            continue
        action = rule.action
        if action == "replace":
            out.append((header[0], rule.replace_header(header[1])))
        elif action == "add":
            out.append(header)
            present.add(rule.key)
        # remove and set: dropped here (set appends its own below)
    for rule in one_pass.appended:
        if rule.action == "set" or rule.key not in present:
            out.append((rule.key, rule.constant if rule.constant is not None else _rendered(rule, context)))
    return out


def _rendered(rule: RuleOp, context: _Context) -> bytes:
    assert rule.template is not None
    return encode_header_value(clean_header_value(context.render(rule.template)))


def _apply_query_rules(rules: tuple[RuleOp, ...], query: bytes, context: _Context) -> bytes:
    # (decoded name, the pair as written): untouched pairs keep their exact bytes.
    pairs: list[tuple[str, str]] = [
        (unquote_plus(part.partition("=")[0]), part) for part in query.decode("latin-1").split("&") if part
    ]
    for rule in rules:
        condition = rule.condition
        if condition is not None and not context.holds(condition):
            continue
        name, action = rule.name, rule.action
        if action == "remove":
            pairs = [pair for pair in pairs if pair[0] != name]
        elif action == "replace":
            replaced: list[tuple[str, str]] = []
            for pair in pairs:
                if pair[0] == name:
                    raw_name, _, raw_value = pair[1].partition("=")
                    value = unquote_plus(raw_value)
                    new = rule.substitute(value)
                    if new != value:
                        pair = (name, f"{raw_name}={quote(new, safe='', errors='replace')}")
                replaced.append(pair)
            pairs = replaced
        else:
            assert rule.template is not None
            value = quote(context.render(rule.template), safe="", errors="replace")  # lone surrogates
            written = f"{quote(name, safe='')}={value}"
            if action == "add":
                if not any(pair[0] == name for pair in pairs):
                    pairs.append((name, written))
            else:  # set: the first occurrence's place, the others dropped
                at = next((index for index, pair in enumerate(pairs) if pair[0] == name), len(pairs))
                pairs = [pair for pair in pairs if pair[0] != name]
                pairs.insert(min(at, len(pairs)), (name, written))
    return "&".join(part for _, part in pairs).encode("latin-1")


def _raw_path_bytes(path: str) -> bytes:
    """``path`` (the raw path read as latin-1, then rewritten) back to bytes: characters a
    replacement brought in beyond latin-1 (``/€``) are percent-encoded as UTF-8 instead of failing
    the request (found by tests/fuzz)."""
    try:
        return path.encode("latin-1")
    except UnicodeEncodeError:
        wide = "".join(ch if ord(ch) < 0x100 else quote(ch, errors="replace") for ch in path)
        return wide.encode("latin-1")


# ---------------------------------------------------------------------------------------------------
# bodies


def _is_json(headers: Headers) -> bool:
    content_type = _header(headers, b"content-type")
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _content_length(headers: Headers) -> int | None:
    """The declared length, None when absent or not one decimal number (see content_length_value)."""
    value = _header(headers, b"content-length")
    return None if value is None else content_length_value(value)


def _wants_body(headers: Headers, limit: int) -> bool:
    """A JSON request body that may fit the bound (a chunked one is found out while reading)."""
    if not _is_json(headers) or _header(headers, b"content-encoding") is not None:
        return False
    length = _content_length(headers)
    if length is not None:
        return 0 < length <= limit
    return _header(headers, b"transfer-encoding") is not None


async def _client_gone() -> Message:
    return {"type": "http.disconnect"}


_MISSING = object()


def _rewrite_json(body: bytes, rules: BodyOps, context: _Context) -> bytes | None:
    """The rewritten document, or None when it is not a JSON object or nothing changed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    changed = False
    for path in rules.remove:
        changed |= _pop(document, path) is not _MISSING
    for old, new in rules.rename:
        value = _pop(document, old)
        if value is not _MISSING:
            changed |= _put(document, new, value, overwrite=True)
    for path, value in rules.set:
        changed |= _put(document, path, _value(value, context), overwrite=True)
    for path, value in rules.add:
        changed |= _put(document, path, _value(value, context), overwrite=False)
    if not changed:
        return None
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (the body's own "\ud800" escape) has no UTF-8 form: write it escaped again,
        # as the sender did (found by tests/fuzz).
        return json.dumps(document, separators=(",", ":")).encode("ascii")
    except RecursionError:
        return None  # nested deeper than the encoder goes: the body streams on untouched


def _value(value: Any, context: _Context) -> Any:
    if isinstance(value, Template):
        return context.render(value)
    if isinstance(value, dict | list):
        return copy.deepcopy(value)  # never let a later rule change the config's own object
    return value


def _pop(document: dict[str, Any], path: DottedPath) -> Any:
    node: Any = document
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] in node:
        return node.pop(path[-1])
    return _MISSING


def _put(document: dict[str, Any], path: DottedPath, value: Any, overwrite: bool) -> bool:
    node = document
    for part in path[:-1]:
        child = node.get(part, _MISSING)
        if child is _MISSING:
            child = node[part] = {}
        if not isinstance(child, dict):
            return False  # a scalar or an array is in the way: leave the document as it is
        node = child
    if not overwrite and path[-1] in node:
        return False
    node[path[-1]] = value
    return True


# ---------------------------------------------------------------------------------------------------
# response


def _header_rewriter(rules: ResponsePlan, context: _Context, send: Send) -> Send:
    """The response's status and headers rewritten, for plans without body rules (most): a closure
    is all it takes."""

    async def rewrite(message: Message) -> None:
        if message["type"] == "http.response.start" and not message.get(GENERATED):
            message = _rewritten_start(rules, context, message)
        await send(message)

    return rewrite


def _rewritten_start(rules: ResponsePlan, context: _Context, message: Message) -> Message:
    status: int = message["status"]
    headers: Headers = message.get("headers", [])
    if rules.lowercase:
        headers = [(name.lower(), value) for name, value in headers]
    new_status = status
    for mapping in rules.mappings:
        if mapping.from_status == status:
            condition = mapping.condition
            if condition is None or context.holds(condition, status, headers):
                new_status = mapping.to_status
                break
    if rules.headers:
        headers = _rewrite_headers(rules.headers, rules.header_pass, headers, context, status, headers)
    return {**message, "status": new_status, "headers": headers}


class _ResponseRewriter:
    __slots__ = ("_head", "_held", "_parts", "_rules", "_send", "_size", "context")

    def __init__(self, rules: ResponsePlan, context: _Context, send: Send, head: bool) -> None:
        self._rules = rules
        self.context = context
        self._send = send
        self._head = head
        self._held: Message | None = None  # the response start, while a JSON body is collected
        self._parts: list[bytes] = []
        self._size = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if message.get(GENERATED):
                await self._send(message)
                return
            message = _rewritten_start(self._rules, self.context, message)
            if self._should_hold(message):
                self._held = message
                return
            await self._send(message)
            return
        if kind == "http.response.body" and self._held is not None:
            await self._collect(message)
            return
        await self._send(message)

    def _should_hold(self, message: Message) -> bool:
        rules = self._rules
        if rules.body is None or self._head or message["status"] in _NO_BODY_STATUS:
            return False
        headers = message["headers"]
        if not _is_json(headers) or _header(headers, b"content-encoding") is not None:
            return False
        length = _content_length(headers)
        return length is None or length <= rules.max_body_bytes

    async def _collect(self, message: Message) -> None:
        held = self._held
        assert held is not None
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self._parts.append(body)
        self._size += len(body)
        if self._size > self._rules.max_body_bytes:  # too big after all: release it and stream on
            self._held = None
            await self._send(held)
            await self._send({"type": "http.response.body", "body": b"".join(self._parts), "more_body": more})
            self._parts = []
            return
        if more:
            return
        self._held = None
        data = b"".join(self._parts)
        self._parts = []
        assert self._rules.body is not None
        rewritten = _rewrite_json(data, self._rules.body, self.context)
        if rewritten is not None:
            data = rewritten
            kept = [header for header in held["headers"] if header[0] not in _STALE_AFTER_REWRITE]
            held["headers"] = [*kept, (b"content-length", str(len(data)).encode())]
        await self._send(held)
        await self._send({"type": "http.response.body", "body": data})
