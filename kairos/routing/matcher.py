"""The one route matcher: every concern (auth, limits, proxying) uses the route it returns.

Precedence, most specific first, independent of config order except as the last tie-breaker:

1. Segment by segment from the left, a literal segment beats a mixed pattern (``{name}.json``),
   which beats a whole-segment parameter (``{id}``). Among mixed patterns that both match one
   segment: more literal text first, then a longer literal prefix, then the literal text itself
   in code-point order (so the answer never depends on config order).
2. So a longer literal prefix wins (``/users/me/x`` over ``/users/{id}/x``).
3. Routes of the same shape (same template with parameter names erased) are tried in config order;
   this is the only place config order matters.
4. A route whose methods do not include the request's method is skipped, so ``POST /users/me`` can
   reach ``/users/{id}`` when ``/users/me`` is GET-only. Only when no route takes the method is the
   answer 405, with ``Allow`` listing what the matching paths accept.
5. A trailing catch-all ``{*rest}`` comes last at its position: ``/api/{*rest}`` takes what no more
   specific route takes, at any depth (``/api/`` included, ``/api`` not). A ``subtree`` route (an
   ftp or dns route without parameters) takes ``/api`` too, as its root.
6. At one template, a WebSocket upgrade prefers a ``protocol: websocket`` route and a plain request
   a non-WebSocket one, so ``/chat`` can serve both; with only one kind, it takes both.

Lookup walks a segment trie (dict lookups per segment), so its cost depends on the path's depth,
not on the number of routes. Matching uses the raw (percent-encoded) path split on ``/``; each
segment is then decoded on its own, so an encoded ``%2F`` never creates a segment boundary.
Template literals are decoded too, so ``/caf%C3%A9`` and ``/café`` (and ``%c3%a9``) are one path.
A ``.`` or ``..`` segment is a 400, and so is a parameter whose decoded value holds one when split
on ``/`` or ``\\`` (``/cats/..%2F..%2Fadmin``), unless the route sets ``allow_dot_segment_params``.

``match()`` takes the raw path as ASCII with non-ASCII bytes percent-encoded (what
``kairos.middleware.routing.route_path`` returns); non-ASCII characters in the string are taken
as text (encoded as UTF-8), as ``urllib.parse.unquote`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from kairos.config.path_template import CatchAll, Literal, Param, Pattern, encode_segment_value
from kairos.routing.route import Route, allow_header


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    patterns: list[tuple[Pattern, _Node]] = field(default_factory=list)
    param: _Node | None = None
    routes: list[Route] = field(default_factory=list)
    catch_all: list[Route] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class NoMatch:
    """``allow`` is set when the path matched but the method did not (405); otherwise 404.
    ``bad_path`` is set when the path itself is unacceptable (400)."""

    allow: str | None = None
    bad_path: str | None = None


class RouteTable:
    """An immutable snapshot of the compiled routes; a reload builds a new one and swaps it in."""

    __slots__ = ("_root", "_static", "routes")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda route: route.index))
        self._root = _Node()
        self._static: dict[str, list[Route]] = {}
        for route in self.routes:
            node = self._root
            static = True
            canonical: list[str] = []
            for segment in route.template.segments:
                if isinstance(segment, Literal):
                    node = node.literals.setdefault(segment.text, _Node())
                    canonical.append(encode_segment_value(segment.text))
                elif isinstance(segment, Param):
                    static = False
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                elif isinstance(segment, CatchAll):
                    static = False
                    break
                else:
                    static = False
                    node = _pattern_child(node, segment)
            (node.catch_all if route.template.catch_all is not None else node.routes).append(route)
            if route.subtree:
                node.routes.append(route)  # the bare prefix too: /ftp as well as /ftp/...
            if static:
                # Keyed by the canonical encoded form: a raw path equal to it decodes, segment by
                # segment, to exactly the route's literals, so the fast path agrees with the trie.
                self._static.setdefault("/" + "/".join(canonical), []).append(route)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, method: str, raw_path: str, websocket: bool = False) -> RouteMatch | NoMatch:
        static = self._static.get(raw_path)
        if static is not None:
            route = _pick(static, method, websocket, set())
            if route is not None:
                return RouteMatch(route, {})
        raw_segments = raw_path[1:].split("/") if raw_path.startswith("/") else [raw_path]
        segments: list[str] = []
        for raw in raw_segments:
            try:
                segment = unquote(raw, errors="strict") if "%" in raw else raw
            except UnicodeDecodeError:
                return NoMatch(bad_path="path is not valid percent-encoded UTF-8")
            if segment in (".", ".."):
                return NoMatch(bad_path="path contains '.' or '..' segments")
            segments.append(segment)
        allowed: set[str] = set()
        found = _walk(self._root, segments, 0, method, websocket, allowed)
        if found is not None:
            params = _params(found, segments)
            if params and not found.allow_dot_segment_params and _climbs(found, segments, params):
                return NoMatch(bad_path="a path parameter contains a '.' or '..' segment")
            return RouteMatch(found, params)
        return NoMatch(allow=_allow(allowed) if allowed else None)


def _pattern_child(node: _Node, segment: Pattern) -> _Node:
    # One child per pattern shape ({a}.json and {b}.json share it), so same-shape routes meet in
    # one node and are tried in config order like any other same-shape routes.
    for existing, child in node.patterns:
        if existing.key == segment.key:
            return child
    child = _Node()
    node.patterns.append((segment, child))
    node.patterns.sort(key=_pattern_precedence)
    return child


def _pattern_precedence(item: tuple[Pattern, _Node]) -> tuple[int, int, tuple[str, ...]]:
    pattern = item[0]
    return (-pattern.literal_length, -len(pattern.literals[0]), pattern.key)


def _pick(routes: list[Route], method: str, websocket: bool, allowed: set[str]) -> Route | None:
    """First route (config order) taking the method, preferring the request's kind (rule 6)."""
    other_kind = None
    for route in routes:
        if method in route.methods:
            if route.websocket == websocket:
                return route
            if other_kind is None:
                other_kind = route
        else:
            allowed.update(route.methods)
    return other_kind


def _walk(
    node: _Node, segments: list[str], depth: int, method: str, websocket: bool, allowed: set[str]
) -> Route | None:
    if depth == len(segments):
        return _pick(node.routes, method, websocket, allowed) if node.routes else None
    segment = segments[depth]
    child = node.literals.get(segment)
    if child is not None:
        found = _walk(child, segments, depth + 1, method, websocket, allowed)
        if found is not None:
            return found
    if segment:
        for pattern, pattern_child in node.patterns:
            if pattern.regex.fullmatch(segment):
                found = _walk(pattern_child, segments, depth + 1, method, websocket, allowed)
                if found is not None:
                    return found
        if node.param is not None:
            found = _walk(node.param, segments, depth + 1, method, websocket, allowed)
            if found is not None:
                return found
    if node.catch_all:
        return _pick(node.catch_all, method, websocket, allowed)
    return None


def _params(route: Route, segments: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for position, template_segment in enumerate(route.template.segments):
        if isinstance(template_segment, CatchAll):
            params[template_segment.name] = "/".join(map(encode_segment_value, segments[position:]))
            break
        value = segments[position]
        if isinstance(template_segment, Param):
            params[template_segment.name] = value
        elif isinstance(template_segment, Pattern):
            found = template_segment.values(value)
            if found is not None:
                params.update(found)
    return params


def _climbs(route: Route, segments: list[str], params: dict[str, str]) -> bool:
    """Whether a parameter's decoded value holds a ``.`` or ``..`` segment once split on ``/`` or
    ``\\`` (``..%2F..%2Fadmin`` is ``../../admin``): re-encoded it stays one upstream segment, but a
    backend that decodes ``%2F`` (or treats ``\\`` as a separator) would climb out of its path. A
    catch-all's value is already re-encoded, so its decoded segments are checked instead."""
    tail = route.template.catch_all
    for name, value in params.items():
        if name == tail:
            depth = len(route.template.segments) - 1
            if any("." in segment and _has_dot_segment(segment) for segment in segments[depth:]):
                return True
        elif "." in value and _has_dot_segment(value):
            return True
    return False


def _has_dot_segment(value: str) -> bool:
    """``.``/``..`` once split on ``/`` or ``\\``, a ``;``-parameter ignored: Tomcat and other
    servlet containers read ``..;jsessionid=x`` (or just ``..;``) as ``..``."""
    return any(part.split(";", 1)[0] in (".", "..") for part in value.replace("\\", "/").split("/"))


def _allow(methods: set[str]) -> str:
    return allow_header(frozenset(methods))
