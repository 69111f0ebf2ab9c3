"""Path templates: ``/users/{id}/files/{name}.json``.

A template is split on ``/`` into segments. A segment is a literal, a whole-segment parameter
(``{id}``, matching one non-empty segment) or a mixed pattern (``{name}.json``). Parameters never
span a ``/``. Parsed once at config load; the matcher and the upstream-path builder use the parsed
form, never the string. It lives in ``config`` because a path template is config syntax: the
config models validate with it and routing compiles from it, so config imports nothing above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Literal:
    text: str  # percent-decoded: ``/caf%C3%A9`` and ``/café`` are the same literal


@dataclass(frozen=True, slots=True)
class Param:
    name: str


@dataclass(frozen=True, slots=True)
class Pattern:
    """A segment mixing literal text and parameters, e.g. ``v{major}.{minor}``."""

    source: str
    regex: re.Pattern[str]  # matches the percent-decoded segment
    names: tuple[str, ...]
    literal_length: int
    literals: tuple[str, ...] = ()  # the decoded literal pieces around the names (len(names) + 1)

    @property
    def key(self) -> tuple[str, ...]:
        """Identity with the parameter names erased: patterns with equal keys match the same text."""
        return self.literals

    def values(self, text: str) -> dict[str, str] | None:
        """The parameters in a (decoded) segment, or None when the pattern does not match it."""
        match = self.regex.fullmatch(text)
        if match is None:
            return None
        return dict(zip(self.names, match.groups(), strict=True))


@dataclass(frozen=True, slots=True)
class CatchAll:
    """``{*rest}``, the last segment only: the rest of the path (one or more segments, the last
    possibly empty). Its value is the remaining path re-encoded segment by segment (an encoded
    ``%2F`` stays encoded), so it can extend the upstream path but never climb out of it:
    ``.``/``..`` segments are refused before matching."""

    name: str


Segment = Literal | Param | Pattern | CatchAll


@dataclass(frozen=True, slots=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]

    @property
    def param_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Param):
                names.append(segment.name)
            elif isinstance(segment, Pattern):
                names.extend(segment.names)
            elif isinstance(segment, CatchAll):
                names.append(segment.name)
        return tuple(names)

    @property
    def catch_all(self) -> str | None:
        last = self.segments[-1] if self.segments else None
        return last.name if isinstance(last, CatchAll) else None

    @property
    def shape(self) -> tuple[str, ...]:
        """The template with parameter names erased: two routes of one shape match the same paths."""
        out: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Literal):
                out.append("L:" + segment.text)
            elif isinstance(segment, Param):
                out.append("P")
            elif isinstance(segment, CatchAll):
                out.append("C")
            else:
                out.append("R:" + "{}".join(segment.literals))
        return tuple(out)


_CATCH_ALL = re.compile(r"\{\*([^{}]*)\}")


def _valid_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch == "_" for ch in name)


def parse_template(path: str) -> PathTemplate:
    """Parse and check a template; ValueError messages are written for config.json authors."""
    if not path.startswith("/"):
        raise ValueError("must start with '/'")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be text: it holds an unpaired surrogate escape (\\ud800-\\udfff)") from None
    if "?" in path or "#" in path:
        raise ValueError("must not contain '?' or '#' (the query string is forwarded as sent)")
    segments: list[Segment] = []
    seen: set[str] = set()
    raw_segments = path[1:].split("/")
    for position, raw in enumerate(raw_segments):
        catch_all = _CATCH_ALL.fullmatch(raw)
        if catch_all is not None:
            name = catch_all.group(1)
            if not _valid_name(name):
                raise ValueError(f"invalid catch-all name {{*{name}}}: use letters, digits and '_' only")
            if position != len(raw_segments) - 1:
                raise ValueError(f"the catch-all {{*{name}}} must be the last segment")
            if name in seen:
                raise ValueError(f"parameter {{{name}}} appears twice")
            seen.add(name)
            segments.append(CatchAll(name))
            continue
        if unquote(raw) in (".", ".."):
            raise ValueError("path traversal: '.' and '..' segments are not allowed")
        stripped = PLACEHOLDER.sub("", raw)
        if "{" in stripped or "}" in stripped:
            raise ValueError(f"unbalanced '{{' or '}}' in segment {raw!r}")
        names = PLACEHOLDER.findall(raw)
        for name in names:
            if not _valid_name(name):
                raise ValueError(
                    f"invalid parameter name {{{name}}}: use letters, digits and '_' only"
                    if name
                    else "empty parameter name '{}'"
                )
            if name in seen:
                raise ValueError(f"parameter {{{name}}} appears twice")
            seen.add(name)
        if not names:
            segments.append(Literal(unquote(raw)))
        elif raw == "{" + names[0] + "}":
            segments.append(Param(names[0]))
        else:
            if re.search(r"\}\{", raw):
                raise ValueError(f"adjacent parameters in segment {raw!r} are ambiguous")
            literals = tuple(unquote(part) for part in PLACEHOLDER.split(raw)[::2])
            # Positional groups, read back with ``Pattern.values``: a parameter name need not be
            # a valid regex group name ({1}, {²} are fine parameter names).
            regex = "".join(
                re.escape(literals[index]) + ("(.+?)" if index < len(names) else "")
                for index in range(len(names) + 1)
            )
            segments.append(Pattern(raw, re.compile(regex), tuple(names), sum(map(len, literals)), literals))
    return PathTemplate(path, tuple(segments))


# Characters that may stay literal inside one upstream path segment: RFC 3986 unreserved and
# sub-delims plus ':' and '@'. Everything else, notably '/', '?', '#' and '%', is percent-encoded,
# so a parameter value can never add a segment, a query or a fragment upstream.
SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


def encode_segment_value(value: str) -> str:
    """Percent-encode a decoded parameter value for use inside one upstream path segment."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe=SEGMENT_SAFE)
