"""``kairos top``: a live view of a running gateway in the terminal, in the manner of ``htop``/``k9s``.

The gateway sets the pace: the ``/ws/metrics`` stream sends a Snapshot when it opens and then every
interval, and each Snapshot is one refresh. A gateway that stalls therefore shows as a screen that
stops moving, never as an old screen redrawn as if it were new. On each refresh the view also reads
``/metrics`` (per-route counters and latency histograms) and the admin ``/backends``, all through
``kairos.client`` like every other command.

What is on the screen, and where each figure comes from:

- header: the gateway's URL, version and uptime (``/health``, read once; the uptime then counts on
  locally), requests per second, requests and success rate since start, requests in flight and the
  config generation (``/backends``). The totals are sums over ``/metrics`` rather than the
  Snapshot's ``requests_total``: with ``--workers N`` a Snapshot counts only the worker that
  serves the stream while ``/metrics`` sums every worker, and the header then agrees with the
  route table below it. The Snapshot's own figures are the fallback when ``/metrics`` lacks them.
- in flight: the gateway keeps one in-flight gauge for the whole process, not one per route, so the
  header shows it and the route table has no in-flight column.
- routes: requests per second, p50/p99 and the 5xx share over the last interval, from the
  differences of the counters and histogram buckets between two scrapes (PromQL's ``rate`` and
  ``histogram_quantile`` over one window), plus requests and 5xx since start. The first refresh
  has no previous scrape: its latency and 5xx share are since start, its rate is blank. A counter
  that went down (gateway restarted, worker replaced) counts from zero again. Routes that have
  had no request yet have no series in ``/metrics``; they are listed at 0 from the routes each
  backend serves (``/backends``), so the table shows every route, busy or not.
- backends: key, health, circuit state, in-flight, outlier ejection and whether the balancer may
  pick it now, as ``/backends`` answers (the state of the worker that answers, with ``--workers N``).

``--interval`` is sent as the stream's ``interval_seconds`` subscription when it is not 1. The
gateway accepts any number of seconds from 0.1 to 3600, fractions included
(``parse_subscription`` in kairos/admin/metrics_api.py), so the value goes as given, unrounded;
outside that range the command refuses it before connecting.

On a terminal the view takes the alternate screen (the shell's screen comes back on exit) unless
``--iterations`` is given, in which case it redraws in place and leaves its last frame. ``q``
quits: stdin goes to cbreak mode (keys arrive one by one, not echoed) and is read without blocking
from the event loop; Ctrl-C and SIGTERM quit the same way, exit 0. The terminal's mode is
restored whatever ends the view. When stdout is not a terminal each refresh prints one plain frame
(tab-separated tables, as the other commands print off a terminal), for logs and scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kairos.api_models import BackendInfo, Backends, HealthStatus, StreamEvent
from kairos.cli.output import OK, reporting
from kairos.client import AsyncKairosClient, KairosConnectionError, MetricsSnapshot, histogram_quantile
from kairos.client.metrics import DURATION_BUCKET, REQUESTS

if TYPE_CHECKING:
    from kairos.cli import Target

# The stream's accepted interval_seconds (MIN/MAX_INTERVAL_SECONDS in kairos/admin/metrics_api.py,
# which the CLI may not import: it talks to the gateway through the client only).
MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0
IN_FLIGHT = "kairos_requests_in_flight"


def run_top(target: Target, interval: float, iterations: int | None) -> int:
    """Run the live view until ``q``, Ctrl-C, SIGTERM or ``iterations`` refreshes; the exit code.

    0 when it ends by request; 2 (one line on stderr) when the gateway cannot be reached, refuses
    the token, closes the stream, or the options are out of range."""
    try:
        with reporting(target.output):
            _check(interval, iterations)
            with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the loop took SIGINT over
                asyncio.run(_main(target, interval, iterations))
    except typer.Exit as exc:
        return exc.exit_code
    return OK


def _check(interval: float, iterations: int | None) -> None:
    if not (math.isfinite(interval) and MIN_INTERVAL <= interval <= MAX_INTERVAL):
        raise ValueError(
            f"--interval must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds (got {interval:g})"
        )
    if iterations is not None and iterations < 1:
        raise ValueError(f"--iterations must be 1 or more (got {iterations})")


async def _main(target: Target, interval: float, iterations: int | None) -> None:
    """The view against a stop signal: ``q``, SIGINT or SIGTERM set ``stop``, which cancels the
    view; its ``finally`` blocks restore the screen and the terminal mode on the way out."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    view = asyncio.create_task(_view(target, interval, iterations, stop))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({view, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not view.done():
            view.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view
        for number in signals:
            loop.remove_signal_handler(number)
    if not view.cancelled():
        view.result()  # the view's own end: its error, if any, goes to reporting()


async def _view(target: Target, interval: float, iterations: int | None, stop: asyncio.Event) -> None:
    """Connect, then one frame per Snapshot. Every read that can fail (health, token, stream
    handshake) happens before the screen changes, so a failure is one clean line on stderr."""
    async with AsyncKairosClient(target.url, target.token) as client:
        health = await client.health()
        # The first admin call, before the stream: a refused token fails here with the gateway's
        # advice (which setting to fix), which the stream's refused handshake does not carry.
        backends = await client.backends()
        board = Board(client.base_url, health, interval, time.monotonic())
        subscription = None if interval == 1 else {"interval_seconds": interval}
        stream = client.stream_metrics(subscription)
        async with contextlib.aclosing(stream):
            # Connect before touching the screen, so a refused stream prints one clean line.
            event = await anext(stream, None)
            with _display(iterations is None) as show, _keys(stop):
                while event is not None:
                    if event.type == "Error":
                        raise ValueError(f"the gateway refused the stream subscription: {event.message}")
                    if event.type == "Snapshot":
                        if board.refreshes:  # the first refresh reuses the /backends read above
                            backends = await client.backends()
                        metrics = await client.metrics()
                        show(board.frame(event, metrics, backends, time.monotonic()))
                        if iterations is not None and board.refreshes >= iterations:
                            return
                    event = await anext(stream, None)
        raise KairosConnectionError(client.base_url, "the gateway closed the metrics stream")


# -- figures -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Counts:
    """One route's cumulative counters in one scrape: requests, 5xx, latency buckets (seconds)."""

    requests: int = 0
    errors: int = 0
    buckets: dict[float, float] = field(default_factory=dict)

    def since(self, before: Counts | None) -> Counts:
        """What happened between ``before`` and this scrape; all of it when the counter was reset."""
        if before is None or self.requests < before.requests or self.errors < before.errors:
            return self
        buckets = {bound: count - before.buckets.get(bound, 0.0) for bound, count in self.buckets.items()}
        return Counts(self.requests - before.requests, self.errors - before.errors, buckets)

    def quantile_ms(self, quantile: float) -> float | None:
        seconds = histogram_quantile(quantile, sorted(self.buckets.items()))
        return None if seconds is None else seconds * 1000


def counts(snapshot: MetricsSnapshot) -> dict[str, Counts]:
    """Per route template, from the raw samples (request durations summed over methods)."""
    found: dict[str, Counts] = {}
    for sample in snapshot.samples:
        if sample.name == REQUESTS:
            entry = found.setdefault(sample.labels.get("route", ""), Counts())
            entry.requests += int(sample.value)
            if sample.labels.get("code", "").startswith("5"):
                entry.errors += int(sample.value)
        elif sample.name == DURATION_BUCKET and "le" in sample.labels:
            buckets = found.setdefault(sample.labels.get("route", ""), Counts()).buckets
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + float(sample.value)
    return found


@dataclass(frozen=True, slots=True)
class RouteRow:
    route: str
    rate: float | None  # requests per second over the window; None on the first refresh
    requests: int  # since start
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # 5xx since start
    error_share: float | None  # 5xx / requests over the window (since start on the first refresh)


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one refresh shows."""

    url: str
    version: str | None
    uptime: float | None
    refresh: int
    interval: float
    at: datetime
    rate: float | None
    requests: int
    success_rate: float | None
    in_flight: int | None
    generation: int
    routes: list[RouteRow]
    backends: list[BackendInfo]
    panic_routes: list[str]


class Board:
    """Turns the successive scrapes into frames: keeps the previous one for the deltas."""

    def __init__(self, url: str, health: HealthStatus, interval: float, started: float) -> None:
        self.url = url
        self.health = health
        self.interval = interval
        self.started = started
        self.refreshes = 0
        self.previous: tuple[float, dict[str, Counts]] | None = None

    def frame(self, event: StreamEvent, metrics: MetricsSnapshot, backends: Backends, now: float) -> Frame:
        self.refreshes += 1
        current = counts(metrics)
        for backend in backends.backends:  # routes with no traffic yet have no series: list them at 0
            for use in backend.routes:
                current.setdefault(use.external_path, Counts())
        before, seconds = ({}, None) if self.previous is None else (self.previous[1], now - self.previous[0])
        first = self.previous is None
        self.previous = (now, current)
        rows = []
        for name, entry in current.items():
            window = entry.since(before.get(name)) if not first else entry
            rows.append(
                RouteRow(
                    route=name,
                    rate=window.requests / seconds if seconds else None,
                    requests=entry.requests,
                    p50_ms=window.quantile_ms(0.5),
                    p99_ms=window.quantile_ms(0.99),
                    errors=entry.errors,
                    error_share=window.errors / window.requests if window.requests else None,
                )
            )
        rows.sort(key=lambda row: (-(row.rate or 0.0), -row.requests, row.route))
        total = sum(entry.requests for entry in current.values())
        total_before = sum(entry.requests for entry in before.values())
        rate = None
        if seconds:
            rate = (total - total_before if total >= total_before else total) / seconds
        return Frame(
            url=self.url,
            version=self.health.version,
            uptime=None if self.health.uptime is None else self.health.uptime + now - self.started,
            refresh=self.refreshes,
            interval=self.interval,
            at=datetime.now().astimezone(),
            rate=rate,
            requests=total,
            success_rate=_success_rate(metrics, event),
            in_flight=_in_flight(metrics, event),
            generation=backends.generation,
            routes=rows,
            backends=sorted(backends.backends, key=lambda backend: backend.key),
            panic_routes=backends.panic_routes,
        )


def _success_rate(metrics: MetricsSnapshot, event: StreamEvent) -> float | None:
    """Percent of requests answered below 400 since start (the Snapshot's definition), over every
    worker; 100 with no traffic, as the Snapshot says."""
    routes = metrics.routes()
    if not routes:
        return event.success_rate
    total = sum(route.requests for route in routes)
    failed = sum(route.errors + route.client_errors for route in routes)
    return 100.0 * (total - failed) / total if total else 100.0


def _in_flight(metrics: MetricsSnapshot, event: StreamEvent) -> int | None:
    value = metrics.value(IN_FLIGHT)
    return int(value) if value is not None else event.active_connections


# -- drawing --------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


ROUTE_COLUMNS = ("ROUTE", "REQ/S", "REQUESTS", "P50 MS", "P99 MS", "5XX", "5XX %")
BACKEND_COLUMNS = ("BACKEND", "HEALTHY", "CIRCUIT", "IN FLIGHT", "EJECTED", "AVAILABLE")


def _route_cells(row: RouteRow) -> tuple[str, ...]:
    return (
        row.route,
        _number(row.rate),
        str(row.requests),
        _number(row.p50_ms),
        _number(row.p99_ms),
        str(row.errors),
        _percent(row.error_share),
    )


def _backend_cells(backend: BackendInfo) -> tuple[str, ...]:
    return (
        backend.key,
        _yes(backend.healthy),
        backend.circuit.state,
        str(backend.in_flight),
        _yes(backend.outlier.ejected),
        _yes(backend.available),
    )


def _headline(frame: Frame) -> tuple[str, str]:
    version = f"kairos {frame.version}" if frame.version else "kairos"
    first = f"{frame.url}  {version}  up {_uptime(frame.uptime)}  config generation {frame.generation}"
    in_flight = "-" if frame.in_flight is None else str(frame.in_flight)
    success = "-" if frame.success_rate is None else f"{frame.success_rate:.1f}%"
    second = (
        f"{_number(frame.rate)} req/s  {frame.requests} requests  success {success}  "
        f"in flight {in_flight} (whole gateway)"
    )
    return first, second


def _footer(frame: Frame) -> str:
    return f"refresh {frame.refresh} every {frame.interval:g}s at {frame.at:%H:%M:%S}"


def plain(frame: Frame) -> str:
    """One frame as plain text: the header lines, then tab-separated tables (grep/cut friendly)."""
    first, second = _headline(frame)
    lines = [f"== kairos top  {_footer(frame)}", first, second, "\t".join(ROUTE_COLUMNS)]
    lines += ["\t".join(_route_cells(row)) for row in frame.routes]
    lines.append("\t".join(BACKEND_COLUMNS))
    lines += ["\t".join(_backend_cells(backend)) for backend in frame.backends]
    if frame.panic_routes:
        lines.append(f"panic mode (every backend unhealthy): {', '.join(frame.panic_routes)}")
    return "\n".join(lines) + "\n\n"


def rich_frame(frame: Frame) -> RenderableType:
    """One frame for the terminal: header, the route table, the backend table, the keys."""
    first, second = _headline(frame)
    header = Text.assemble(("kairos top  ", "bold"), first, "\n", second)
    routes = Table(
        box=box.SIMPLE_HEAD, header_style="bold reverse", expand=True, pad_edge=False, show_edge=False
    )
    for index, name in enumerate(ROUTE_COLUMNS):
        if index == 0:
            routes.add_column(name, no_wrap=True, overflow="ellipsis", ratio=1)
        else:
            routes.add_column(name, justify="right", no_wrap=True)
    for row in frame.routes:
        cells = [Text(cell) for cell in _route_cells(row)]
        if row.error_share:
            cells[-1].stylize("red")
        routes.add_row(*cells)
    backends = Table(
        box=box.SIMPLE_HEAD, header_style="bold reverse", expand=True, pad_edge=False, show_edge=False
    )
    for index, name in enumerate(BACKEND_COLUMNS):
        if index == 0:
            backends.add_column(name, no_wrap=True, overflow="ellipsis", ratio=1)
        else:
            backends.add_column(name, no_wrap=True)
    for backend in frame.backends:
        cells = [Text(cell) for cell in _backend_cells(backend)]
        cells[1].stylize("green" if backend.healthy else "red")
        cells[2].stylize({"closed": "green", "open": "red"}.get(backend.circuit.state, "yellow"))
        cells[5].stylize("green" if backend.available else "red")
        backends.add_row(*cells)
    parts: list[RenderableType] = [header, Text(""), routes, Text(""), backends]
    if frame.panic_routes:
        panic = f"panic mode (every backend unhealthy): {', '.join(frame.panic_routes)}"
        parts.append(Text(panic, style="bold red"))
    parts.append(Text(f"{_footer(frame)}  ·  q quits", style="dim"))
    return Group(*parts)


# -- the terminal ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _display(full_screen: bool) -> Iterator[Callable[[Frame], None]]:
    """A function that shows a frame: redrawn in place with rich ``Live`` on a terminal (the
    alternate screen when ``full_screen``), printed as plain text otherwise. Exiting restores the
    cursor and the screen, even on an exception."""
    console = Console(highlight=False)
    if not console.is_terminal:

        def show_plain(frame: Frame) -> None:
            sys.stdout.write(plain(frame))
            sys.stdout.flush()  # a pipe is block-buffered: one frame per refresh, as it happens

        yield show_plain
        return
    live = Live(console=console, screen=full_screen, auto_refresh=False, transient=False)
    loop = asyncio.get_running_loop()
    live.start()
    loop.add_signal_handler(signal.SIGWINCH, live.refresh)  # redraw at the new size at once
    try:

        def show_live(frame: Frame) -> None:
            live.update(rich_frame(frame), refresh=True)

        yield show_live
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)
        live.stop()


@contextlib.contextmanager
def _keys(stop: asyncio.Event) -> Iterator[None]:
    """While open, ``q`` sets ``stop``: stdin (if a terminal) in cbreak mode, read by the event
    loop when it has bytes, its previous mode restored on exit. Ctrl-C still sends SIGINT
    (cbreak keeps ISIG), handled in ``_main``."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no stdin, or not a real file
        fd = -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)

    def pressed() -> None:
        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:  # the terminal went away: stop listening, Ctrl-C/SIGTERM still work
            loop.remove_reader(fd)
        elif b"q" in data.lower():
            stop.set()

    loop.add_reader(fd, pressed)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
