"""The Gateway: the one owner of state that outlives a request.

It holds the current RouteTable snapshot, the per-backend state registry, the upstream engines
and the trusted-proxy resolver, and it starts and stops them in the ASGI lifespan. A config change
builds a whole new RouteTable and swaps one reference; requests in flight keep the snapshot they
started with, and backend state (keyed by scheme+host+port) carries over to the new table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kairos import __version__
from kairos.admin.shadow import admin_shadow_warning
from kairos.ai.router import AiRouter
from kairos.auth.authenticator import Authenticator
from kairos.auth.jwks import JwksFetcher
from kairos.cache.manager import ResponseCache
from kairos.config import (
    ConfigError,
    GatewayConfig,
    LoadedConfig,
    default_config_text,
    load_data,
    load_file,
    load_text,
)
from kairos.config.loader import client_networks
from kairos.config.persist import render_document, write_atomically
from kairos.config.problems import StaleConfig
from kairos.config_store import ConfigStoreUnavailable, RedisConfigStore
from kairos.dns.listener import DnsListener
from kairos.dns.service import DnsService
from kairos.ftp.pool import FtpPool
from kairos.heap import freeze_long_lived
from kairos.llm.service import LlmService
from kairos.logs import configure_logging
from kairos.observability.accesslog import AccessLog
from kairos.observability.history import MetricsHistory, Reading
from kairos.observability.requests import RequestMetrics
from kairos.proxy.aiohttp_engine import AiohttpEngine
from kairos.proxy.deadline import DeadlineWatch
from kairos.proxy.engine import UpstreamEngine
from kairos.proxy.headers import ClientAddress
from kairos.proxy.httpx_engine import HttpxEngine
from kairos.ratelimit.limiter import RateLimiter
from kairos.reload import ConfigWatcher, SighupReload
from kairos.resilience.health import HealthChecker
from kairos.resilience.panic import PanicTracker
from kairos.resilience.retry import RetryStats
from kairos.resilience.shared_breaker import SharedBreakers
from kairos.routing.backend import Backend, BackendState
from kairos.routing.matcher import RouteTable
from kairos.routing.route import compile_route
from kairos.settings import Settings

if TYPE_CHECKING:
    from kairos.observability.multiprocess import MultiprocessExporter
    from kairos.observability.tracing import Tracing

logger = logging.getLogger("kairos")

# Built-in endpoints (kairos.app); the admin API adds its own sections (see shadow_warning).
RESERVED_PATHS = ("/health", "/ready", "/live", "/metrics")

ConfigInput = GatewayConfig | LoadedConfig | dict[str, Any] | str | Path | None

T = TypeVar("T")


@dataclass(slots=True)
class ReloadStatus:
    """What ``/api/config/status``, ``/metrics`` and the log say about config changes.

    ``generation`` counts applied configs (1 = the one loaded at startup). A failed attempt leaves
    the running config alone and is recorded here with every problem the validator found.
    """

    generation: int = 0
    applied_at: float | None = None  # when the running config was applied (Unix time)
    last_attempt_at: float | None = None
    last_trigger: str = ""  # startup, api, file, signal, admin
    last_result: str = ""  # success | failure | unchanged
    last_errors: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_success_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "applied_at": _iso(self.applied_at),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_trigger": self.last_trigger,
            "last_result": self.last_result,
            "last_errors": list(self.last_errors),
            "reloads": dict(self.results),
            "last_success_at": _iso(self.last_success_at),
        }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _tracing(settings: Settings) -> Tracing | None:
    """KAIROS_TRACING: OpenTelemetry is imported only when it is on (off costs nothing)."""
    if settings.tracing == "off":
        return None
    from kairos.observability.tracing import Tracing

    return Tracing(settings.tracing, __version__)


def _http1_engine(settings: Settings) -> UpstreamEngine:
    if settings.upstream_engine == "raw":
        from kairos.proxy.raw_engine import RawEngine

        return RawEngine(settings.upstream_max_connections, settings.upstream_keepalive_seconds)
    return AiohttpEngine(settings.upstream_max_connections, settings.upstream_keepalive_seconds)


class Gateway:
    def __init__(self, settings: Settings, config: ConfigInput = None) -> None:
        self.settings = settings
        self.version = __version__
        self.started_at = time.time()
        self.table = RouteTable(())
        self.config: GatewayConfig | None = None
        self.config_source = "(not loaded)"
        self.config_document: Any = None  # the running config as written (see LoadedConfig.document)
        self.config_digest = ""
        self.reload_status = ReloadStatus()
        self._reload_lock = asyncio.Lock()
        self.backend_states: dict[str, BackendState] = {}
        self.client_address = ClientAddress(())
        self.authenticator: Authenticator | None = None
        self.jwks: JwksFetcher | None = None  # kept across reloads while jwt.jwks_url stays the same
        self.default_engine: UpstreamEngine = _http1_engine(settings)
        self.http2_engine: UpstreamEngine = HttpxEngine()
        self.deadlines = DeadlineWatch()
        self.websocket_connections = 0
        self.rate_limiter = RateLimiter(settings.redis_url)
        self.panic = PanicTracker()  # routes in panic mode (balancer), for /metrics
        self.retry_stats = RetryStats()  # kept by the RetryMiddleware, for /metrics
        self.request_metrics = RequestMetrics()  # kept by the MetricsMiddleware, for /metrics
        # Sampled series for /api/metrics/history and the /ws/metrics streams (task from startup()).
        self.metrics_history = MetricsHistory(self.history_reading, settings.metrics_history_interval)
        # Response cache stores (memory per route, Redis per URL) + coalescing; purge() for admin.
        self.cache = ResponseCache(settings.redis_url, routes=lambda: self.table.routes)
        self.health_checker = HealthChecker()  # probes run from startup() to shutdown()
        # Circuit breakers with "shared": true: their state in Redis (KAIROS_REDIS_URL), attached to
        # the backends' breakers by apply(); the client is closed by shutdown().
        self.shared_breakers = SharedBreakers(settings.redis_url)
        # AI routing: providers, decision cache (also in Redis with KAIROS_REDIS_URL), counters; loads
        # litellm only if a route needs it.
        self.ai_router = AiRouter(settings.redis_url)
        self.ftp_pool = FtpPool()  # logged-in FTP control connections of ftp routes
        # kairos.access handler + writer thread, from startup() to shutdown(); None: KAIROS_ACCESS_LOG=false
        self.access_log = AccessLog(settings.log_format) if settings.access_log else None
        # dns routes: caches, upstreams, the answer path; the listener (KAIROS_DNS_PORT) from
        # startup() (or the reload that brings the first DNS route) to shutdown().
        self.dns = DnsService(self.access_log)
        self.dns.on_routes = self._dns_routes_appeared
        self.dns_listener: DnsListener | None = None
        # OpenTelemetry tracer provider (KAIROS_TRACING); exports from startup() to shutdown().
        self.tracing = _tracing(settings)
        self._explicit_config = config
        # The file reloads read and admin writes persist to: the explicit path, else
        # KAIROS_CONFIG_PATH (created by the first admin write when the embedded default runs).
        # None when the config was given as an object: changes then live in memory only.
        self.config_file: Path | None = (
            Path(config)
            if isinstance(config, str | Path)
            else settings.config_path
            if config is None
            else None
        )
        # llm routes (after config_file: the analytics database lives next to it): litellm, token
        # limits, request analytics, from startup() to shutdown().
        analytics_url = settings.analytics_url if settings.analytics else None
        analytics_dir = None
        if settings.analytics:
            analytics_dir = self.config_file.parent if self.config_file is not None else Path(".")
        self.llm = LlmService(settings.redis_url, analytics_url, analytics_dir)
        # KAIROS_CONFIG_STORE: the config shared by replicas; store_generation is the stored
        # generation this replica runs (0: none yet).
        self.config_store = RedisConfigStore(settings.config_store) if settings.config_store else None
        self.store_generation = 0
        self._started = False
        self._start_lock = asyncio.Lock()
        # Set by `kairos run`'s server on SIGTERM/SIGINT (kairos/server.py, DrainingServer): /ready
        # answers 503 so a load balancer moves away while requests are still served.
        self.draining = False
        # Live reload triggers (kairos/reload.py), from startup() to shutdown().
        self.config_watcher: ConfigWatcher | None = None
        self.sighup: SighupReload | None = None
        # Set by MetricsEndpoint under PROMETHEUS_MULTIPROC_DIR (kairos/observability/multiprocess.py).
        self.metrics_exporter: MultiprocessExporter | None = None
        if config is not None:
            self.apply(self._load(config))

    # -- configuration -------------------------------------------------------------------------

    def _load(self, config: ConfigInput) -> LoadedConfig:
        if isinstance(config, LoadedConfig):
            return config
        if isinstance(config, GatewayConfig):
            return LoadedConfig(config, [], "(object)")
        if isinstance(config, dict):
            return load_data(config, "(dict)")
        if isinstance(config, str | Path):
            return load_file(config)
        path = self.settings.config_path
        if path.exists():
            return load_file(path)
        logger.warning("config file %s not found: using the embedded default config (demo routes)", path)
        return load_text(default_config_text(), "(embedded default)")

    @property
    def generation(self) -> int:
        return self.reload_status.generation

    def apply(self, loaded: LoadedConfig, trigger: str = "startup") -> None:
        """Build a new snapshot and swap it in; the old one stays valid for requests using it.

        Everything is built before anything is replaced, so a failure leaves the running config
        whole. Backend state (health, breakers, in-flight counts) carries over by backend key.
        """
        config = loaded.config
        states = dict(self.backend_states)
        table = RouteTable(compile_route(index, route, states) for index, route in enumerate(config.routers))
        used = {backend.key for route in table.routes for backend in route.backends}
        client_address = ClientAddress(client_networks(config), config.forwarded_header)
        authenticator = Authenticator(
            config.jwt, config.api_keys, config.api_key_header, jwks=self._jwks_for(config)
        )
        self.backend_states = {key: state for key, state in states.items() if key in used}
        self.client_address = client_address
        self.authenticator = authenticator
        self.config = config
        self.config_source = loaded.source
        self.config_document = loaded.document
        self.config_digest = loaded.digest
        self.ai_router.configure(config)
        self.shared_breakers.update(table.routes, config.circuit_breaker, loaded.source)
        self.table = table
        self.dns.update(table, lambda: self.config.circuit_breaker if self.config is not None else None)
        self.llm.update(table)
        self.health_checker.update(table.routes, config.health_check)  # re-plans the probes
        status = self.reload_status
        now = time.time()
        status.generation += 1
        status.applied_at = status.last_attempt_at = status.last_success_at = now
        status.last_trigger, status.last_result, status.last_errors = trigger, "success", []
        if trigger != "startup":
            status.results["success"] += 1
        for warning in loaded.warnings:
            logger.warning("config %s: %s", loaded.source, warning)
        for index, route_config in enumerate(config.routers):
            shadowed = self.shadow_warning(route_config.external_path)
            if shadowed:
                logger.warning("config %s: routers[%d]: %s", loaded.source, index, shadowed)
        logger.info(
            "config %s applied (%s): %d route(s), generation %d",
            loaded.source,
            trigger,
            len(table),
            status.generation,
        )

    def shadow_warning(self, external_path: str) -> str | None:
        """Why a route would never be reached: its path is one the gateway answers itself (the
        health and metrics endpoints, the admin API's sections); kairos-rs has the same rule."""
        if external_path in RESERVED_PATHS:
            return f"external_path {external_path} is a built-in endpoint: the route is never reached"
        return admin_shadow_warning(external_path, self.settings.admin_prefix)

    def record_failed_reload(self, trigger: str, problems: list[str], source: str) -> None:
        """A change that did not apply: the running config stays; status, metrics and log say why."""
        status = self.reload_status
        status.last_attempt_at = time.time()
        status.last_trigger, status.last_result, status.last_errors = trigger, "failure", problems
        status.results["failure"] += 1
        logger.error(
            "config %s rejected (%s), still serving generation %d: %s",
            source,
            trigger,
            status.generation,
            "; ".join(problems),
        )

    async def reload(self, trigger: str = "api", force: bool = True) -> bool:
        """Re-read ``config_file`` and apply it. ``force=False`` skips a file whose bytes did not
        change (the watcher uses it, so the admin API's own writes do not apply twice). Returns
        whether a new config is running; a bad file is recorded, never raised."""
        async with self._reload_lock:
            if self.config_file is None:
                self.record_failed_reload(trigger, ["no config file: the config was given as an object"], "-")
                return False
            try:
                loaded = await asyncio.to_thread(load_file, self.config_file)
            except ConfigError as exc:
                self.record_failed_reload(trigger, [str(p) for p in exc.problems], exc.source)
                return False
            if not force and loaded.digest == self.config_digest:
                return False
            try:
                self.apply(loaded, trigger)
            except Exception as exc:  # a bug while building must not take the running config down
                logger.exception("config %s could not be applied", loaded.source)
                self.record_failed_reload(trigger, [f"could not be applied: {exc}"], loaded.source)
                return False
            return True

    async def change(
        self, document: Any, trigger: str = "admin", based_on: int | None = None
    ) -> LoadedConfig:
        """Validate an edited config document, persist it, then apply it — in that order, so a
        document that fails validation or cannot be written changes nothing (ConfigError or
        OSError is raised). Without a config file the change is applied in memory only.

        ``based_on``: the generation the edit was made from. If another change (a file reload, a
        SIGHUP) was applied since, StaleConfig is raised instead of overwriting it with an edit
        of the older document (optimistic concurrency, like Kubernetes' resourceVersion)."""
        async with self._reload_lock:
            if based_on is not None and based_on != self.generation:
                raise StaleConfig(based_on, self.generation)
            source = str(self.config_file) if self.config_file is not None else "(memory)"
            loaded = load_data(document, source)
            store = self.config_store
            if store is not None:  # shared first: if the other replicas cannot have it, nothing changes
                generation = await store.publish(self.store_generation, render_document(document))
                if generation is None:
                    raise StaleConfig(based_on if based_on is not None else self.generation, self.generation)
                self.store_generation = generation
            if self.config_file is not None:
                text = render_document(document)
                await asyncio.to_thread(write_atomically, self.config_file, text)
                loaded.digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            self.apply(loaded, trigger)
            return loaded

    def _jwks_for(self, config: GatewayConfig) -> JwksFetcher | None:
        """The JWKS fetcher for ``jwt.jwks_url``: the running one (and its keys) when the URL did not
        change, else a new one, started now if the gateway runs (else by startup())."""
        url = config.jwt.jwks_url if config.jwt is not None else None
        current = self.jwks
        if current is not None and config.jwt is not None and current.url == url:
            current.configure(config.jwt)
            return current
        if current is not None:
            current.stop_soon()
        self.jwks = JwksFetcher.from_config(config.jwt) if config.jwt is not None and url else None
        if self.jwks is not None and self._started:
            self.jwks.start()
        return self.jwks

    # -- live accessors: what the pipeline's layers read per request, so a reload applies at once --

    def live(self, pick: Callable[[GatewayConfig], T | None]) -> Callable[[], T | None]:
        """An accessor for a top-level policy of the running config, e.g.
        ``gateway.live(lambda config: config.cors)``: None while no config is loaded."""

        def current() -> T | None:
            config = self.config
            return pick(config) if config is not None else None

        return current

    def current_table(self) -> RouteTable:
        """The route table apply() compiled (not a config policy: built from all of it)."""
        return self.table

    def current_authenticator(self) -> Authenticator | None:
        """The authenticator apply() built from ``jwt`` and ``api_keys`` (with its JWKS fetcher)."""
        return self.authenticator

    def history_reading(self) -> Reading:
        """What the metrics history samples: the MetricsMiddleware's totals and a few counters."""
        metrics = self.request_metrics
        return Reading(
            totals=metrics.totals(),
            active=metrics.in_flight,
            websockets=self.websocket_connections,
            upstream_errors=sum(metrics.upstream_failures.values()),
            rate_limited=sum(self.rate_limiter.rejected.values()),
        )

    def resolve_client_ip(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        return self.client_address.resolve(peer, headers)

    def forwarding(self) -> ClientAddress:
        """The live trusted-proxy policy: whose forwarding headers are believed, and whether a
        Forwarded element is added upstream."""
        return self.client_address

    def engine_for(self, backend: Backend) -> UpstreamEngine:
        return self.http2_engine if backend.http2 else self.default_engine

    @property
    def ready(self) -> bool:
        """What /ready says: a config is loaded and the gateway is not draining for a shutdown."""
        return self.config is not None and not self.draining

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at

    # -- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        configure_logging(self.settings.log_level, self.settings.log_format)
        async with self._start_lock:
            if self._started:
                return
            if self.config is None:
                try:
                    self.apply(self._load(self._explicit_config))
                except ConfigError as exc:
                    for problem in exc.problems:
                        logger.error("config %s: %s", exc.source, problem)
                    raise
            if self.access_log is not None:
                self.access_log.start()
            if self.tracing is not None:
                self.tracing.start()
            await self.default_engine.start()
            await self.health_checker.start()
            self.metrics_history.start()
            await self.ai_router.start()  # imports litellm (in a thread) only when an AI route needs it
            if self.jwks is not None:
                self.jwks.start()  # in the background: a JWKS endpoint that is down never blocks startup
            if any(backend.http2 for route in self.table.routes for backend in route.backends):
                await self.http2_engine.start()
            self._start_reload_triggers()
            if self.config_store is not None:
                await self._join_config_store(self.config_store)
            await self._start_dns_listener()
            await self.llm.start()
            if self.metrics_exporter is not None:
                self.metrics_exporter.start()
            self._started = True
            freeze_long_lived()  # the collector stops rescanning modules, routes, litellm (kairos/heap.py)
            logger.info("Kairos %s started", self.version)

    async def _join_config_store(self, store: RedisConfigStore) -> None:
        """Run the stored config (the replicas' common one), or store ours when there is none yet;
        then watch for changes. A store that cannot be reached leaves the local config running and
        the watcher catching up later."""
        try:
            stored = await store.load()
            if stored is None and self.config_document is not None:
                generation = await store.publish(0, render_document(self.config_document))
                if generation is not None:
                    self.store_generation = generation
                    logger.info(
                        "config store %s: seeded with %s (generation 1)", store.url, self.config_source
                    )
                else:  # another replica seeded it first
                    stored = await store.load()
            if stored is not None:
                self._apply_stored(store, *stored)
        except ConfigStoreUnavailable as exc:
            logger.warning("config store: %s; the local config runs until it answers", exc)
        store.watch(lambda: self.store_generation, self._store_changed)

    def _apply_stored(self, store: RedisConfigStore, generation: int, text: str) -> None:
        source = f"{store.url} (generation {generation})"
        self.store_generation = generation  # also when refused: a bad document is not retried forever
        try:
            loaded = load_text(text, source)
        except ConfigError as exc:
            self.record_failed_reload("store", [str(problem) for problem in exc.problems], exc.source)
            return
        self.apply(loaded, "store")

    async def _store_changed(self, generation: int) -> None:
        store = self.config_store
        if store is None:
            return
        async with self._reload_lock:
            stored = await store.load()
            if stored is not None and stored[0] > self.store_generation:
                self._apply_stored(store, *stored)

    async def _start_dns_listener(self) -> None:
        """The DNS listener, when ``KAIROS_DNS_PORT`` is set and a DNS route exists. A port that
        cannot be bound stops the startup: a gateway that silently serves no DNS is worse."""
        port = self.settings.dns_port
        if port is None or self.dns_listener is not None or not self.dns.routes:
            return
        idle = max(runtime.config.tcp_idle_timeout_ms for runtime in self.dns.routes.values()) / 1000
        # SO_REUSEPORT always (as Envoy and CoreDNS do on Linux): every worker of `--workers N` binds
        # the port (a worker cannot tell it has siblings), and so can a new process during a restart.
        listener = DnsListener(self.dns, self.settings.dns_host, port, True, idle)
        await listener.start()
        self.dns_listener = listener

    def _dns_routes_appeared(self) -> None:
        """A reload brought DNS routes to a running gateway without a listener: start it."""
        if self._started and self.dns_listener is None and self.settings.dns_port is not None:
            self.dns.spawn(self._start_dns_listener())

    async def ensure_started(self) -> None:
        """For a parent app that never runs our lifespan: start on the first request instead."""
        if not self._started:
            await self.startup()

    def _start_reload_triggers(self) -> None:
        if self.config_file is not None and self.settings.config_watch:
            watcher = ConfigWatcher(self.config_file, self.reload)
            if watcher.start():
                self.config_watcher = watcher
        sighup = SighupReload(self.reload)
        if sighup.install():
            self.sighup = sighup

    async def shutdown(self) -> None:
        if self.config_watcher is not None:
            await self.config_watcher.stop()
            self.config_watcher = None
        if self.sighup is not None:
            await self.sighup.remove()
            self.sighup = None
        if self.metrics_exporter is not None:
            await self.metrics_exporter.stop()  # a last sync: this worker's counts outlive it
        await self.metrics_history.stop()  # ends the sampler and any open /ws/metrics streams
        await self.health_checker.stop()
        await self.deadlines.stop()
        if self.jwks is not None:
            await self.jwks.stop()
        await self.default_engine.close()
        await self.http2_engine.close()
        await self.rate_limiter.close()
        await self.cache.close()
        await self.ai_router.close()
        await self.shared_breakers.close()
        self.ftp_pool.close()
        if self.config_store is not None:
            await self.config_store.close()
        if self.dns_listener is not None:
            await self.dns_listener.stop()
            self.dns_listener = None
        await self.dns.close()
        await self.llm.close()
        if self.access_log is not None:
            self.access_log.stop()  # writes what is queued, then ends the thread
        if self.tracing is not None:
            await self.tracing.stop()  # exports what is queued, then ends the worker
        self._started = False

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()
