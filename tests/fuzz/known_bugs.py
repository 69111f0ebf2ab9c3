"""Bugs the fuzz tests found in code they may not change, each pinned by a strict xfail.

Why a registry: the property tests and the long fuzz run must keep exploring past a bug that is
already reported, or every run would stop at the same crash. :func:`tolerated` swallows an
exception only when it is exactly a registered bug: its type, a piece of its message, and the
innermost frame of kairos code it came from. Anything else still fails. Each bug also has its own
``xfail(strict=True)`` test (and usually a ``known-<id>-*`` seed in ``corpus/``), so the fix makes
those tests XPASS and fail: then delete the entry here and the xfail marks, and rename the seeds.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import PurePath

import pytest
from hypothesis import event
from hypothesis.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class KnownBug:
    id: str
    reason: str
    exception: type[BaseException]
    where: tuple[tuple[str, str], ...]  # (kairos file, function): the innermost kairos frame; () any
    message: str = ""  # a piece of str(exception)
    through: tuple[tuple[str, str], ...] = ()  # (file suffix, function): one must be in the traceback

    def xfail(self) -> pytest.MarkDecorator:
        return pytest.mark.xfail(strict=True, reason=f"{self.id}: {self.reason}")


_BUGS: tuple[KnownBug, ...] = (
    # Every bug these tests found so far is fixed; each keeps a regression test and a
    # `regression-<id>--*` seed in corpus/. Add new ones here as they are found.
)
KNOWN_BUGS: dict[str, KnownBug] = {bug.id: bug for bug in _BUGS}


def innermost_kairos_frame(exc: BaseException) -> tuple[str, str] | None:
    """(path from ``kairos/``, function) of the deepest frame in kairos code, skipping comprehension
    frames (``<listcomp>``) so the function that owns them is named."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = PurePath(frame.filename).parts
        if "kairos" not in parts or frame.name.startswith("<"):
            continue
        index = len(parts) - 1 - parts[::-1].index("kairos")
        found = ("/".join(parts[index:]), frame.name)
    return found


def classify(exc: BaseException) -> KnownBug | None:
    if isinstance(exc, AssertionError):
        return None  # a property violation is never "known"
    frame = innermost_kairos_frame(exc)
    frames = [(frame.filename, frame.name) for frame in traceback.extract_tb(exc.__traceback__)]
    for bug in KNOWN_BUGS.values():
        if not isinstance(exc, bug.exception) or bug.message not in str(exc):
            continue
        if bug.where and frame not in bug.where:
            continue
        if bug.through and not any(
            file.endswith(suffix) and name == function
            for file, name in frames
            for suffix, function in bug.through
        ):
            continue
        return bug
    return None


@contextmanager
def tolerated(enabled: bool = True) -> Iterator[list[KnownBug]]:
    """Swallow an exception that is a registered bug (recorded in the yielded list and, under
    Hypothesis, as an event in the statistics); re-raise anything else."""
    hits: list[KnownBug] = []
    try:
        yield hits
    except Exception as exc:
        bug = classify(exc) if enabled else None
        if bug is None:
            raise
        hits.append(bug)
        with suppress(InvalidArgument):  # not inside a Hypothesis test (corpus replay, the harness)
            event(f"known bug: {bug.id}")
