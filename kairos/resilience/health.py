"""Active health checks: periodic GET probes to each backend's ``health_check_path``.

kairos-rs stored ``health_check_path`` and never used it (reference §3.12). Here the Gateway owns
one ``HealthChecker``; it starts in the lifespan (``Gateway.startup``), stops in ``shutdown`` and is
re-planned by every ``Gateway.apply`` (reload). Nothing runs at import or construction time.

What is probed
    Every backend (identified by its key ``scheme://host:port``) that has a ``health_check_path``
    in a route where a ``health_check`` block applies: the route's own block, else the top-level
    one (``"health_check": {}`` turns checks on with the defaults). A backend without a path is
    never probed and stays healthy. A path with no block anywhere is not probed either: kairos-rs
    configs carry ``health_check_path`` by habit (it was never used), and the balancer only
    honours health on routes with a block, so probing there would only make noise. Only
    HTTP-family backends (http, https, ws, wss) are probed; the path on others is ignored with a
    warning. When several routes share a backend with different settings, the whole block with
    the **shortest** ``interval_ms`` wins (ties: the route listed first), together with that
    route's ``health_check_path`` for the backend: the most demanding route decides, and one
    backend has one health state.

Scheduling
    One long-lived task per probed backend (not per request, not per probe). The probes are
    spread over the interval: with N backends, the i-th (by key) first probes ``interval * i / N``
    after start and then keeps that phase (every ``interval_ms``), each probe delayed by a random
    jitter of up to ``jitter`` x interval (default 10 %) that does not accumulate, so N backends are
    not probed at the same instant and N gateway workers drift apart. Probes of one backend never
    overlap: when one takes longer than its slot (``timeout_ms`` > ``interval_ms``), the next starts
    right after it and the phase restarts there.

Verdict
    A probe passes when the answer's status is in ``expected_statuses`` (empty: any 2xx or 3xx;
    redirects are not followed) within ``timeout_ms`` for the whole exchange (connect, send,
    status line and headers; at most 64 KiB of body is read). Anything else fails: another
    status, a refused or reset connection, a TLS error, or no answer in time. A backend goes
    unhealthy after ``unhealthy_threshold`` consecutive failures and healthy again after
    ``healthy_threshold`` consecutive passes; each transition is logged once (logger
    ``kairos.health``) with the backend key and the reason. ``BackendState.healthy`` is what the
    balancer reads (panic mode and passive ejection are decided there, not here).

Startup state
    A backend starts **healthy** (as in Traefik and Kong): the gateway serves traffic at once
    instead of refusing everything until the first round of probes, and a backend that is down
    leaves the rotation after ``unhealthy_threshold`` failed probes (about that many intervals).

Reload
    ``update()`` re-plans from the new route table. Backends still probed keep their task, phase
    and streak counters (their ``BackendState`` survives the reload too); a changed interval takes
    effect at once (the waiting task is woken and rescheduled from its last probe). New backends
    get a task, spread like at startup; backends no longer probed lose theirs, and one that was
    unhealthy is marked healthy again (nothing would ever clear it otherwise).

Client
    A dedicated ``httpx.AsyncClient`` per TLS/HTTP-version setting (cleartext, default TLS, each
    distinct ``tls_ca_file``/``tls_verify``, HTTP/2), not the proxy's engines: probes must never take
    a pooled proxy connection or be cut by proxy traffic, and httpx enforces a per-request timeout
    and cleans up on cancellation. The TLS context is built from the backend's own settings with
    ``client_context`` (same trust as the proxy) rather than sharing the backend's ``ssl`` object,
    because httpcore rewrites ALPN on the context it is given; keyed by the settings, a client also
    survives reloads. HTTP/2 backends are probed the way the HTTP/2 engine talks to them (h2 over TLS,
    prior-knowledge h2c in cleartext). ``trust_env`` is off: probes never go through an env proxy.

Several workers (``--workers N``) each run their own checker; their verdicts converge because they
probe the same endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import anyio.lowlevel
import httpx

from kairos import __version__
from kairos.config.policies import HealthCheckConfig
from kairos.proxy.tls import client_context
from kairos.routing.backend import BackendState
from kairos.routing.route import Route

logger = logging.getLogger("kairos.health")

MAX_BODY = 65536  # bytes of a probe's answer read at most (the rest is dropped with the connection)
RESULTS = ("success", "failure", "timeout", "error")  # failure = unexpected status; error = no answer
_PROBED_SCHEMES = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class ClientKey:
    """The settings a probe client depends on; backends that agree share one client."""

    tls: bool
    http2: bool
    ca_file: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What to probe for one backend and how, as planned from the route table."""

    key: str  # scheme://host:port, as BackendState.key
    url: str
    settings: HealthCheckConfig
    state: BackendState
    client: ClientKey
    route: str  # external_path of the route whose settings apply

    @property
    def interval(self) -> float:
        return self.settings.interval_ms / 1000

    @property
    def timeout(self) -> float:
        return self.settings.timeout_ms / 1000

    def accepts(self, status: int) -> bool:
        expected = self.settings.expected_statuses
        return status in expected if expected else 200 <= status < 400


def plan(routes: Iterable[Route], default: HealthCheckConfig | None = None) -> dict[str, ProbeTarget]:
    """The probe targets of a route table, by backend key (see the module docstring for the rules)."""
    targets: dict[str, ProbeTarget] = {}
    ignored: set[str] = set()
    for route in sorted(routes, key=lambda route: route.index):
        settings = route.config.health_check or default
        if settings is None:
            continue  # health is not used on this route (see the module docstring)
        for backend in route.backends:
            path = backend.health_check_path
            if path is None:
                continue
            if not backend.http_base.startswith(_PROBED_SCHEMES):
                ignored.add(backend.key)
                continue
            current = targets.get(backend.key)
            if current is not None and current.settings.interval_ms <= settings.interval_ms:
                continue
            options = route.config.upstreams[backend.index]
            tls = backend.http_base.startswith("https://")
            client = (
                ClientKey(True, backend.http2, options.tls_ca_file, options.tls_verify)
                if tls
                else ClientKey(False, backend.http2)
            )
            targets[backend.key] = ProbeTarget(
                backend.key, backend.http_base + path, settings, backend.state, client, route.name
            )
    for key in sorted(ignored):
        logger.warning(
            "health check: backend %s is not an HTTP backend; its health_check_path is ignored", key
        )
    return targets


def first_offsets(targets: Mapping[str, ProbeTarget]) -> dict[str, float]:
    """Seconds from start to each backend's first probe: the i-th of N (by key) at interval * i / N."""
    keys = sorted(targets)
    count = len(keys)
    return {key: targets[key].interval * position / count for position, key in enumerate(keys)}


def _h2_installed() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(slots=True, eq=False)
class _Probe:
    """Runtime of one probed backend: its current target, schedule, streaks and task."""

    target: ProbeTarget
    phase_at: float = 0.0  # loop time the next probe is scheduled for, before jitter
    next_at: float = 0.0  # loop time of the next probe (phase_at + this cycle's jitter)
    last_started: float | None = None
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_result: str | None = None
    last_reason: str | None = None
    last_probe_at: float | None = None  # wall clock
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class HealthChecker:
    def __init__(self, *, jitter: float = 0.1, user_agent: str | None = None) -> None:
        self.jitter = jitter
        self.user_agent = user_agent or f"Kairos-HealthCheck/{__version__}"
        self.results: dict[str, dict[str, int]] = {}  # backend key -> result -> probes
        self._targets: dict[str, ProbeTarget] = {}
        self._probes: dict[str, _Probe] = {}
        self._clients: dict[ClientKey, httpx.AsyncClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled by a re-plan, awaited by stop()
        self._lock = threading.Lock()  # update() may come from another thread (a file watcher)

    # -- planning ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def targets(self) -> Mapping[str, ProbeTarget]:
        return self._targets

    @property
    def tasks(self) -> int:
        """Probe tasks alive: one per probed backend while running."""
        return sum(1 for probe in self._probes.values() if probe.task is not None and not probe.task.done())

    def update(self, routes: Iterable[Route], default: HealthCheckConfig | None = None) -> None:
        """Re-plan from a (new) route table; a running checker applies it at once."""
        targets = plan(routes, default)
        with self._lock:
            self._targets = targets
        loop = self._loop
        if loop is None:
            self._sync()
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._sync()
        else:
            loop.call_soon_threadsafe(self._sync)

    def _sync(self) -> None:
        """Bring the probe records (and, when running, their tasks) in line with ``_targets``."""
        with self._lock:
            targets = self._targets
        for key in [key for key in self._probes if key not in targets]:
            probe = self._probes.pop(key)
            if probe.task is not None:
                probe.task.cancel()
                self._retiring.add(probe.task)
                probe.task.add_done_callback(self._retiring.discard)
            self.results.pop(key, None)
            state = probe.target.state
            if not state.healthy:
                state.healthy = True
                logger.info("health check: backend %s is no longer actively checked; marked healthy", key)
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        for key, target in targets.items():
            kept = self._probes.get(key)
            if kept is None:
                self._probes[key] = _Probe(target)
                self.results[key] = dict.fromkeys(RESULTS, 0)
                continue
            previous, kept.target = kept.target, target
            if loop is not None and target.settings.interval_ms != previous.settings.interval_ms:
                if kept.last_started is None:  # still waiting for its first probe
                    kept.phase_at = min(kept.phase_at, now + target.interval)
                else:  # same phase, new period
                    kept.phase_at += target.interval - previous.interval
                kept.next_at = kept.phase_at
                kept.wake.set()
        if loop is None:
            return
        offsets = first_offsets(targets)
        for key, probe in self._probes.items():
            if probe.task is None:
                probe.phase_at = probe.next_at = now + offsets[key]
                probe.wake = asyncio.Event()  # bound to this loop (a restart may run on another)
                probe.task = loop.create_task(self._run(probe), name=f"kairos-health-check {key}")

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        # Pay one-time costs now, not inside the first probes (which would bunch them up): a
        # client's TLS setup (~40 ms) and anyio's lazily imported asyncio backend (~30 ms).
        for key in {target.client for target in self._targets.values()}:
            self._client(key)
        if self._targets:
            await anyio.lowlevel.checkpoint()
        self._loop = asyncio.get_running_loop()
        self._sync()
        if self._probes:
            logger.info("health check: probing %d backend(s)", len(self._probes))

    async def stop(self) -> None:
        self._loop = None
        tasks = list(self._retiring)
        for probe in self._probes.values():
            if probe.task is not None:
                probe.task.cancel()
                tasks.append(probe.task)
                probe.task = None
        await asyncio.gather(*tasks, return_exceptions=True)
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- probing -------------------------------------------------------------------------------

    async def _run(self, probe: _Probe) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = probe.next_at - loop.time()
            if delay > 0:
                probe.wake.clear()
                timer = loop.call_later(delay, probe.wake.set)
                try:
                    await probe.wake.wait()
                finally:
                    timer.cancel()
                continue  # re-read next_at: a reload may have moved it
            probe.last_started = loop.time()
            try:
                await self._check(probe)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the checking of this backend
                logger.exception("health check: probing %s failed unexpectedly", probe.target.key)
            # Fixed phase, bounded jitter: the schedule advances by exactly one interval, so the
            # spread of the first probes holds (jitter never accumulates into a drift that would
            # line backends up); after a probe that overran its slot, the phase restarts now.
            interval = probe.target.interval
            probe.phase_at = max(probe.phase_at + interval, loop.time())
            probe.next_at = probe.phase_at + random.uniform(0, self.jitter * interval)

    async def check(self, key: str) -> str:
        """Probe one planned backend now and record the outcome (counters, streaks, state)."""
        return await self._check(self._probes[key])

    async def _check(self, probe: _Probe) -> str:
        target = probe.target
        result, reason = await self.probe(target)
        if self._probes.get(target.key) is not probe:
            return result  # re-planned away while probing: the verdict no longer matters
        probe.last_result, probe.last_reason, probe.last_probe_at = result, reason, time.time()
        counts = self.results.setdefault(target.key, dict.fromkeys(RESULTS, 0))
        counts[result] += 1
        target = probe.target  # settings may have been re-planned during the probe
        state = target.state
        settings = target.settings
        if result == "success":
            probe.successes += 1
            probe.failures = 0
            if not state.healthy and probe.successes >= settings.healthy_threshold:
                state.healthy = True
                logger.info(
                    "health check: backend %s is healthy again after %d consecutive passed probes (%s)",
                    target.key,
                    probe.successes,
                    reason,
                )
        else:
            probe.failures += 1
            probe.successes = 0
            if state.healthy and probe.failures >= settings.unhealthy_threshold:
                state.healthy = False
                logger.warning(
                    "health check: backend %s is unhealthy after %d consecutive failed probes (last: %s)",
                    target.key,
                    probe.failures,
                    reason,
                )
        return result

    async def probe(self, target: ProbeTarget) -> tuple[str, str]:
        """GET the target's URL once: (result, reason), result being one of ``RESULTS``."""
        client = self._client(target.client)
        limit = target.settings.timeout_ms
        try:
            async with asyncio.timeout(target.timeout):
                async with client.stream("GET", target.url, timeout=target.timeout) as response:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_BODY:
                            break
        except (TimeoutError, httpx.TimeoutException):
            return "timeout", f"no answer within {limit} ms"
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return "error", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if target.accepts(status):
            return "success", f"HTTP {status}"
        return "failure", f"unexpected status HTTP {status}"

    def _client(self, key: ClientKey) -> httpx.AsyncClient:
        client = self._clients.get(key)
        if client is None:
            # Cleartext: no TLS ever (redirects are not followed), so no trust store to load.
            verify = (client_context(key.ca_file, key.verify, key.http2) or True) if key.tls else False
            http2 = key.http2
            if http2 and not _h2_installed():
                logger.warning("health check: h2 is not installed (kairos[http2]); probing over HTTP/1.1")
                http2 = False
            client = self._clients[key] = httpx.AsyncClient(
                http1=key.tls or not http2,  # cleartext HTTP/2 = prior-knowledge h2c
                http2=http2,
                verify=verify,
                timeout=None,
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": self.user_agent},
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
        return client

    # -- reading -------------------------------------------------------------------------------

    def states(self) -> dict[str, bool]:
        """Healthy flag of every actively checked backend, by key."""
        return {key: target.state.healthy for key, target in sorted(self._targets.items())}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per-backend detail for diagnostics (admin API, tests)."""
        return {
            key: {
                "healthy": probe.target.state.healthy,
                "url": probe.target.url,
                "route": probe.target.route,
                "interval_ms": probe.target.settings.interval_ms,
                "consecutive_successes": probe.successes,
                "consecutive_failures": probe.failures,
                "last_result": probe.last_result,
                "last_reason": probe.last_reason,
                "last_probe_at": probe.last_probe_at,
                "probes": dict(self.results.get(key, {})),
            }
            for key, probe in sorted(self._probes.items())
        }
