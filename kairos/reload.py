"""Live reload triggers: a watch on the config file and SIGHUP. Both end in ``Gateway.reload``.

The third trigger, ``POST /api/config/reload``, is the admin API's. Every trigger goes through the
same load → validate → build → swap (``Gateway.reload``); a bad file is recorded and logged there,
never raised, and the running config keeps serving.

**File watch** (``ConfigWatcher``, ``KAIROS_CONFIG_WATCH``, default on). watchfiles (the Rust
``notify`` crate: inotify on Linux, FSEvents, kqueue; shipped with ``uvicorn[standard]``) watches the
file's *directory*, not the file: editors and ``kubectl``/ConfigMap updates replace a file by writing
a temporary one and renaming it over the old, which ends a watch on the file's inode but shows up in
the directory. Events for other names are dropped, except when the config path is a symlink
(Kubernetes mounts ``config.json -> ..data/config.json`` and swaps ``..data``): then any change in the
directory triggers a check. Checks are cheap because the watcher calls ``reload(force=False)``,
which applies only a file whose bytes (sha256) differ from the running config's — so the admin
API's own atomic writes, already applied by the worker that wrote them, are not applied twice,
while the *other* workers of a ``--workers N`` deployment pick the change up through their own
watcher. Debounce: watchfiles groups events until the directory has been quiet for ``STEP_MS``
(at most ``DEBOUNCE_MS``), and a change seen while a reload runs causes one more reload after it,
never a queue of them: a burst of writes costs one or two reloads.

The watch is watchfiles' ``RustNotify`` (what ``watchfiles.watch``/``awatch`` wrap), created in
``start()`` so the directory is watched before startup returns, and waited on by one dedicated
thread that hands batches to the event loop with ``call_soon_threadsafe``. It is not
``watchfiles.awatch`` because awatch borrows a thread from anyio's pool per wait, which lingers
after shutdown; here ``stop()`` sets the stop event the Rust side polls every ``STEP_MS``, joins the
thread and closes the watcher, so shutdown is prompt and leaves nothing behind. Where native
notifications are unavailable (inotify limit reached) it falls back to polling the directory every
``POLL_DELAY_MS``; on file systems that deliver no events (some network or bind mounts) set
``WATCHFILES_FORCE_POLLING=1``.

**SIGHUP** (``SighupReload``): ``kill -HUP <pid>`` reloads the config (``force=True``: an explicit
request re-applies even an unchanged file). Installed only where it is safe: on POSIX, from the main
thread, and only while nobody else handles SIGHUP (the default or ignored disposition; ``nohup``
sets "ignored"). So a parent app or server that has its own SIGHUP handler keeps it, a gateway
started from a worker thread (a test client, an embedding app's thread) installs nothing, and the
second of two gateways in one process leaves the signal to the first. The previous disposition is
restored at shutdown. With ``uvicorn --workers N`` (0.54 here) the *supervisor* handles SIGHUP
itself: it replaces the workers one by one, each new one ready before the old one stops, and each
loads the config at startup — a reload by restart that drops per-worker state (breakers, caches).
To reload the workers in place, send SIGHUP to the worker pids, or rely on the file watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from watchfiles._rust_notify import RustNotify  # watchfiles' documented low-level watcher

logger = logging.getLogger("kairos")

STEP_MS = 100  # the directory must be quiet this long before a batch of events is handed over
DEBOUNCE_MS = 1000  # ... but a batch is handed over at least this often during a long burst
POLL_DELAY_MS = 500  # the polling fallback's period
STOP_TIMEOUT = 5.0  # bound on joining the watch thread (it notices the stop event within STEP_MS)

Reload = Callable[[str, bool], Coroutine[Any, Any, bool]]


class _Coalescer:
    """Runs ``reload(trigger, force)`` for every request, but never two at once and never a queue:
    requests arriving while one runs fold into a single follow-up run."""

    def __init__(self, reload: Reload, trigger: str, force: bool) -> None:
        self._reload = reload
        self._trigger = trigger
        self._force = force
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # reloads started (for tests and the log)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"kairos-reload-{self._trigger}"
        )

    def request(self) -> None:
        self._wanted.set()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self.runs += 1
            try:
                await self._reload(self._trigger, self._force)
            except Exception:  # reload() records bad files itself; this is a bug: log, keep watching
                logger.exception("config reload (%s) failed unexpectedly", self._trigger)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():  # our own caller is being cancelled, not just the task
                    raise


class ConfigWatcher:
    """Watches ``path`` and calls ``reload("file", False)`` after it changes (see the module doc)."""

    def __init__(self, path: Path, reload: Reload) -> None:
        self.path = Path(os.path.abspath(path))
        self.directory = self.path.parent
        self._coalescer = _Coalescer(reload, "file", force=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polling = False  # whether the fallback (polling) is in use
        self._notify_handle: RustNotify

    @property
    def reloads(self) -> int:
        """Reloads this watcher started (applied or not)."""
        return self._coalescer.runs

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start watching; False (and a warning) when the directory cannot be watched. The watch is
        established before this returns, so a change made right after startup is not missed."""
        if not self.directory.is_dir():
            logger.warning("config watch off: directory %s does not exist", self.directory)
            return False
        try:
            self._notify_handle = self._open(force_polling=None)
        except Exception as exc:
            logger.warning(
                "config watch on %s: native notifications failed (%s); polling every %d ms",
                self.directory,
                exc,
                POLL_DELAY_MS,
            )
            try:
                self._notify_handle = self._open(force_polling=True)
            except Exception as again:
                logger.error("config watch off: cannot watch %s: %s", self.directory, again)
                return False
            self.polling = True
        self._loop = asyncio.get_running_loop()
        self._coalescer.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="kairos-config-watch", daemon=True)
        self._thread.start()
        logger.info("watching %s for changes (KAIROS_CONFIG_WATCH=false turns it off)", self.path)
        return True

    def _open(self, force_polling: bool | None) -> RustNotify:
        """The Rust watcher (it runs its own notification thread until ``close()``); None for
        ``force_polling`` lets watchfiles decide (``WATCHFILES_FORCE_POLLING``)."""
        if force_polling is None:
            force_polling = "WATCHFILES_FORCE_POLLING" in os.environ
        return RustNotify([str(self.directory)], False, force_polling, POLL_DELAY_MS, False, False)

    async def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, STOP_TIMEOUT)
            if thread.is_alive():
                logger.warning("config watch thread did not stop within %.0f s", STOP_TIMEOUT)
        await self._coalescer.stop()

    def _wants(self, changed: str) -> bool:
        """Our file, by name; anything in the directory when the path is a symlink (a Kubernetes
        ConfigMap's ``..data`` swap changes the link's target, not the link)."""
        return os.path.basename(changed) == self.path.name or self.path.is_symlink()

    def _watch(self) -> None:
        """The thread: hand each batch of relevant changes to the loop until ``stop()``."""
        handle = self._notify_handle
        try:
            while not self._stop.is_set():
                # timeout 0: wait until changes or the stop event (polled every STEP_MS)
                changes = handle.watch(DEBOUNCE_MS, STEP_MS, 0, self._stop)
                if isinstance(changes, set) and any(self._wants(path) for _, path in changes):
                    self._notify()
        except Exception as exc:
            logger.error("config watch on %s stopped: %s", self.directory, exc)
        finally:
            handle.close()

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(self._coalescer.request)


class SighupReload:
    """``kill -HUP`` → ``reload("signal", True)``, installed only where safe (see the module doc)."""

    def __init__(self, reload: Reload) -> None:
        self._coalescer = _Coalescer(reload, "signal", force=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    @property
    def reloads(self) -> int:
        return self._coalescer.runs

    @staticmethod
    def why_not() -> str | None:
        """Why the handler cannot be installed here, or None when it can."""
        if not hasattr(signal, "SIGHUP"):
            return "no SIGHUP on this platform"
        if threading.current_thread() is not threading.main_thread():
            return "the event loop does not run in the main thread"
        current = signal.getsignal(signal.SIGHUP)
        if current not in (signal.SIG_DFL, signal.SIG_IGN):
            return "SIGHUP already has a handler (the host app's or another gateway's)"
        return None

    def install(self) -> bool:
        reason = self.why_not()
        if reason is not None:
            logger.info("SIGHUP does not reload the config: %s", reason)
            return False
        loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGHUP)
        try:
            loop.add_signal_handler(signal.SIGHUP, self._coalescer.request)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            logger.info("SIGHUP does not reload the config: %s", exc)
            return False
        self._loop = loop
        self._coalescer.start()
        logger.info("SIGHUP reloads the config (pid %d)", os.getpid())
        return True

    async def remove(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.remove_signal_handler(signal.SIGHUP)
            if self._previous is signal.SIG_IGN:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
        await self._coalescer.stop()
