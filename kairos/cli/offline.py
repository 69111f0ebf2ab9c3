"""The commands that need no gateway: ``kairos validate FILE`` and ``kairos init``.

``validate`` runs the loader the gateway itself uses (``kairos.config.load_file``), so a file it
passes is a file ``kairos run`` starts on, ``${VAR}`` substitution included. ``init`` writes a
starter config from the templates in ``kairos/cli/templates/``; each one validates with no
environment variable set, so ``kairos init && kairos run`` works on a fresh machine.

Exit codes follow kairos/cli/output.py: 0 valid / written, 1 invalid (or, with ``--strict``, any
warning) / the file already exists, 2 the file cannot be read / the template is unknown / the
path cannot be written.

``kairos validate --output json`` prints one document, whatever the outcome (the shape a CI job
can rely on)::

    {"file": "config.json", "valid": true, "strict": false, "routes": 3,
     "errors": [], "warnings": ["metrcs: unknown key, ignored"]}

``valid`` is true exactly when the exit code is 0; ``routes`` is null when the file did not load;
``errors`` and ``warnings`` are the same ``path: message`` lines the text output prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import stat
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos.cli.output import FAILED, NEGATIVE, OK, Output

if TYPE_CHECKING:  # kairos.config (pydantic) is imported only by the command that needs it
    from kairos.config import ConfigError

TEMPLATES = ("basic", "jwt", "rate-limit", "websocket", "ai")
"""The names ``kairos init --template`` accepts, in the order the help and errors list them."""

# What a template needs before it faces real traffic, beyond pointing the backends at real services.
_TEMPLATE_NOTES = {
    "jwt": "Set JWT_SECRET (at least 32 random characters) before exposing the gateway: without it the "
    "file falls back to a placeholder secret that anyone reading the file can sign tokens with.",
}

# A load failure whose only problem is this one means the file could not be opened at all (missing,
# a directory, no permission): exit 2, as for a command that cannot do its job, not 1 (invalid).
_UNREADABLE_PATH = "(file)"
_UNREADABLE_PREFIX = "cannot read:"


# -- kairos validate -------------------------------------------------------------------------------


def validate_file(file: Path, strict: bool, output: Output) -> int:
    """Check ``file`` offline with the gateway's own loader and report every error and warning.

    The text lines are the ones ``kairos validate`` has always printed (scripts and the e2e suite
    read them): on errors a ``FILE: INVALID, N error(s)`` header then ``  error:``/``  warning:``
    lines; otherwise the warnings then ``FILE: OK (N route(s), M warning(s))``. With ``--strict`` a
    file with warnings fails like an invalid one, since a CI job that asks for it wants unknown keys
    (typos) and unreachable routes to stop the merge."""
    from kairos.config import ConfigError, load_file

    routes: int | None = None
    try:
        loaded = load_file(file)
    except ConfigError as exc:
        errors = [str(problem) for problem in exc.problems]
        warnings = [str(warning) for warning in exc.warnings]
        if _unreadable(exc):
            return _report_unreadable(file, strict, errors, output)
        code = NEGATIVE
    else:
        errors = []
        warnings = [str(warning) for warning in loaded.warnings]
        routes = len(loaded.config.routers)
        code = NEGATIVE if strict and warnings else OK

    if output.json:
        output.emit(_document(file, code == OK, strict, routes, errors, warnings))
    elif errors:
        output.line(f"{file}: INVALID, {len(errors)} error(s)", style="bold red")
        for line in errors:
            output.line(f"  error: {line}", style="red")
        for line in warnings:
            output.line(f"  warning: {line}", style="yellow")
    elif code != OK:
        output.line(f"{file}: INVALID with --strict, {len(warnings)} warning(s)", style="bold red")
        for line in warnings:
            output.line(f"  warning: {line}", style="yellow")
    else:
        for line in warnings:
            output.line(f"  warning: {line}", style="yellow")
        output.line(f"{file}: OK ({routes} route(s), {len(warnings)} warning(s))", style="green")
    return code


def _unreadable(exc: ConfigError) -> bool:
    """Whether the loader failed before it had any text: the file could not be opened or read.

    The loader reports this as the one problem ``(file): cannot read: <reason>``; a file that was
    read but is too large, not UTF-8 or not JSON is an invalid file instead (exit 1)."""
    problems = exc.problems
    return (
        len(problems) == 1
        and problems[0].path == _UNREADABLE_PATH
        and problems[0].message.startswith(_UNREADABLE_PREFIX)
    )


def _report_unreadable(file: Path, strict: bool, errors: list[str], output: Output) -> int:
    """A file that cannot be read: one line on stderr (text) or the usual document (json), exit 2.

    Exit 2, not 1: nothing was checked, so a CI job must not read it as "the config is invalid"
    (a wrong path in the job is a different fix from a wrong key in the file)."""
    if output.json:
        output.emit(_document(file, False, strict, None, errors, []))
    else:
        reason = errors[0].removeprefix(f"{_UNREADABLE_PATH}: ") if errors else "cannot read"
        output.note(f"error: {file}: {reason}")
    return FAILED


def _document(
    file: Path, valid: bool, strict: bool, routes: int | None, errors: list[str], warnings: list[str]
) -> dict[str, Any]:
    """The JSON answer of ``kairos validate``: the same keys in every case (module docstring)."""
    return {
        "file": str(file),
        "valid": valid,
        "strict": strict,
        "routes": routes,
        "errors": errors,
        "warnings": warnings,
    }


# -- kairos init -----------------------------------------------------------------------------------


def template_text(name: str) -> str:
    """The text of template ``name``, read from the installed package (so it works from a wheel,
    not only from a source checkout). ``KeyError`` for a name not in ``TEMPLATES``."""
    if name not in TEMPLATES:
        raise KeyError(name)
    return resources.files("kairos.cli").joinpath("templates", f"{name}.json").read_text(encoding="utf-8")


def write_template(name: str, out: Path, force: bool, output: Output) -> int:
    """Write template ``name`` to ``out`` and say how to use it.

    Refuses to replace an existing file unless ``force`` (a config is hand-edited work; losing it
    to a mistyped ``-o`` is worse than typing ``--force``). The file appears whole or not at all:
    the text goes to a temporary file in the same directory, which is then renamed over ``out``
    (without ``force``, hard-linked to it, which fails if ``out`` appeared in the meantime).
    Failures are reported through ``output.fail``, which exits with their code."""
    if name not in TEMPLATES:
        output.fail(f"unknown template {name!r}; use one of {', '.join(TEMPLATES)}", FAILED, type="usage")
    if out.is_dir():
        output.fail(f"{out} is a directory; give a file name with -o", FAILED, type="usage")
    if out.exists() and not force:
        output.fail(f"{out} already exists; use --force to overwrite it", NEGATIVE, type="exists")
    try:
        text = template_text(name)
    except OSError as exc:  # a broken install: the package data is missing
        output.fail(f"template {name!r} cannot be read: {exc}", FAILED, type="install")
    try:
        write_atomically(out, text, replace=force)
    except FileExistsError:
        output.fail(f"{out} already exists; use --force to overwrite it", NEGATIVE, type="exists")
    except OSError as exc:
        output.fail(f"cannot write {out}: {exc.strerror or exc}", FAILED, type="usage")

    if output.json:
        output.emit({"file": str(out), "template": name, "written": True})
        return OK
    routes = len(json.loads(text).get("routers", []))
    quoted = shlex.quote(str(out))
    output.line(f"Wrote {out} (template {name}, {routes} route(s)).", style="green")
    output.line("Its _comment keys explain each part; point the backends at your services.")
    if name in _TEMPLATE_NOTES:
        output.line(_TEMPLATE_NOTES[name], style="yellow")
    output.line(f"Next: kairos validate {quoted}")
    output.line(f"Then: kairos run --config {quoted}")
    return OK


def write_atomically(path: Path, text: str, *, replace: bool) -> None:
    """Put ``text`` at ``path`` in one step, so a crash or a full disk never leaves half a file.

    The temporary file is created with mode 0666 less the umask (what a plain ``open`` gives, where
    ``mkstemp``'s 0600 would hide the config from a gateway running as another user); replacing an
    existing file keeps that file's mode. ``replace=False`` publishes with ``os.link``, which fails
    with ``FileExistsError`` rather than overwrite a file created since the caller's check; where
    hard links are not supported it falls back to checking and renaming."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
