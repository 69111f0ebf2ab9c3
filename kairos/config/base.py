"""Shared pieces of the config models.

Scalars are strict (``"5900"`` is not a port, as in kairos-rs's serde), containers are lenient
(JSON arrays become tuples so the validated config is immutable). Unknown keys are kept in
``model_extra`` so the loader can warn about them instead of dropping them silently.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
StatusCode = Annotated[int, Strict(), Field(ge=100, le=599)]

HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile once at load; a bad pattern is a config error that names the pattern. Besides
    ``re.error``, ``re.compile`` fails with OverflowError on a repeat count over the engine's limit
    (``a{4294967296}``) and RecursionError on deep nesting (``((((...``); pydantic turns only
    ValueError into a validation error, so those would escape the loader as crashes (tests/fuzz)."""
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
