"""`request_transformation` / `response_transformation` rule shapes (kairos-rs §1.8, plus Kairos's).

Validated and compiled at load time — regexes, ``$1`` replacements and ``${variable}`` templates
compile here, so a bad pattern, a replacement naming a group the pattern lacks, or an unknown
variable is an error with its JSON path instead of kairos-rs's silent no-op. Each model compiles
itself once into a plain object of :mod:`kairos.config.transform.plan` (reached through a
``cached_property``); applying them is :mod:`kairos.middleware.transform`'s job.

Kairos additions to the kairos-rs shapes (all optional): a declarative ``condition`` on every
header/query rule and on status mappings, JSON ``body`` rules with ``max_body_bytes``, and ``set``
for body fields. See docs/transformations.md for the full list of keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from kairos.config.base import HEADER_NAME, ConfigModel, NonNegativeInt, Str, compile_regex
from kairos.config.problems import Problem, format_path
from kairos.config.transform.plan import (
    _GROUP_REF,
    BodyOps,
    DottedPath,
    MappingOp,
    PathOp,
    Replacer,
    RequestPlan,
    ResponsePlan,
    RuleOp,
    Test,
    _not_a_header_replace,
    compile_replacement,
    header_pass,
    memoized,
    path_op,
)
from kairos.config.transform.template import (
    VARIABLES,
    Template,
    clean_header_value,
    encode_header_value,
    parse_template,
)

Action = Literal["add", "set", "remove", "replace"]


def _replacement_for(replacement: str, pattern: re.Pattern[str]) -> Replacer:
    try:
        return compile_replacement(replacement, pattern)
    except ValueError as exc:
        raise ValueError(f"`replacement` {exc}") from None


# ---------------------------------------------------------------------------------------------------
# conditions

_CONDITION_KEYS = ("header", "query", "path", "status", "response_header", "equals", "matches", "present")
_SUBJECTS = ("header", "query", "path", "status", "response_header")
_RESPONSE_ONLY = ("status", "response_header")


class Condition(ConfigModel):
    """When a rule applies: one subject (`header`, `query`, `path`, `status` or `response_header`) and
    at most one test (`equals`, `matches` or `present`; the subject alone means `"present": true`).
    `{"header": "x-legacy", "equals": "1"}`, `{"query": "debug", "present": true}`,
    `{"path": "^/v1/"}`, and on response rules only `{"status": [404, 410]}` or
    `{"response_header": "content-type", "matches": "json"}`. Conditions look at what the client and
    the upstream sent, never at what earlier rules changed, so the order of rules does not change which
    ones apply. Other keys are an error."""

    model_config = ConfigDict(
        json_schema_extra={"additionalProperties": False, "patternProperties": {"^_": {}}}
    )

    header: Str | None = Field(None, description="Subject: a header of the client's request, by name.")
    query: Str | None = Field(
        None, description="Subject: a query parameter of the client's request, by name."
    )
    path: Str | None = Field(
        None, description="Subject and test: a regular expression searched in the client's request path."
    )
    status: tuple[int, ...] | None = Field(
        None,
        description="Subject and test, response rules only: the upstream's status is this one or one of "
        "these (100-999).",
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 100, "maximum": 999},
                {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 100, "maximum": 999},
                    "minItems": 1,
                },
                {"type": "null"},
            ]
        },
    )
    response_header: Str | None = Field(
        None, description="Subject, response rules only: a header of the upstream's response, by name."
    )
    equals: Str | None = Field(None, description="Test: the subject's value is exactly this text.")
    matches: Str | None = Field(
        None, description="Test: a regular expression found in the subject's value (searched, not anchored)."
    )
    present: bool | None = Field(
        None, description="Test: the subject is present (`true`) or absent (`false`)."
    )

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


class _Rule(ConfigModel):
    action: Action = Field(
        description="`add` (only when absent; needs `value`), `set` (replaces every value by one; needs "
        "`value`), `remove`, or `replace` (every match of `pattern` in each value replaced; needs `pattern` "
        "and `replacement`). Rules apply in their order."
    )
    name: Str = Field(min_length=1, description="The header (any case) or query parameter the rule acts on.")
    value: Str | None = Field(
        None,
        description="The value of `add`/`set`; may use "
        + ", ".join(f"`{variable}`" for variable in VARIABLES.split(", "))
        + " (`$${` for a literal `${`).",
    )
    pattern: Str | None = Field(
        None, description="Regular expression of `replace`, searched in each value (a query value decoded)."
    )
    replacement: Str | None = Field(
        None,
        description="What each match of `pattern` becomes, in Rust regex syntax: `$1`, `${1}`, `$name`, "
        "`${name}`, `$$` for a `$` (`$1a` is the group named `1a`: write `${1}a`). A group the pattern "
        "lacks is an error.",
    )
    condition: Condition | None = Field(None, description="When the rule applies. Unset: always.")

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
    """A rule on headers. Values must not contain control characters (CR, LF, ...)."""

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
    """A rule on the headers sent upstream. The headers the gateway sets itself (`Host`, framing,
    `Connection`, `X-Forwarded-*`, `X-Request-ID`) cannot be named; conditions may not use the
    response's subjects."""

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
    """A rule on the headers of the upstream's response (not on the gateway's own error answers).
    Framing headers and `X-Request-ID` cannot be named."""

    @field_validator("name")
    @classmethod
    def _not_managed(cls, name: str) -> str:
        if name.lower() in _MANAGED_RESPONSE:
            raise ValueError("is set by the gateway itself; a response rule cannot change it")
        return name


class QueryRule(_Rule):
    """A rule on the query string sent upstream: `replace` works on the decoded value and re-encodes
    it, untouched parameters keep their exact bytes, `set` keeps the first occurrence's place."""

    @field_validator("condition")
    @classmethod
    def _for_requests(cls, condition: Condition | None) -> Condition | None:
        return _request_condition(condition)


# What a rewritten path must never contain, checked on the configured replacement at load and on
# the result per request: another authority (`//host`, a scheme), a fragment or query, backslashes
# (read as `/` by some servers), `.`/`..` segments, control characters or spaces.
_UNSAFE_LITERAL = re.compile(r"//|\\|[#?\s\x00-\x1f\x7f]|://|(^|/)\.\.?(/|$)")


class PathRewrite(ConfigModel):
    """A rewrite of the upstream path (built from `internal_path`, percent-encoded): the first match
    of `pattern` is replaced. Routing, CORS, rate limits and logs keep seeing the client's path; a
    result that is not a plain absolute path is answered 502 `config` and never sent."""

    pattern: Str = Field(description="Regular expression searched in the upstream path.")
    replacement: Str = Field(
        description="What the first match becomes, with `$1`-style group references; it may not write `//`, "
        "a scheme, `\\`, `?`, `#`, `.`/`..` segments or whitespace."
    )

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
    """Changes the status of an upstream response; the first mapping whose `from` is the status and
    whose condition holds wins."""

    from_status: int = Field(
        alias="from", ge=100, le=999, strict=True, description="The upstream's status (100-999)."
    )
    to_status: int = Field(alias="to", ge=100, le=999, strict=True, description="The status sent instead.")
    # kairos-rs's free text is accepted (and warned about): it never evaluated it either.
    condition: Condition | Str | None = Field(
        None,
        description="When the mapping applies. kairos-rs's free text is accepted with a warning and not "
        "evaluated (the mapping then always applies). Unset: always.",
    )

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
    """Rules on a JSON object body (`application/json` or `application/*+json`, not
    `Content-Encoding`-encoded), applied in this order: `remove`, `rename`, `set`, `add`. Fields are
    dotted paths through objects (`user.address.city`); `set` and `add` create missing objects.
    `Content-Length` is fixed. Non-JSON, invalid JSON and non-object bodies pass untouched."""

    add: dict[str, object] = Field(
        default_factory=dict,
        description="Field path -> JSON value, set only where the field is absent; string values may use "
        "`${variables}`.",
    )
    set: dict[str, object] = Field(
        default_factory=dict,
        description="Field path -> JSON value, created or overwritten; string values may use `${variables}`.",
    )
    remove: tuple[Str, ...] = Field((), description="Field paths to delete.")
    rename: dict[str, Str] = Field(default_factory=dict, description="Old field path -> new field path.")

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
    """Rules that rewrite the request before it goes upstream (retries re-send the rewritten request;
    WebSocket upgrades get the `headers` rules only). Regexes, replacements and variables are checked
    when the config loads."""

    headers: tuple[RequestHeaderRule, ...] = Field((), description="Header rules, applied in order.")
    path: PathRewrite | None = Field(None, description="Rewrite of the upstream path. Unset: none.")
    query_params: tuple[QueryRule, ...] = Field((), description="Query parameter rules, applied in order.")
    body: BodyRules | None = Field(None, description="JSON body rules. Unset: the body is not read.")
    max_body_bytes: NonNegativeInt = Field(
        DEFAULT_MAX_BODY_BYTES,
        description="Bodies are read for `body` rules up to this many bytes; a larger one (by "
        "`Content-Length`, or found while reading) streams through untouched.",
    )

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
    """Rules that rewrite the upstream's response (not the gateway's own error answers)."""

    headers: tuple[ResponseHeaderRule, ...] = Field((), description="Header rules, applied in order.")
    status_code_mappings: tuple[StatusMapping, ...] = Field(
        (), description="Status changes; the first that applies wins."
    )
    body: BodyRules | None = Field(None, description="JSON body rules. Unset: the body is not read.")
    max_body_bytes: NonNegativeInt = Field(
        DEFAULT_MAX_BODY_BYTES,
        description="Bodies are read for `body` rules up to this many bytes; a larger one (by "
        "`Content-Length`, or found while reading) streams through untouched.",
    )

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
