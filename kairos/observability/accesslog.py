"""The access log's writer: pending lines, formatted and written to stderr off the event loop.

``AccessLogMiddleware`` (kairos/middleware/accesslog.py) builds one small dict per request and
hands ``(time(), fields)`` to ``AccessLog.put`` (one list append); every 100 ms the ``AccessLog``
owned by the Gateway formats the batch (JSON when ``KAIROS_LOG_FORMAT=json``, one compact text
line otherwise) and writes it to stderr from a thread in one call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "kairos.access"  # the name in each JSON line (kept from the logging-based writer)
FLUSH_SECONDS = 0.1  # a line reaches the output at most this long after its response ended
MAX_PENDING = 100_000  # lines held while the output is slower than the traffic; more are dropped

TEXT_TEMPLATE = (
    '%(client_ip)s %(request_id)s "%(method)s %(path)s" %(status)s %(source)s '
    "%(duration_ms).3fms upstream=%(upstream_ms)s route=%(route)s backend=%(backend)s "
    "in=%(bytes_in)s out=%(bytes_out)s ua=%(user_agent)r"
)

_ROUNDED = ("duration_ms", "upstream_ms")  # to the microsecond

Entry = tuple[float, dict[str, Any]]  # (time.time() at the end of the response, fields)


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def json_line(entry: Entry) -> str:
    """One JSON object per line: ``ts``, ``logger`` then the access fields (durations to the µs)."""
    created, fields = entry
    line: dict[str, Any] = {"ts": _timestamp(created), "logger": LOGGER_NAME, **fields}
    for key in _ROUNDED:
        value = line.get(key)
        if isinstance(value, float):
            line[key] = round(value, 3)
    return json.dumps(line) + "\n"


def text_line(entry: Entry) -> str:
    """``<ts> <client_ip> <request_id> "<method> <path>" <status> <source> <ms>ms upstream=<ms|-> …``"""
    created, fields = entry
    shown = {key: ("-" if value is None else value) for key, value in fields.items()}
    upstream = shown.get("upstream_ms")
    shown["upstream_ms"] = f"{upstream:.3f}ms" if isinstance(upstream, float) else upstream
    line = TEXT_TEMPLATE % shown
    if "ai_outcome" in shown:  # AI routes: the chosen backend index (or -) and the outcome
        line += f" ai={shown['ai_backend']}/{shown['ai_outcome']}"
    return f"{_timestamp(created)} " + line.replace("\n", "\\n") + "\n"


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a batch is written (a test runner swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class AccessLog:
    """Pending access lines and their writer, owned by the Gateway: ``start()`` in startup,
    ``stop()`` in shutdown; ``put`` is all a request does (one list append).

    Every ``FLUSH_SECONDS`` a task on the event loop formats what is pending and hands the batch
    to a thread for one ``write`` + ``flush``, so a slow stderr (a full pipe) never blocks the loop.
    The first version went through ``logging`` (a ``QueueListener`` thread building a
    ``LogRecord`` per line, a flush per line) and cost ~60 µs of CPU per request here, mostly in
    the record, the handler locks and the thread hand-offs on every line; batching cut that to the
    formatting itself (see the access log figures in docs/observability.md). Lines beyond ``MAX_PENDING`` are
    dropped and counted (``dropped``), so memory stays bounded when the output cannot keep up.
    """

    def __init__(self, fmt: str, stream: Any = None) -> None:
        self.render = json_line if fmt == "json" else text_line
        self.stream: Any = stream if stream is not None else _CurrentStderr()
        self.pending: list[Entry] = []
        self.dropped = 0
        self.written = 0
        self.running = False
        self._task: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()  # the last synchronous flush vs a batch still in a thread

    def put(self, entry: Entry) -> None:
        if not self.running:  # stopped: nobody would write it
            return
        if len(self.pending) < MAX_PENDING:
            self.pending.append(entry)
        else:
            self.dropped += 1

    def start(self) -> None:
        """Start taking lines; the periodic writer runs when there is an event loop (always under
        an ASGI server); without one, lines are written by ``stop()``."""
        if self.running:
            return
        self.running = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._flush_periodically(), name="kairos-access-log")

    def stop(self) -> None:
        """Stop taking lines and write every pending one now."""
        if not self.running:
            return
        self.running = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._write(self._take())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            text = self._take()
            if text:
                await asyncio.to_thread(self._write, text)

    def _take(self) -> str:
        entries, self.pending = self.pending, []
        self.written += len(entries)
        return "".join(map(self.render, entries))

    def _write(self, text: str) -> None:
        if not text:
            return
        with self._write_lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr must not break the gateway
                pass
