"""The Gateway: the one owner of state that outlives a request.

It holds the current RouteTable snapshot, the per-backend state registry, the upstream engines
and the trusted-proxy resolver, and it starts and stops them in the ASGI lifespan. A config change
builds a whole new RouteTable and swaps one reference; requests in flight keep the snapshot they
started with, and backend state (keyed by scheme+host+port) carries over to the new table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kairos import __version__
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
from kairos.config.model import IpFilterConfig
from kairos.config.ratelimit import RateLimitConfig
from kairos.logs import configure_logging
from kairos.middleware.accesslog import AccessLog
from kairos.middleware.metrics import RequestMetrics
from kairos.proxy.aiohttp_engine import AiohttpEngine
from kairos.proxy.deadline import DeadlineWatch
from kairos.proxy.engine import UpstreamEngine
from kairos.proxy.headers import ClientAddress
from kairos.proxy.httpx_engine import HttpxEngine
from kairos.ratelimit.limiter import RateLimiter
from kairos.resilience.health import HealthChecker
from kairos.resilience.panic import PanicTracker
from kairos.resilience.retry import RetryStats
from kairos.routing.matcher import RouteTable
from kairos.routing.route import Backend, BackendState, compile_route
from kairos.settings import Settings

logger = logging.getLogger("kairos")

ConfigInput = GatewayConfig | LoadedConfig | dict[str, Any] | str | Path | None


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
        self.generation = 0
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
        # Response cache stores (memory per route, Redis per URL) + coalescing; purge() for admin.
        self.cache = ResponseCache(settings.redis_url, routes=lambda: self.table.routes)
        self.health_checker = HealthChecker()  # probes run from startup() to shutdown()
        # kairos.access handler + writer thread, from startup() to shutdown(); None: KAIROS_ACCESS_LOG=false
        self.access_log = AccessLog(settings.log_format) if settings.access_log else None
        self._explicit_config = config
        self._started = False
        self._start_lock = asyncio.Lock()
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

    def apply(self, loaded: LoadedConfig) -> None:
        """Build a new snapshot and swap it in; the old one stays valid for requests using it."""
        states = dict(self.backend_states)
        table = RouteTable(
            compile_route(index, route, states) for index, route in enumerate(loaded.config.routers)
        )
        used = {backend.key for route in table.routes for backend in route.backends}
        self.backend_states = {key: state for key, state in states.items() if key in used}
        self.client_address = ClientAddress(client_networks(loaded.config))
        config = loaded.config
        self.authenticator = Authenticator(
            config.jwt, config.api_keys, config.api_key_header, jwks=self._jwks_for(config)
        )
        self.config = loaded.config
        self.config_source = loaded.source
        self.table = table
        self.health_checker.update(table.routes, config.health_check)  # re-plans the probes
        self.generation += 1
        for warning in loaded.warnings:
            logger.warning("config %s: %s", loaded.source, warning)
        logger.info(
            "config %s loaded: %d route(s), generation %d", loaded.source, len(table), self.generation
        )

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

    def current_table(self) -> RouteTable:
        return self.table

    def current_authenticator(self) -> Authenticator | None:
        return self.authenticator

    def current_config(self) -> GatewayConfig | None:
        return self.config

    def current_rate_limit(self) -> RateLimitConfig | None:
        return self.config.rate_limit if self.config is not None else None

    def current_ip_filter(self) -> IpFilterConfig | None:
        return self.config.ip_filter if self.config is not None else None

    def resolve_client_ip(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        return self.client_address.resolve(peer, headers)

    def is_trusted_proxy(self, ip: str) -> bool:
        return self.client_address.is_trusted(ip)

    def engine_for(self, backend: Backend) -> UpstreamEngine:
        return self.http2_engine if backend.http2 else self.default_engine

    @property
    def ready(self) -> bool:
        return self.config is not None

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
            await self.default_engine.start()
            await self.health_checker.start()
            if self.jwks is not None:
                self.jwks.start()  # in the background: a JWKS endpoint that is down never blocks startup
            if any(backend.http2 for route in self.table.routes for backend in route.backends):
                await self.http2_engine.start()
            self._started = True
            logger.info("Kairos %s started", self.version)

    async def ensure_started(self) -> None:
        """For a parent app that never runs our lifespan: start on the first request instead."""
        if not self._started:
            await self.startup()

    async def shutdown(self) -> None:
        await self.health_checker.stop()
        await self.deadlines.stop()
        if self.jwks is not None:
            await self.jwks.stop()
        await self.default_engine.close()
        await self.http2_engine.close()
        await self.rate_limiter.close()
        await self.cache.close()
        if self.access_log is not None:
            self.access_log.stop()  # writes what is queued, then ends the thread
        self._started = False

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()
