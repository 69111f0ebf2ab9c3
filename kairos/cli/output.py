"""How the CLI talks back: text for people (tables and colour only on a terminal), JSON for
scripts, one line for every failure, and exit codes a CI job can trust.

Exit codes, the same for every command (kubectl's and decK's convention):

- 0: done; the answer is the good one (healthy, no difference, a route matched);
- 1: done, and the answer is the bad one, or the gateway refused the input: degraded, differences
  found, no route matches, invalid config, route not found, conflict;
- 2: could not do it: the gateway is unreachable, the token is refused, the gateway failed, or the
  command was used wrongly.

With ``--output json`` everything goes to stdout as one JSON document, failures included
(``{"error", "type", "status", "problems", "request_id"}``), so a script reads one stream.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

OK, NEGATIVE, FAILED = 0, 1, 2

EXIT_CODES = (
    "Exit codes: 0 done (healthy, no difference, matched); 1 the answer is the bad one or the input "
    "was refused (degraded, differences, no match, invalid); 2 could not do it (unreachable, token "
    "refused, gateway error, bad usage)."
)


class Format(StrEnum):
    text = "text"
    json = "json"


@dataclass(slots=True)
class Output:
    """Where a command writes. ``json``: one JSON document on stdout; else text, as a table on a
    terminal and as tab-separated lines otherwise (``grep``/``cut`` friendly)."""

    format: Format = Format.text
    console: Console | None = None
    errors: Console | None = None

    def __post_init__(self) -> None:
        if self.console is None:
            self.console = Console(highlight=False, soft_wrap=True)
        if self.errors is None:
            self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    @property
    def json(self) -> bool:
        return self.format is Format.json

    @property
    def out(self) -> Console:
        assert self.console is not None
        return self.console

    @property
    def err(self) -> Console:
        assert self.errors is not None
        return self.errors

    def emit(self, document: Any) -> None:
        """The command's JSON answer (only in ``--output json``)."""
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def line(self, text: str, style: str | None = None) -> None:
        if self.out.is_terminal and style:
            self.out.print(text, style=style, markup=False)
        else:
            self.out.print(text, markup=False, highlight=False)

    def note(self, text: str) -> None:
        """A remark on stderr, so stdout stays the answer."""
        self.err.print(text, markup=False, highlight=False)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
        if not self.out.is_terminal:
            print("\t".join(columns))
            for row in rows:
                print("\t".join(_cell(value) for value in row))
            return
        table = Table(title=title, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(value) for value in row))
        self.out.print(table)

    def fail(self, message: str, code: int = FAILED, **detail: Any) -> NoReturn:
        """Report a failure in the chosen format and exit with ``code``."""
        if self.json:
            self.emit({"error": message, **detail})
        else:
            problems = detail.get("problems") or []
            self.note(f"error: {message}" if not problems else f"error: {message.split(': ', 1)[0]}")
            for problem in problems:
                self.note(f"  {problem}")
        raise typer.Exit(code)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


@contextmanager
def reporting(output: Output) -> Iterator[None]:
    """Turn client errors into one line (or one JSON document) and the documented exit code.
    The client is imported here, not with the module: the offline commands (``--version``,
    ``validate``, ``init``, ``run``) start ~0.3 s sooner without it."""
    from kairos.client.errors import (
        Conflict,
        KairosAPIError,
        KairosConnectionError,
        KairosError,
        NotFound,
        Unauthorized,
        ValidationFailed,
    )

    try:
        yield
    except KairosConnectionError as exc:
        output.fail(str(exc), FAILED, type="unreachable")
    except Unauthorized as exc:
        output.fail(exc.message, FAILED, type=exc.type or "unauthorized", status=exc.status)
    except (ValidationFailed, NotFound, Conflict) as exc:
        detail: dict[str, Any] = {"type": exc.type, "status": exc.status, "request_id": exc.request_id}
        if exc.problems:
            detail["problems"] = exc.problems
        output.fail(exc.message, NEGATIVE, **detail)
    except KairosAPIError as exc:
        output.fail(exc.message, FAILED, type=exc.type, status=exc.status, request_id=exc.request_id)
    except KairosError as exc:
        output.fail(str(exc), FAILED, type="client")
    except (ValueError, OSError) as exc:  # bad arguments, unreadable files
        output.fail(str(exc), FAILED, type="usage")
