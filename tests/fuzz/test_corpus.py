"""Replays the seed corpus (``corpus/<target>/*``) through the byte-level targets on every run.

Why: the seeds hold every input that once broke something or that reaches a distinct corner, so
a normal ``pytest`` run keeps them fixed at no cost (a few ms each), and the long harness starts
from them. A ``known-<bug-id>--*`` seed is a strict xfail with its bug's reason. Random bytes go
through every target too, since the decoders must be total.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.known_bugs import KNOWN_BUGS
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.targets import TARGETS, run_target

# Generated patterns such as "[[" make re warn about a future syntax change: expected, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")

CORPUS = Path(__file__).resolve().parent / "corpus"


def seed_files() -> list[tuple[str, Path]]:
    return [
        (target, path)
        for target in sorted(TARGETS)
        for path in sorted((CORPUS / target).glob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]


def known_bug_of(path: Path) -> str | None:
    if not path.name.startswith("known-"):
        return None
    return path.name.removeprefix("known-").split("--", 1)[0]


def _params() -> list[object]:
    params: list[object] = []
    for target, path in seed_files():
        bug = known_bug_of(path)
        marks = [KNOWN_BUGS[bug].xfail()] if bug in KNOWN_BUGS else []
        params.append(pytest.param(target, path, id=f"{target}/{path.name}", marks=marks))
    return params


@pytest.mark.parametrize(("target", "path"), _params())
def test_seed(target: str, path: Path) -> None:
    run_target(target, path.read_bytes(), tolerate_known=False)


def test_every_target_has_seeds_and_every_known_seed_a_bug() -> None:
    files = seed_files()
    assert {target for target, _ in files} == set(TARGETS)
    unknown = {
        path.name
        for _, path in files
        if known_bug_of(path) is not None and known_bug_of(path) not in KNOWN_BUGS
    }
    assert not unknown, f"seeds named after bugs that are not registered (fixed? rename them): {unknown}"
    stray = {path.parent.name for path in CORPUS.glob("*/*") if path.parent.name not in TARGETS}
    assert not stray, f"corpus folders without a target: {stray}"


@pytest.mark.parametrize("target", sorted(TARGETS))
@fuzz_settings(scale=0.5)
@given(data=st.binary(max_size=300))
def test_random_bytes(target: str, data: bytes) -> None:
    run_target(target, data)
