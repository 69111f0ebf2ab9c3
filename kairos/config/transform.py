"""`request_transformation` / `response_transformation` rule shapes (kairos-rs §1.8, plus Kairos's).

Validated and compiled at load time — regexes, ``$1`` replacements and ``${variable}`` templates
compile here, so a bad pattern, a replacement naming a group the pattern lacks, or an unknown
variable is an error with its JSON path instead of kairos-rs's silent no-op. The compiled pieces
live in private attributes of the (frozen) models; applying them is
:mod:`kairos.middleware.transform`'s job.

Kairos additions to the kairos-rs shapes (all optional): a declarative ``condition`` on every
header/query rule and on status mappings, JSON ``body`` rules with ``max_body_bytes``, and ``set``
for body fields. See README "Transformations" for the full list of keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from kairos.config.base import HEADER_NAME, ConfigModel, NonNegativeInt, Str, compile_regex
from kairos.config.problems import Problem, format_path

Action = Literal["add", "set", "remove", "replace"]


# ---------------------------------------------------------------------------------------------------
# ${variable} templates

VARIABLES = "${client_ip}, ${request_id}, ${route}, ${path.<param>}, ${jwt.<claim>}, ${env.<NAME>}"
_SIMPLE_VARIABLES = frozenset({"client_ip", "request_id", "route"})
# `$${` is a literal `${`; a variable runs to the next `}`.
_TEMPLATE_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
# Control characters a header value must never carry (tab is allowed), removed from rendered values.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Variable:
    kind: str  # client_ip | request_id | route | path | jwt
    arg: str = ""  # the path parameter or the claim name


Lookup = Callable[[Variable], str]


@dataclass(frozen=True, slots=True)
class Template:
    """A value with ``${variables}``, split once at load into literal text and variables."""

    parts: tuple[str | Variable, ...]
    constant: str | None  # the value itself when it uses no variable: nothing to do per request
    single: Variable | None = None  # the template is exactly one variable

    def render(self, lookup: Lookup) -> str:
        if self.constant is not None:
            return self.constant
        if self.single is not None:
            return lookup(self.single)
        return "".join([part if part.__class__ is str else lookup(part) for part in self.parts])  # type: ignore[arg-type]

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))


def parse_template(text: str, environ: Mapping[str, str] | None = None) -> Template:
    """Raise ValueError naming the first unknown variable. ``${env.NAME}`` is normally replaced by
    the loader already (with the other environment references); a model validated directly reads
    it from ``environ`` (the process environment by default)."""
    parts: list[str | Variable] = []
    literal: list[str] = []
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        name = match.group(1)
        if name is None:  # $${ -> ${
            literal.append("${")
            continue
        kind, dot, arg = name.partition(".")
        if not dot and kind in _SIMPLE_VARIABLES:
            variable = Variable(kind)
        elif dot and kind in ("path", "jwt") and arg:
            variable = Variable(kind, arg)
        elif dot and kind == "env" and arg:
            env = os.environ if environ is None else environ
            if arg not in env:
                raise ValueError(f"environment variable {arg} is not set")
            literal.append(env[arg])
            continue
        else:
            raise ValueError(f"unknown variable ${{{name}}}; use one of {VARIABLES}")
        if any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(variable)
    literal.append(text[position:])
    if any(literal):
        parts.append("".join(literal))
    if all(isinstance(part, str) for part in parts):
        return Template(tuple(parts), "".join(parts))  # type: ignore[arg-type]
    single = parts[0] if len(parts) == 1 and isinstance(parts[0], Variable) else None
    return Template(tuple(parts), None, single)


def clean_header_value(value: str) -> str:
    return _CONTROL.sub("", value) if _CONTROL.search(value) else value


# ---------------------------------------------------------------------------------------------------
# `$1` replacements (the Rust regex crate's syntax) -> Python's re.sub templates

_GROUP_REF = re.compile(r"\$(?:\$|\{([^}]*)\}|([0-9A-Za-z_]+))")


Replacer = str | Callable[[re.Match[str]], str]

T = TypeVar("T", str, bytes)

# A rewrite memo keeps at most this many results per rule, each for an input of at most this many
# characters, so its memory is bounded per rule (256 inputs of <= 512 characters and their
# rewrites, ~300 KiB for replacements of ordinary length) whatever the traffic.
MEMO_ENTRIES = 256
MEMO_MAX_INPUT = 512


def memoized(rewrite: Callable[[T], T]) -> Callable[[T], T]:
    """``rewrite`` (a pure function of its input) answered from a bounded LRU for short inputs.

    Why: the values a rule rewrites repeat (a route's few paths, the clients' few user agents), and
    a regex substitution costs 0.7-2 µs per request where the memo's C lookup costs ~0.2 µs.
    Longer inputs are rewritten each time, never stored."""
    remembered = lru_cache(maxsize=MEMO_ENTRIES)(rewrite)

    def answer(value: T) -> T:
        return remembered(value) if len(value) <= MEMO_MAX_INPUT else rewrite(value)

    return answer


def _replacement_pieces(replacement: str, pattern: re.Pattern[str]) -> list[str | int]:
    """Literal text and group numbers; ``$1``, ``${1}``, ``$name``, ``${name}`` and ``$$`` as the
    Rust regex crate reads them (``$1a`` is the group *named* ``1a``). A reference to a group the
    pattern lacks is an error here, where kairos-rs silently inserted nothing."""
    pieces: list[str | int] = []
    position = 0
    for match in _GROUP_REF.finditer(replacement):
        pieces.append(replacement[position : match.start()])
        position = match.end()
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name is None:
            pieces.append("$")
        elif name.isascii() and name.isdigit():
            if int(name) > pattern.groups:
                raise ValueError(f"refers to group ${name} but the pattern has {pattern.groups} group(s)")
            pieces.append(int(name))
        elif name in pattern.groupindex:
            pieces.append(pattern.groupindex[name])
        else:
            raise ValueError(f"refers to group ${{{name}}}, which the pattern does not define")
    pieces.append(replacement[position:])
    return [piece for piece in pieces if piece != ""]


def python_replacement(replacement: str, pattern: re.Pattern[str]) -> str:
    """The same replacement as a :func:`re.sub` template string (``\\g<1>``, backslashes escaped)."""
    return "".join(
        f"\\g<{piece}>" if isinstance(piece, int) else piece.replace("\\", "\\\\")
        for piece in _replacement_pieces(replacement, pattern)
    )


def compile_replacement(replacement: str, pattern: re.Pattern[str]) -> Replacer:
    """What :meth:`re.Pattern.sub` is given per request: the escaped literal when no group is used,
    else a function joining the pieces (re's own template expansion runs in Python, ~3x slower)."""
    pieces = tuple(_replacement_pieces(replacement, pattern))
    if all(isinstance(piece, str) for piece in pieces):
        return "".join(str(piece) for piece in pieces).replace("\\", "\\\\")

    if len(pieces) <= 3 and sum(isinstance(piece, int) for piece in pieces) == 1:
        # One group with literal text around it (``$1 via-kairos``, ``/v2/$1``): the common shape,
        # as a %-format, which runs ~40% faster than joining the pieces.
        group = next(piece for piece in pieces if isinstance(piece, int))
        text = "".join("%s" if isinstance(piece, int) else piece.replace("%", "%%") for piece in pieces)

        def one_group(match: re.Match[str]) -> str:
            return text % (match.group(group) or "")

        return one_group

    def expand(match: re.Match[str]) -> str:
        return "".join([piece if isinstance(piece, str) else (match.group(piece) or "") for piece in pieces])

    return expand


def _replacement_for(replacement: str, pattern: re.Pattern[str]) -> Replacer:
    try:
        return compile_replacement(replacement, pattern)
    except ValueError as exc:
        raise ValueError(f"`replacement` {exc}") from None


# ---------------------------------------------------------------------------------------------------
# compiled forms: plain slotted objects, built once per config (pydantic's private attributes cost
# ~5 µs per read, far too much for the hot path), reached through one cached_property.


@dataclass(frozen=True, slots=True)
class Test:
    """A compiled condition."""

    subject: str  # header | query | path | status | response_header
    key: Any  # lower-cased header name (bytes), query parameter name (str), or status set
    regex: re.Pattern[str] | None
    equals: str | None
    present: bool

    def check(self, value: str | None) -> bool:
        """The test on the subject's value (None: absent), for header/query/response_header."""
        if self.equals is not None:
            return value == self.equals
        if self.regex is not None:
            return value is not None and self.regex.search(value) is not None
        return (value is not None) is self.present


def _not_a_header_replace(raw: bytes) -> bytes:
    raise AssertionError("only a header rule with `pattern` rewrites header values")


@dataclass(frozen=True, slots=True)
class RuleOp:
    """A compiled header or query rule."""

    action: str
    name: str
    key: bytes  # the lower-cased header name
    constant: bytes | None  # the encoded value of a header rule that uses no variable
    template: Template | None
    regex: re.Pattern[str] | None
    replacement: Replacer
    condition: Test | None
    # ``replace`` on a header: the raw value to the rewritten raw value, memoized (see memoized()).
    replace_header: Callable[[bytes], bytes] = _not_a_header_replace

    def substitute(self, value: str) -> str:
        """``replace``: every match of ``pattern`` in ``value`` replaced (Rust's ``replace_all``)."""
        assert self.regex is not None
        return self.regex.sub(self.replacement, value)


@dataclass(frozen=True, slots=True)
class PathOp:
    regex: re.Pattern[str]
    replacement: Replacer
    rewrite: Callable[[str], str]  # the first match replaced (Rust's ``replace``), memoized


def path_op(regex: re.Pattern[str], replacement: Replacer) -> PathOp:
    def rewrite(path: str) -> str:
        return regex.sub(replacement, path, count=1)

    return PathOp(regex, replacement, memoized(rewrite))


DottedPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BodyOps:
    remove: tuple[DottedPath, ...]
    rename: tuple[tuple[DottedPath, DottedPath], ...]
    set: tuple[tuple[DottedPath, Any], ...]  # values: JSON, or a Template for strings
    add: tuple[tuple[DottedPath, Any], ...]


@dataclass(frozen=True, slots=True)
class MappingOp:
    from_status: int
    to_status: int
    condition: Test | None


@dataclass(frozen=True, slots=True)
class HeaderPass:
    """Header rules that each name a different header and carry no condition, prepared to be applied
    in one walk over the headers. No such rule can see another's effect, so one walk gives exactly
    what applying them one after another gives (tested against it), at a third of the cost: the
    common case, e.g. a few ``set``/``add``/``remove`` rules, costs one dict lookup per header."""

    by_key: Mapping[bytes, RuleOp]  # every rule, by lower-cased header name
    appended: tuple[RuleOp, ...]  # the ``set`` and ``add`` rules, in their order


def header_pass(rules: tuple[RuleOp, ...]) -> HeaderPass | None:
    """The one-walk form of ``rules``, or None when it would not be equivalent (a condition, or two
    rules on one header)."""
    by_key = {rule.key: rule for rule in rules}
    if len(by_key) != len(rules) or any(rule.condition is not None for rule in rules):
        return None
    return HeaderPass(by_key, tuple(rule for rule in rules if rule.action in ("set", "add")))


@dataclass(frozen=True, slots=True)
class RequestPlan:
    headers: tuple[RuleOp, ...]
    header_pass: HeaderPass | None
    query: tuple[RuleOp, ...]
    path: PathOp | None
    body: BodyOps | None
    max_body_bytes: int
    empty: bool


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    headers: tuple[RuleOp, ...]
    header_pass: HeaderPass | None
    mappings: tuple[MappingOp, ...]
    body: BodyOps | None
    max_body_bytes: int
    empty: bool
    # Whether something reads the response headers by name (a condition, rules applied one by one,
    # a body rule's content-type check), so their names are lower-cased first; a one-walk plan
    # lower-cases only the names it looks up.
    lowercase: bool


# ---------------------------------------------------------------------------------------------------
# conditions

_CONDITION_KEYS = ("header", "query", "path", "status", "response_header", "equals", "matches", "present")
_SUBJECTS = ("header", "query", "path", "status", "response_header")
_RESPONSE_ONLY = ("status", "response_header")


class Condition(ConfigModel):
    """When a rule applies — one subject, at most one test, all declarative:

    - ``{"header": "x-legacy", "equals": "1"}`` / ``"matches": regex`` / ``"present": bool``
      (the subject alone means ``"present": true``): a header of the client's request;
    - ``{"query": "debug", ...}``: a query parameter of the client's request, same tests;
    - ``{"path": "^/v1/"}``: a regex searched in the client's request path;
    - response rules only: ``{"status": 404}`` or ``{"status": [404, 410]}`` (the upstream's
      status) and ``{"response_header": "content-type", ...}`` (the upstream's response headers).

    Conditions always look at what the client and the upstream sent, never at what earlier rules
    changed, so the order of rules does not change which ones apply.
    """

    header: Str | None = None
    query: Str | None = None
    path: Str | None = None
    status: tuple[int, ...] | None = None
    response_header: Str | None = None
    equals: Str | None = None
    matches: Str | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in _CONDITION_KEYS and not str(key).startswith("_")]
            if unknown:
                raise ValueError(
                    f"unknown key(s) {', '.join(map(repr, unknown))}; a condition takes one of "
                    "`header`, `query`, `path`, `status`, `response_header` and at most one of "
                    "`equals`, `matches`, `present`"
                )
            status = data.get("status")
            if isinstance(status, int) and not isinstance(status, bool):
                data = {**data, "status": [status]}
        return data

    @field_validator("status")
    @classmethod
    def _statuses(cls, status: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if status is not None and (
            not status or any(type(code) is not int or not 100 <= code <= 999 for code in status)
        ):
            raise ValueError("must be a status code (100-999) or a non-empty array of them")
        return status

    @field_validator("matches", "path")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_regex(pattern)
        return pattern

    @field_validator("header", "response_header")
    @classmethod
    def _header_name(cls, name: str | None) -> str | None:
        if name is not None and not HEADER_NAME.match(name):
            raise ValueError("not a valid HTTP header name")
        return name

    @model_validator(mode="after")
    def _one_subject(self) -> Condition:
        subjects = [key for key in _SUBJECTS if getattr(self, key) is not None]
        if len(subjects) != 1:
            raise ValueError(
                "a condition needs exactly one of `header`, `query`, `path`, `status` or `response_header`"
            )
        tests = [key for key in ("equals", "matches", "present") if getattr(self, key) is not None]
        if len(tests) > 1:
            raise ValueError("a condition takes at most one of `equals`, `matches` or `present`")
        subject = subjects[0]
        if subject in ("path", "status") and tests:
            raise ValueError(f"`{subject}` is a test on its own: drop `{tests[0]}`")
        return self

    @property
    def subject(self) -> str:
        return next(key for key in _SUBJECTS if getattr(self, key) is not None)

    @cached_property
    def compiled(self) -> Test:
        subject = self.subject
        key: Any = None
        if subject in ("header", "response_header"):
            key = str(getattr(self, subject)).lower().encode("latin-1")
        elif subject == "query":
            key = self.query
        elif subject == "status":
            key = frozenset(self.status or ())
        pattern = self.path if subject == "path" else self.matches
        regex = re.compile(pattern) if pattern is not None else None
        return Test(subject, key, regex, self.equals, self.present is not False)

    @property
    def response_only(self) -> bool:
        return self.subject in _RESPONSE_ONLY


def _request_condition(condition: Condition | None) -> Condition | None:
    if condition is not None and condition.response_only:
        raise ValueError(f"`{condition.subject}` is only for response rules")
    return condition


# ---------------------------------------------------------------------------------------------------
# rules

# Set by the proxy from its own knowledge, or framing: a rule cannot meaningfully change them (the
# body rules keep Content-Length right by themselves).
_MANAGED_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)
_MANAGED_RESPONSE = frozenset({"content-length", "transfer-encoding", "connection", "x-request-id"})


def encode_header_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        # "replace": a lone surrogate (a JSON "\ud800" escape in a JWT claim or in the config) has
        # no UTF-8 form; strict encoding would fail the request (found by tests/fuzz).
        return value.encode("utf-8", "replace")


class _Rule(ConfigModel):
    action: Action
    name: Str = Field(min_length=1)
    value: Str | None = None
    pattern: Str | None = None
    replacement: Str | None = None
    condition: Condition | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_regex(pattern)
        return pattern

    @field_validator("value")
    @classmethod
    def _value_template(cls, value: str | None) -> str | None:
        if value is not None:
            parse_template(value)
        return value

    @model_validator(mode="after")
    def _fields_for_action(self) -> _Rule:
        if self.action in ("add", "set") and self.value is None:
            raise ValueError(f"action {self.action!r} needs `value`")
        if self.action == "replace" and (self.pattern is None or self.replacement is None):
            raise ValueError("action 'replace' needs `pattern` and `replacement`")
        if self.pattern is not None and self.replacement is not None:
            _replacement_for(self.replacement, re.compile(self.pattern))
        return self

    @property
    def regex(self) -> re.Pattern[str] | None:
        return self.compiled.regex

    @property
    def template(self) -> Template | None:
        return self.compiled.template

    @cached_property
    def compiled(self) -> RuleOp:
        template = parse_template(self.value) if self.value is not None else None
        regex = re.compile(self.pattern) if self.pattern is not None else None
        replacement: Replacer = ""
        if regex is not None and self.replacement is not None:
            replacement = _replacement_for(self.replacement, regex)
        constant = None
        if template is not None and template.constant is not None and isinstance(self, HeaderRule):
            constant = encode_header_value(template.constant)
        replace_header: Callable[[bytes], bytes] = _not_a_header_replace
        if regex is not None and isinstance(self, HeaderRule):
            replace_header = _header_replacer(regex, replacement)
        return RuleOp(
            action=self.action,
            name=self.name,
            key=self.name.lower().encode("latin-1"),
            constant=constant,
            template=template,
            regex=regex,
            replacement=replacement,
            condition=self.condition.compiled if self.condition is not None else None,
            replace_header=replace_header,
        )


def _header_replacer(regex: re.Pattern[str], replacement: Replacer) -> Callable[[bytes], bytes]:
    def replace(raw: bytes) -> bytes:
        return encode_header_value(regex.sub(replacement, raw.decode("latin-1")))

    return memoized(replace)


class HeaderRule(_Rule):
    @field_validator("name")
    @classmethod
    def _header_name(cls, name: str) -> str:
        if not HEADER_NAME.match(name):
            raise ValueError("not a valid HTTP header name")
        return name

    @field_validator("value", "replacement")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        # `replacement` too: its literal text lands in the header value as written, so a CR/LF there
        # would split the request head upstream or break the response (found by tests/fuzz).
        if value is not None and clean_header_value(value) != value:
            raise ValueError("a header value must not contain control characters (CR, LF, ...)")
        return value


class RequestHeaderRule(HeaderRule):
    @field_validator("name")
    @classmethod
    def _not_managed(cls, name: str) -> str:
        if name.lower() in _MANAGED_REQUEST:
            raise ValueError("is set by the gateway itself; a request rule cannot change it")
        return name

    @field_validator("condition")
    @classmethod
    def _for_requests(cls, condition: Condition | None) -> Condition | None:
        return _request_condition(condition)


class ResponseHeaderRule(HeaderRule):
    @field_validator("name")
    @classmethod
    def _not_managed(cls, name: str) -> str:
        if name.lower() in _MANAGED_RESPONSE:
            raise ValueError("is set by the gateway itself; a response rule cannot change it")
        return name


class QueryRule(_Rule):
    @field_validator("condition")
    @classmethod
    def _for_requests(cls, condition: Condition | None) -> Condition | None:
        return _request_condition(condition)


# What a rewritten path must never contain, checked on the configured replacement at load and on
# the result per request: another authority (`//host`, a scheme), a fragment or query, backslashes
# (read as `/` by some servers), `.`/`..` segments, control characters or spaces.
_UNSAFE_LITERAL = re.compile(r"//|\\|[#?\s\x00-\x1f\x7f]|://|(^|/)\.\.?(/|$)")


class PathRewrite(ConfigModel):
    """``pattern`` is searched in the upstream path (built from ``internal_path``, percent-encoded);
    the first match is replaced (kairos-rs: Rust ``Regex::replace``)."""

    pattern: Str
    replacement: Str

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        compile_regex(pattern)
        return pattern

    @model_validator(mode="after")
    def _replacement_is_safe(self) -> PathRewrite:
        _replacement_for(self.replacement, re.compile(self.pattern))
        literal = _GROUP_REF.sub("x", self.replacement)  # the text the config itself writes
        if _UNSAFE_LITERAL.search(literal):
            raise ValueError(
                "replacement must build a plain absolute path: no `//`, scheme, `\\`, `?`, `#`, "
                "`.`/`..` segments or whitespace"
            )
        return self

    @cached_property
    def compiled(self) -> PathOp:
        regex = re.compile(self.pattern)
        return path_op(regex, _replacement_for(self.replacement, regex))

    def rewrite(self, path: str) -> str:
        return self.compiled.rewrite(path)


class StatusMapping(ConfigModel):
    from_status: int = Field(alias="from", ge=100, le=999, strict=True)
    to_status: int = Field(alias="to", ge=100, le=999, strict=True)
    # kairos-rs's free text is accepted (and warned about): it never evaluated it either.
    condition: Condition | Str | None = None

    @cached_property
    def compiled(self) -> MappingOp:
        condition = self.condition.compiled if isinstance(self.condition, Condition) else None
        return MappingOp(self.from_status, self.to_status, condition)


# ---------------------------------------------------------------------------------------------------
# JSON body rules


def _dotted(path: str) -> DottedPath:
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise ValueError(f"{path!r} is not a dotted field path (like `user.id`)")
    return parts


def _templates_in(key: str, path: str, value: Any) -> Any:
    """String values of ``add``/``set`` may use variables; they compile here."""
    if isinstance(value, str):
        try:
            return parse_template(value)
        except ValueError as exc:
            raise ValueError(f"{key}[{path!r}]: {exc}") from None
    return value


class BodyRules(ConfigModel):
    """Rules on a JSON object body, applied in this order: ``remove``, ``rename``, ``set``
    (create or overwrite), ``add`` (only where the field is absent). Fields are dotted paths
    through objects (``user.id``); missing intermediate objects are created by ``set``/``add``."""

    add: dict[str, object] = Field(default_factory=dict)
    set: dict[str, object] = Field(default_factory=dict)
    remove: tuple[Str, ...] = ()
    rename: dict[str, Str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _paths(self) -> BodyRules:
        groups = {"add": self.add, "set": self.set, "remove": self.remove, "rename": self.rename}
        for key, paths in groups.items():
            for path in (*paths, *(self.rename.values() if key == "rename" else ())):
                try:
                    _dotted(path)
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
        for key in ("add", "set"):
            for path, value in getattr(self, key).items():
                _templates_in(key, path, value)
        return self

    @cached_property
    def compiled(self) -> BodyOps:
        return BodyOps(
            remove=tuple(_dotted(path) for path in self.remove),
            rename=tuple((_dotted(old), _dotted(new)) for old, new in self.rename.items()),
            set=tuple((_dotted(key), _templates_in("set", key, value)) for key, value in self.set.items()),
            add=tuple((_dotted(key), _templates_in("add", key, value)) for key, value in self.add.items()),
        )


DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class RequestTransformation(ConfigModel):
    headers: tuple[RequestHeaderRule, ...] = ()
    path: PathRewrite | None = None
    query_params: tuple[QueryRule, ...] = ()
    body: BodyRules | None = None
    max_body_bytes: NonNegativeInt = DEFAULT_MAX_BODY_BYTES

    @model_validator(mode="after")
    def _compile(self) -> RequestTransformation:
        self.plan  # noqa: B018 - compiled at load, never on a request
        return self

    @cached_property
    def plan(self) -> RequestPlan:
        headers = tuple(rule.compiled for rule in self.headers)
        return RequestPlan(
            headers=headers,
            header_pass=header_pass(headers),
            query=tuple(rule.compiled for rule in self.query_params),
            path=self.path.compiled if self.path is not None else None,
            body=self.body.compiled if self.body is not None else None,
            max_body_bytes=self.max_body_bytes,
            empty=not (self.headers or self.path or self.query_params or self.body),
        )


class ResponseTransformation(ConfigModel):
    headers: tuple[ResponseHeaderRule, ...] = ()
    status_code_mappings: tuple[StatusMapping, ...] = ()
    body: BodyRules | None = None
    max_body_bytes: NonNegativeInt = DEFAULT_MAX_BODY_BYTES

    @model_validator(mode="after")
    def _compile(self) -> ResponseTransformation:
        self.plan  # noqa: B018 - compiled at load, never on a request
        return self

    @cached_property
    def plan(self) -> ResponsePlan:
        headers = tuple(rule.compiled for rule in self.headers)
        one_pass = header_pass(headers)
        mappings = tuple(mapping.compiled for mapping in self.status_code_mappings)
        return ResponsePlan(
            headers=headers,
            header_pass=one_pass,
            mappings=mappings,
            body=self.body.compiled if self.body is not None else None,
            max_body_bytes=self.max_body_bytes,
            empty=not (self.headers or self.status_code_mappings or self.body),
            lowercase=(bool(headers) and one_pass is None)
            or self.body is not None
            or any(mapping.condition is not None for mapping in mappings),
        )


# ---------------------------------------------------------------------------------------------------
# checks that need the route (called by the loader)


def _templates_of(
    request: RequestTransformation | None, response: ResponseTransformation | None
) -> Iterator[tuple[tuple[str | int, ...], Template]]:
    for side, transformation in (("request_transformation", request), ("response_transformation", response)):
        if transformation is None:
            continue
        rules: list[tuple[str, tuple[_Rule, ...]]] = [("headers", transformation.headers)]
        if isinstance(transformation, RequestTransformation):
            rules.append(("query_params", transformation.query_params))
        for key, group in rules:
            for index, rule in enumerate(group):
                if rule.template is not None:
                    yield (side, key, index, "value"), rule.template
        if transformation.body is not None:
            for key in ("add", "set"):
                for field, value in getattr(transformation.body, key).items():
                    if isinstance(value, str):
                        yield (side, "body", key, field), parse_template(value)


def check_transformations(
    request: RequestTransformation | None,
    response: ResponseTransformation | None,
    path_params: tuple[str, ...],
    prefix: tuple[str | int, ...],
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) that need the route: ``${path.x}`` must name a parameter of
    ``external_path``; kairos-rs's free-text status-mapping conditions are warned about."""
    errors: list[Problem] = []
    for where, template in _templates_of(request, response):
        for variable in template.variables:
            if variable.kind == "path" and variable.arg not in path_params:
                defined = ", ".join(path_params) or "none"
                errors.append(
                    Problem(
                        format_path((*prefix, *where)),
                        f"uses ${{path.{variable.arg}}} but external_path defines no such "
                        f"parameter (it defines: {defined})",
                    )
                )
    warnings: list[Problem] = []
    if response is not None:
        for index, mapping in enumerate(response.status_code_mappings):
            if isinstance(mapping.condition, str):
                where = (*prefix, "response_transformation", "status_code_mappings", index, "condition")
                warnings.append(
                    Problem(
                        format_path(where),
                        "free text is not evaluated (kairos-rs ignored it too): the mapping applies to "
                        'every response; write an object such as {"header": "x-legacy", "equals": "1"}',
                    )
                )
    return errors, warnings
