"""The long fuzz run: ``python -m tests.fuzz.harness --seconds N``.

Why a harness besides the tests: ``pytest tests/fuzz`` is bounded and deterministic so it stays
green and fast; finding new bugs needs hours of fresh, random, ideally coverage-guided input. Two
engines share the time:

- atheris (libFuzzer for Python; ``pip install atheris``, used when importable): each byte-level
  target of ``targets.py`` in its own process, kairos instrumented for coverage, starting from the
  seed corpus ``corpus/<target>/`` and a dictionary of the tokens parsers trip on. New interesting
  inputs go to ``<out>/corpus/<target>/``, crashes to ``<out>/crashes/``;
- Hypothesis: every property test of ``test_*.py`` (strict-xfail ones excepted) with the
  ``LONG`` profile, called again and again (a fresh random batch each call) until its share of
  the time is used.

Known bugs (``known_bugs.py``) are tolerated, so the run looks past them. The exit status is 1 when
anything new failed; each failure is reproducible: a crash file replays with
``python -m tests.fuzz.harness --replay TARGET FILE``, a Hypothesis failure prints its example and
a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TEST_MODULES = (
    "test_config_loader",
    "test_routing",
    "test_upstream_path",
    "test_auth",
    "test_headers",
    "test_transform",
)
# Tokens worth splicing into inputs, per target (libFuzzer -dict): what the parsers branch on.
DICTIONARY: dict[str, tuple[str, ...]] = {
    "config": (
        '"routers"',
        '"external_path"',
        '"internal_path"',
        '"methods"',
        '"backends"',
        '"host"',
        '"port"',
        '"request_transformation"',
        '"headers"',
        '"pattern"',
        '"replacement"',
        '"condition"',
        '"jwt"',
        '"secret"',
        '"${FUZZ_SECRET}"',
        '"{*rest}"',
        "\\ud800",
        "NaN",
        "1e999",
        "[[[[",
        "{id}",
        "{1}",
    ),
    "template": ("{", "}", "{*", "/", "%2F", "%2e", "..", "{id}", "{a}.{b}", "?", "#", "\\", "%C3%A9"),
    "path": (
        "/",
        "%2F",
        "%2f",
        "%5C",
        "\\",
        "..",
        "%2e%2e",
        "%2E",
        "%C0%AE",
        "%ED%A0%80",
        "%",
        "users",
        "static",
    ),
    "jwt": ("Bearer ", ".", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJub25lIn0", "e30", "=", "\\x00", "\\x85"),
    "headers": (
        "connection: ",
        "x-forwarded-for: ",
        "x-request-id: ",
        "transfer-encoding: ",
        "content-length: ",
        "proxy-",
        "keep-alive",
        "upgrade",
        "\\x0d",
        ", ",
        "\\x0a",
    ),
    "transform": (
        '"action"',
        '"replace"',
        '"set"',
        '"add"',
        '"remove"',
        '"pattern"',
        '"replacement"',
        "${client_ip}",
        "${jwt.sub}",
        "${path.id}",
        "$1",
        "@path ",
        "@query ",
        "@claims ",
        "@response ",
        "\\x0a\\x0a",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.harness", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=300, help="total time budget (default 300)")
    parser.add_argument("--target", action="append", help="byte target(s) for atheris (default: all)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temporary folder)")
    parser.add_argument(
        "--replay", nargs=2, metavar=("TARGET", "FILE"), help="run one input through a target"
    )
    parser.add_argument("--atheris-worker", metavar="TARGET", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    # Generated patterns such as "[[" make re warn about a future syntax change: expected noise.
    warnings.filterwarnings("ignore", "Possible nested set", FutureWarning)
    if args.atheris_worker:
        return _atheris_worker(args.atheris_worker, rest)
    if args.replay:
        from tests.fuzz.targets import run_target

        run_target(args.replay[0], Path(args.replay[1]).read_bytes(), tolerate_known=False)
        print("no failure")
        return 0

    from tests.fuzz.targets import TARGETS

    targets = args.target or sorted(TARGETS)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; choose from {sorted(TARGETS)}")
    have_atheris = importlib.util.find_spec("atheris") is not None
    if args.engine == "atheris" and not have_atheris:
        parser.error("atheris is not installed (pip install atheris)")
    use_atheris = have_atheris and args.engine in ("auto", "atheris")
    use_hypothesis = args.engine in ("auto", "hypothesis") or not use_atheris
    out = args.out or Path(tempfile.mkdtemp(prefix="kairos-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"kairos fuzz: {args.seconds:.0f} s, output in {out}", flush=True)
    if not have_atheris and args.engine == "auto":
        print("  atheris is not installed: Hypothesis alone (pip install atheris for coverage guidance)")
    share = args.seconds / 2 if use_atheris and use_hypothesis else args.seconds
    failures: list[str] = []
    if use_atheris:
        failures += _run_atheris(targets, share, out)
    if use_hypothesis:
        failures += _run_hypothesis(share, out)
    print("\n" + ("\n".join(f"FAILED {failure}" for failure in failures) or "no new failure"))
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------
# atheris


def _run_atheris(targets: list[str], seconds: float, out: Path) -> list[str]:
    failures: list[str] = []
    each = max(5, int(seconds / len(targets)))
    for target in targets:
        found = out / "corpus" / target
        crashes = out / "crashes"
        found.mkdir(parents=True, exist_ok=True)
        crashes.mkdir(parents=True, exist_ok=True)
        dictionary = out / f"{target}.dict"
        dictionary.write_text("".join(f'"{_dict_escape(token)}"\n' for token in DICTIONARY.get(target, ())))
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.harness",
            "--atheris-worker",
            target,
            str(found),
            str(CORPUS / target),
            f"-max_total_time={each}",
            f"-artifact_prefix={crashes}/{target}-",
            f"-dict={dictionary}",
            "-timeout=20",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
        ]
        print(f"\n== atheris: {target} for {each} s", flush=True)
        log = out / f"atheris-{target}.log"
        with log.open("wb") as sink:
            code = subprocess.call(command, stdout=sink, stderr=subprocess.STDOUT, cwd=HERE.parent.parent)
        tail = log.read_bytes().decode("utf-8", "replace").splitlines()[-6:]
        print("\n".join(f"   {line}" for line in tail))
        if code != 0:
            failures.append(f"atheris {target}: exit {code}, see {log} and {crashes}/{target}-*")
    return failures


def _dict_escape(token: str) -> str:
    # libFuzzer dictionaries take \\xNN and \\" escapes; the tokens above already spell \\x escapes.
    return token.replace('"', '\\"') if "\\x" in token else token.replace("\\", "\\\\").replace('"', '\\"')


def _atheris_worker(target: str, libfuzzer_args: list[str]) -> int:
    import atheris

    with atheris.instrument_imports(include=["kairos"]):
        from tests.fuzz import targets

    def one_input(data: bytes) -> None:
        targets.run_target(target, data, tolerate_known=True)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


# ---------------------------------------------------------------------------------------------------
# Hypothesis


def property_tests() -> list[tuple[str, Callable[[], Any]]]:
    """The Hypothesis tests of the fuzz modules, strict-xfail ones excepted (those are meant to
    fail until their bug is fixed)."""
    found: list[tuple[str, Callable[[], Any]]] = []
    for name in TEST_MODULES:
        module = importlib.import_module(f"tests.fuzz.{name}")
        for attribute in sorted(vars(module)):
            test = getattr(module, attribute)
            if not attribute.startswith("test_") or not hasattr(test, "hypothesis"):
                continue
            if any(mark.name in ("xfail", "parametrize") for mark in getattr(test, "pytestmark", [])):
                continue
            found.append((f"{name}.{attribute}", test))
    return found


def _run_hypothesis(seconds: float, out: Path) -> list[str]:
    from tests.fuzz.profiles import ENV, LONG

    os.environ[ENV] = LONG  # read when the test modules are imported (just below)
    tests = property_tests()
    each = seconds / max(1, len(tests))
    failures: list[str] = []
    print(f"\n== hypothesis: {len(tests)} property tests, {each:.0f} s each (profile {LONG})", flush=True)
    for name, test in tests:
        deadline = time.monotonic() + each
        calls = 0
        while True:
            calls += 1
            try:
                test()
            except Exception:
                report = out / f"hypothesis-{name}.txt"
                report.write_text(traceback.format_exc())
                failures.append(f"hypothesis {name}: see {report}")
                print(f"   {name}: FAILED (call {calls}), see {report}", flush=True)
                break
            if time.monotonic() >= deadline:
                print(f"   {name}: {calls} batch(es), no failure", flush=True)
                break
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
