"""The ``kairos`` command: run the gateway, check config offline, and manage a running gateway.

Built with typer (click underneath) and rich. Every command that talks to a gateway does it
through ``kairos.client`` and nothing else (an import contract keeps it so), so the CLI can do
exactly what a Python user of the client can. ``--url``, ``--token`` and ``--output`` are
accepted before the command name and after it; the one given after wins.

typer costs ~60 ms of import time (measured with ``python -X importtime``, most of it rich), paid
once per command; argparse would save that but not the help, completion and typed options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from kairos import __version__
from kairos.cli.output import EXIT_CODES, Format, Output
from kairos.cli.serve import SERVER_OPTIONS, raise_open_files_limit

__all__ = ["SERVER_OPTIONS", "app", "main", "raise_open_files_limit"]

app = typer.Typer(
    name="kairos",
    help=f"Kairos API gateway: run it, check its config, and manage a running gateway.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
routes_app = typer.Typer(
    help=f"List, show, add, remove and dry-run routes of the running gateway.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(routes_app, name="routes")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The gateway's base URL (default: KAIROS_URL, else http://127.0.0.1:5900)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="The admin token (default: KAIROS_ADMIN_TOKEN).", show_default=False),
]
OutputOption = Annotated[
    Format | None, typer.Option("--output", help="text (tables on a terminal) or json (for scripts).")
]


@dataclass(slots=True)
class Globals:
    url: str | None = None
    token: str | None = None
    output: Format = Format.text


def _globals(ctx: typer.Context) -> Globals:
    found = ctx.find_root().obj
    return found if isinstance(found, Globals) else Globals()


@dataclass(slots=True)
class Target:
    """Where a command goes and how it answers: the options after the command win over the
    ones before it."""

    url: str | None
    token: str | None
    output: Output


def target(ctx: typer.Context, url: str | None, token: str | None, output: Format | None) -> Target:
    given = _globals(ctx)
    return Target(url or given.url, token or given.token, Output(output or given.output))


def _version(value: bool) -> None:
    if value:
        print(f"kairos {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = Globals(url, token, output or Format.text)


# -- running and offline ---------------------------------------------------------------------


@app.command()
def run(
    host: Annotated[str | None, typer.Option(help="Bind address (default: KAIROS_HOST or 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (default: KAIROS_PORT or 5900).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: KAIROS_WORKERS or 1).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config file (default: KAIROS_CONFIG_PATH or ./config.json).")
    ] = None,
) -> None:
    """Start the gateway (uvicorn with uvloop + httptools behind the connection guard).

    Exit 1 on an invalid config (every problem printed), 2 on a bad KAIROS_* variable."""
    from kairos.cli.serve import run as serve

    raise typer.Exit(serve(host, port, workers, config))


@app.command()
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The config file to check.")],
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    output: OutputOption = None,
) -> None:
    """Check a config file offline (no gateway needed): every error and warning, by its path.

    Exit 0 valid, 1 invalid (or warnings with --strict), 2 unreadable."""
    from kairos.cli.offline import validate_file

    raise typer.Exit(validate_file(file, strict, target(ctx, None, None, output).output))


@app.command()
def init(
    ctx: typer.Context,
    template: Annotated[
        str, typer.Option("--template", "-t", help="basic, jwt, rate-limit, websocket or ai.")
    ] = "basic",
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write it.")] = Path("config.json"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    output: OutputOption = None,
) -> None:
    """Write a starter config.json from a template (each one validates with no variable set).

    Exit 0 written, 1 the file exists (use --force), 2 unknown template or unwritable path."""
    from kairos.cli.offline import write_template

    raise typer.Exit(write_template(template, out, force, target(ctx, None, None, output).output))


# -- a running gateway -------------------------------------------------------------------------


@app.command()
def health(
    ctx: typer.Context,
    backends: Annotated[bool, typer.Option("--backends", help="Also list every backend's state.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Is the gateway up, ready, and are its backends healthy?

    Exit 0 healthy, 1 degraded (not ready, a backend unhealthy or its circuit open), 2 unreachable."""
    from kairos.cli import remote

    raise typer.Exit(remote.health(target(ctx, url, token, output), backends))


@app.command()
def metrics(
    ctx: typer.Context,
    format: Annotated[
        str, typer.Option("--format", help="table, json or prometheus (the raw exposition).")
    ] = "table",
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Per-route requests, error rate and p50/p99 latency since the gateway started.

    Exit 0, or 2 when the gateway cannot be read."""
    from kairos.cli import remote

    raise typer.Exit(remote.metrics(target(ctx, url, token, output), format))


@app.command()
def dump(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Write to this file instead of stdout.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """The live config as JSON, secrets masked as "***" (the document is JSON whatever --output
    says; --output json makes failures JSON too). Exit 0, or 2."""
    from kairos.cli import remote

    raise typer.Exit(remote.dump(target(ctx, url, token, output), out))


@app.command()
def diff(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The config file to compare with the live config.")],
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """What differs between FILE and the live config, per route: added, removed, changed keys.

    Exit 0 no difference, 1 differences, 2 error (kubectl diff's convention)."""
    from kairos.cli import remote

    raise typer.Exit(remote.diff(target(ctx, url, token, output), file))


@app.command()
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The config file whose routes to apply.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate on the gateway, change nothing.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Also delete live routes missing from FILE.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Create and update the live routes from FILE, all or nothing.

    Routes missing from FILE stay unless --prune. One atomic change on the gateway: on any
    validation error nothing is applied. Exit 0 applied (or nothing to do), 1 refused, 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.apply(target(ctx, url, token, output), file, dry_run, prune))


@app.command()
def reload(
    ctx: typer.Context, url: UrlOption = None, token: TokenOption = None, output: OutputOption = None
) -> None:
    """Reload the gateway's config file now. Exit 0 reloaded, 1 invalid file (old config keeps
    serving), 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.reload(target(ctx, url, token, output)))


@app.command()
def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    iterations: Annotated[int | None, typer.Option(help="Stop after this many refreshes.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """A live view of the gateway: req/s, p50/p99 and errors per route, in-flight for the whole
    gateway, and the backends' state; q or Ctrl-C quits. Exit 0, or 2 when the gateway cannot be
    reached."""
    from kairos.cli.top import run_top

    raise typer.Exit(run_top(target(ctx, url, token, Format.text), interval, iterations))


# -- routes ------------------------------------------------------------------------------------


@routes_app.command("list")
def routes_list(
    ctx: typer.Context, url: UrlOption = None, token: TokenOption = None, output: OutputOption = None
) -> None:
    """Every route of the running config. Exit 0, or 2."""
    from kairos.cli import remote

    raise typer.Exit(remote.routes_list(target(ctx, url, token, output)))


Selector = Annotated[str | None, typer.Option(help="Pick among routes sharing the path: a method.")]
ProtocolSelector = Annotated[str | None, typer.Option(help="Pick among routes sharing the path: a protocol.")]
IndexSelector = Annotated[int | None, typer.Option(help="Pick among routes sharing the path: its index.")]


@routes_app.command("show")
def routes_show(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The route's external_path, e.g. /users/{id}.")],
    method: Selector = None,
    protocol: ProtocolSelector = None,
    index: IndexSelector = None,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """One route as written (secrets masked). Exit 0, 1 no such route, 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.routes_show(target(ctx, url, token, output), path, method, protocol, index))


@routes_app.command("add")
def routes_add(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Option("--file", "-f", help="A JSON file with one route (or a list of routes).")
    ],
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Add routes to the running gateway (applied live and saved). Exit 0, 1 refused, 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.routes_add(target(ctx, url, token, output), file))


@routes_app.command("rm")
def routes_rm(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The route's external_path.")],
    method: Selector = None,
    protocol: ProtocolSelector = None,
    index: IndexSelector = None,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Remove a route. Exit 0, 1 no such route (or ambiguous), 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.routes_rm(target(ctx, url, token, output), path, method, protocol, index))


@routes_app.command("test")
def routes_test(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="The request method, e.g. GET.")],
    path: Annotated[str, typer.Argument(help="The request path (and query), e.g. /users/7?x=1.")],
    header: Annotated[
        list[str] | None, typer.Option("-H", "--header", help="A request header 'Name: value' (repeatable).")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
) -> None:
    """Dry-run a request through the gateway's router: the matched route, params, upstream URL
    per backend, the policies that apply, backend health and circuit state. Nothing is sent
    upstream. Exit 0 matched, 1 nothing matches, 2 error."""
    from kairos.cli import remote

    raise typer.Exit(remote.routes_test(target(ctx, url, token, output), method, path, header or []))


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns the exit code instead of exiting (tests call it)."""
    try:
        app(args=argv, prog_name="kairos", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
