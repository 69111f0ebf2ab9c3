"""`request_transformation` / `response_transformation` rule shapes (kairos-rs §1.8).

Validated at load time — regexes compile here, so a bad pattern is an error with its JSON path
instead of kairos-rs's silent no-op. Applying the rules is the transformation middleware's job.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kairos.config.base import HEADER_NAME, ConfigModel, NonNegativeInt, Str, compile_regex

Action = Literal["add", "set", "remove", "replace"]


class _Rule(ConfigModel):
    action: Action
    name: Str = Field(min_length=1)
    value: Str | None = None
    pattern: Str | None = None
    replacement: Str | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_regex(pattern)
        return pattern

    @model_validator(mode="after")
    def _fields_for_action(self) -> _Rule:
        if self.action in ("add", "set") and self.value is None:
            raise ValueError(f"action {self.action!r} needs `value`")
        if self.action == "replace" and (self.pattern is None or self.replacement is None):
            raise ValueError("action 'replace' needs `pattern` and `replacement`")
        return self

    @property
    def regex(self) -> re.Pattern[str] | None:
        return None if self.pattern is None else re.compile(self.pattern)


class HeaderRule(_Rule):
    @field_validator("name")
    @classmethod
    def _header_name(cls, name: str) -> str:
        if not HEADER_NAME.match(name):
            raise ValueError("not a valid HTTP header name")
        return name


class QueryRule(_Rule):
    pass


class PathRewrite(ConfigModel):
    pattern: Str
    replacement: Str

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        compile_regex(pattern)
        return pattern


class HeaderCondition(ConfigModel):
    """``{"header": "x-legacy", "equals": "1"}`` or ``{"path": "^/v1/"}`` — declarative, no code."""

    header: Str | None = None
    equals: Str | None = None
    matches: Str | None = None
    present: bool | None = None
    path: Str | None = None

    @field_validator("matches", "path")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_regex(pattern)
        return pattern

    @model_validator(mode="after")
    def _one_subject(self) -> HeaderCondition:
        if (self.header is None) == (self.path is None):
            raise ValueError("a condition needs exactly one of `header` or `path`")
        return self


class StatusMapping(ConfigModel):
    from_status: int = Field(alias="from", ge=100, le=999, strict=True)
    to_status: int = Field(alias="to", ge=100, le=999, strict=True)
    condition: HeaderCondition | Str | None = None


class BodyRules(ConfigModel):
    add: dict[str, object] = Field(default_factory=dict)
    remove: tuple[Str, ...] = ()
    rename: dict[str, str] = Field(default_factory=dict)


class RequestTransformation(ConfigModel):
    headers: tuple[HeaderRule, ...] = ()
    path: PathRewrite | None = None
    query_params: tuple[QueryRule, ...] = ()
    body: BodyRules | None = None
    max_body_bytes: NonNegativeInt = 1024 * 1024


class ResponseTransformation(ConfigModel):
    headers: tuple[HeaderRule, ...] = ()
    status_code_mappings: tuple[StatusMapping, ...] = ()
    body: BodyRules | None = None
    max_body_bytes: NonNegativeInt = 1024 * 1024
