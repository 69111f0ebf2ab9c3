"""``/metrics`` across ``uvicorn --workers N``: prometheus-client's multiprocess mode.

Each worker is its own process with its own Gateway and in-process counters, so without help a
scrape sees whichever worker accepted it. With ``PROMETHEUS_MULTIPROC_DIR`` set (the standard
prometheus-client variable; ``kairos run --workers N`` sets a temporary one itself), every worker
writes what its collectors report into its own files in that directory, in prometheus-client's
mmap format (``MmapedDict``, the keys of ``mmap_key``), and a scrape answers with
``MultiProcessCollector``'s merge of all of them:

- counters and histograms are summed over every file, **including those of workers that died**:
  a worker's requests do not un-happen when it exits, and a total that dropped would look like a
  counter reset to Prometheus' ``rate()``. Each worker's files carry its pid *and* start time, so a
  reused pid never overwrites a predecessor's counts;
- gauges use a "live" multiprocess mode per family (``GAUGE_MODES``): in-flight requests, WebSocket
  connections and in-memory cache sizes are summed over live workers, uptime and build info are
  their max (build info appears once), per-backend states (health, circuit) show 1 on a state if
  any live worker is in it. A gauge family not listed is ``livemax``. Gauge files of a worker that
  is gone are removed at the next sync of any worker (pid liveness; ``mark_process_dead`` for
  files of other libraries too), so a dead worker's gauges never linger.

The hot path is untouched: the collectors still read plain in-process counters. A worker writes
its files every ``SYNC_SECONDS`` and right before it answers a scrape (so a scrape is at most that
old for the *other* workers), and a last time at shutdown. Each sync rebuilds a file only when its
content changed, into a temporary file renamed over the old one, so a series that disappeared
(a gauge of a backend removed by a reload) disappears from the files too, and readers never see a
half-written file. The files' names (``counter_kairos-<pid>-<start>.db`` …) differ from
prometheus-client's own (``counter_<pid>.db``), so metrics objects of an embedding app, written by
prometheus-client itself into the same directory, are merged into the scrape without clashing.

Without ``PROMETHEUS_MULTIPROC_DIR`` nothing here runs: ``/metrics`` renders the in-process registry
exactly as before. The directory must be emptied between runs of the whole server (prometheus-client
says so too): ``kairos run`` wipes its ``*.db`` files at startup; with a bare ``uvicorn --workers N``
that is the operator's job (e.g. ``rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db`` before starting). Pid
liveness assumes all workers share one pid namespace (one host or container), which is how
``--workers`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger("kairos")

ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 1.0

# Gauge families → prometheus-client multiprocess mode (only "live" modes: see the module doc).
GAUGE_MODES: dict[str, str] = {
    "kairos_requests_in_flight": "livesum",
    "kairos_active_connections": "livesum",  # kairos-rs's name for the same gauge
    "kairos_websocket_connections": "livesum",
    "kairos_admin_streams": "livesum",
    "kairos_ai_cache_entries": "livesum",
    "kairos_cache_entries": "livesum",
    "kairos_cache_bytes": "livesum",
    "kairos_uptime_seconds": "livemax",
    "kairos_build_info": "livemax",
}
DEFAULT_GAUGE_MODE = "livemax"
_LIVE_MODES = ("livesum", "livemax", "livemin", "liveall", "livemostrecent")

# Our files: <type>[_<gauge mode>]_kairos-<pid>-<start>.db
_OURS = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_kairos-(\d+)-\d+\.db$")
# prometheus-client's own live gauge files: gauge_live<mode>_<pid>.db
_THEIRS = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def configured_directory() -> Path | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set (also the deprecated lower-case spelling)."""
    value = os.environ.get(ENV) or os.environ.get(ENV.lower())
    return Path(value) if value else None


def wipe(directory: Path) -> int:
    """Remove the ``*.db`` files a previous run left (call before any worker starts)."""
    removed = 0
    for name in glob.glob(os.path.join(directory, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A worker that exited but was not reaped yet is dead for our purposes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


FileContent = list[tuple[str, float]]


def file_contents(collectors: Iterable[Collector]) -> dict[str, FileContent]:
    """What the collectors report now, as (mmap key, value) lists per file prefix
    (``counter``, ``histogram``, ``summary``, ``gauge_<mode>``), in prometheus-client's multiprocess
    layout: histogram buckets *not* cumulative (the merge accumulates them), no ``_count`` (the merge
    derives it), no ``_created``; info and other gauge-like types as gauges."""
    files: dict[str, FileContent] = defaultdict(list)
    for collector in collectors:
        for family in collector.collect():
            kind = family.type
            if kind == "info":
                name = family.name + "_info"  # exposed as a gauge named <name>_info, like generate_latest
                prefix = "gauge_" + GAUGE_MODES.get(name, DEFAULT_GAUGE_MODE)
            elif kind in ("counter", "histogram", "summary"):
                prefix, name = kind, family.name
            else:  # gauge, stateset, enum, unknown
                prefix, name = "gauge_" + GAUGE_MODES.get(family.name, DEFAULT_GAUGE_MODE), family.name
            entries = files[prefix]
            buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, str, float]]] = defaultdict(list)
            for sample in family.samples:
                if sample.name.endswith(("_created", "_gcount", "_gsum")):
                    continue
                if kind == "histogram" and sample.name.endswith("_count"):
                    continue
                labels = sample.labels
                if kind == "histogram" and sample.name.endswith("_bucket"):
                    rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                    buckets[rest].append((float(labels["le"]), labels["le"], sample.value))
                    continue
                sample_name = name if kind == "info" else sample.name
                entries.append((_key(name, sample_name, labels, family.documentation), sample.value))
            for rest, points in buckets.items():
                previous = 0.0
                for _, le, cumulative in sorted(points):
                    labels = {**dict(rest), "le": le}
                    key = _key(name, name + "_bucket", labels, family.documentation)
                    entries.append((key, cumulative - previous))
                    previous = cumulative
    return files


def _key(metric: str, sample: str, labels: dict[str, str], documentation: str) -> str:
    names = sorted(labels)
    return mmap_key(metric, sample, names, [labels[n] for n in names], documentation)


def write_file(path: Path, entries: FileContent) -> None:
    """Write a whole file under a temporary name, then rename it over ``path`` (atomic for readers)."""
    temporary = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    store = MmapedDict(str(temporary))  # type: ignore[no-untyped-call]
    try:
        for key, value in entries:
            store.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        store.close()  # type: ignore[no-untyped-call]
    os.replace(temporary, path)


class MultiprocessExporter:
    """Writes this worker's metrics into the shared directory and renders the merged scrape."""

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        if not directory.is_dir():
            raise ValueError(f"{ENV}={directory}: not a directory")
        self.directory = directory
        self._collectors = registry  # the worker's own registry (its collect() is every collector's)
        self.pid = os.getpid()
        self._identity = f"kairos-{self.pid}-{time.time_ns() // 1_000_000}"
        self._written: dict[str, FileContent] = {}
        self._merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self._merged, str(directory))  # type: ignore[no-untyped-call]
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls, registry: CollectorRegistry) -> MultiprocessExporter | None:
        directory = configured_directory()
        return cls(registry, directory) if directory is not None else None

    def path_for(self, prefix: str) -> Path:
        return self.directory / f"{prefix}_{self._identity}.db"

    def sync(self) -> None:
        """Write what changed since the last sync, and drop the gauges of workers that are gone."""
        self._check_fork()
        contents = file_contents([self._collectors])
        for prefix in set(self._written) - set(contents):
            contents[prefix] = []  # a file whose series all vanished becomes empty
        for prefix, entries in contents.items():
            if self._written.get(prefix) != entries:
                write_file(self.path_for(prefix), entries)
                self._written[prefix] = entries
        self.forget_dead()

    def forget_dead(self) -> list[int]:
        """Remove the live-gauge files of processes that no longer run; return their pids."""
        dead: set[int] = set()
        for name in os.listdir(self.directory):
            ours, theirs = _OURS.match(name), _THEIRS.match(name)
            match = ours or theirs
            if match is None:
                continue
            pid = int(match.group(1))
            if pid in dead or pid_alive(pid):
                continue
            dead.add(pid)
        for pid in dead:
            with contextlib.suppress(FileNotFoundError):  # another worker may be removing them too
                mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
            for mode in _LIVE_MODES:
                for name in glob.glob(os.path.join(self.directory, f"gauge_{mode}_kairos-{pid}-*.db")):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(name)
        return sorted(dead)

    def _check_fork(self) -> None:
        """A forked copy of a worker must not write over its parent's files."""
        if os.getpid() != self.pid:
            self.pid = os.getpid()
            self._identity = f"kairos-{self.pid}-{time.time_ns() // 1_000_000}"
            self._written = {}

    def render(self) -> bytes:
        """The merged exposition of every worker (this one synced first)."""
        self.sync()
        return generate_latest(self._merged)

    def start(self) -> None:
        self.sync()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="kairos-metrics-sync")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                self.sync()
            except Exception:  # a full disk must not end the worker: log, try again next time
                logger.exception("could not write the multiprocess metrics to %s", self.directory)

    async def stop(self) -> None:
        """A last sync (this worker's counters keep counting in the totals), then its live gauges go."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            self.sync()
        except Exception:
            logger.exception("could not write the multiprocess metrics to %s", self.directory)
        for prefix in list(self._written):
            if prefix.startswith("gauge_live"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path_for(prefix))
                del self._written[prefix]
