"""The AI router: owned by the Gateway, rebuilt on every config apply, consulted per request.

It holds what outlives a request: the providers (with their circuit breakers and token/cost
counts, kept across reloads while provider, model, base URL and key stay the same), the decision
cache (in memory, and in Redis with ``KAIROS_REDIS_URL`` so the replicas share decisions:
kairos/ai/shared_cache.py), the peak-EWMA latencies, the shadow tasks in flight and the counters
/metrics reads.

A decision (``decide``) has one time budget, ``ai.timeout_ms`` (default 1500 ms), for everything
it does: waiting for an identical decision already in flight, every provider of the chain, the
strategy's own work. What can happen, as ``kairos_ai_decisions_total{outcome}`` counts it:

- ``chosen``: the strategy answered a valid index; ``cached``: the same normalised context was
  decided within ``cache_ttl_secs``, by this replica or (shared cache) another one, or is being
  decided right now by another request of this replica (identical concurrent requests make one
  provider call, not one each);
- ``fallback_timeout``: the budget ran out; ``fallback_error``: every provider tried failed;
  ``fallback_invalid``: the answer was not ``{"index": N}`` with N in range;
  ``fallback_busy``: ``ai.max_concurrency`` provider calls were already in flight (the request does
  not queue behind them); ``fallback_circuit_open``: every provider's breaker is open, so no call;
- ``shadow``: a shadow-mode route decided (chosen or cached) but was routed normally.

Every fallback routes to ``fallback_backend_index`` when the route sets one, else the balancer picks
as if AI routing were off. None of them is ever an error for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kairos.ai.cache import DecisionCache
from kairos.ai.context import ContextMemo, RequestContext
from kairos.ai.latency import FAILURE_PENALTY, PeakEwma
from kairos.ai.prompt import InvalidAnswer
from kairos.ai.provider import (
    THROTTLE,
    CircuitOpen,
    Provider,
    ProviderError,
    ProviderSpec,
    close_litellm,
    ensure_litellm,
)
from kairos.ai.shared_cache import SharedDecisionCache
from kairos.ai.strategies import ContentAnalysis, ProviderChain, Semantic, backend_lines
from kairos.config.ai import PROVIDER_STRATEGIES, AiConfig, AiPolicy, AiProviderConfig
from kairos.heap import freeze_long_lived
from kairos.observability.requests import Histogram

if TYPE_CHECKING:
    from kairos.config.model import GatewayConfig, RouteConfig
    from kairos.exchange import Exchange
    from kairos.routing.route import Route

logger = logging.getLogger("kairos.ai")
perf_counter = time.perf_counter
monotonic = time.monotonic

OUTCOMES = (
    "chosen",
    "cached",
    "fallback_timeout",
    "fallback_error",
    "fallback_invalid",
    "fallback_busy",
    "fallback_circuit_open",
    "shadow",
)


@dataclass(slots=True)  # not frozen: built per request, and a frozen dataclass is slower to build
class Decision:
    index: int | None  # the backend to prefer; None: let the balancer pick
    outcome: str
    chosen: int | None = None  # what the strategy chose (shadow mode: not used for routing)


@dataclass(slots=True)
class AiStats:
    """Plain counters, read by the /metrics collector (kairos/ai/metrics.py)."""

    decisions: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, outcome)
    durations: dict[str, Histogram] = field(default_factory=dict)  # route
    shadow: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, "true"|"false")

    def count(self, route: str, outcome: str, seconds: float) -> None:
        key = (route, outcome)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = Histogram()
        histogram.observe(seconds)

    def agreement(self, route: str, agreed: bool) -> None:
        key = (route, "true" if agreed else "false")
        self.shadow[key] = self.shadow.get(key, 0) + 1


class RoutePlan:
    """What the router precomputed for one route of one config."""

    __slots__ = (
        "backends",
        "config",
        "debug_header",
        "fallback",
        "name",
        "preview_chars",
        "shadow",
        "signature",
        "strategy",
        "ttl",
        "uses_body",
    )

    def __init__(self, route: Route, policy: AiPolicy, strategy: ContentAnalysis | Semantic | None) -> None:
        self.config: RouteConfig = route.config
        self.name = route.name
        self.backends = len(route.backends)
        self.strategy = strategy  # None: latency_prediction (no provider)
        self.fallback = policy.fallback_backend_index
        self.ttl = float(policy.cache_ttl_secs) if strategy is not None else 0.0
        self.preview_chars = policy.body_preview_chars
        self.shadow = policy.shadow
        self.debug_header = policy.debug_header
        self.uses_body = strategy is not None
        labels = ",".join(p.label for p in strategy.chain.providers) if strategy is not None else ""
        backends = ",".join(b.key for b in route.backends)
        self.signature = f"{route.key}|{policy.strategy.kind}|{labels}|{backends}|{self.preview_chars}"


def _chain_configs(ai: AiConfig, policy: AiPolicy) -> list[tuple[AiProviderConfig, str | None]]:
    """(provider config, model override) in the order a route tries them.

    ``ai_policy.provider`` overrides the provider of ``ai``; its key is ``ai.api_key`` only when it is
    the same provider (kairos-rs sent ai.api_key to whatever provider the route named: an OpenAI key
    would go to another company), else the provider's own environment variable. The strategy's
    ``model`` overrides the model of the first provider. Route ``fallback_providers`` replace the
    global ones."""
    primary: AiProviderConfig = ai
    override = policy.provider.strip().lower() if policy.provider else None
    if override and override != ai.provider:
        primary = AiProviderConfig(provider=override, model=ai.model)
    fallbacks = policy.fallback_providers or ai.fallback_providers
    return [(primary, policy.strategy.model), *((config, None) for config in fallbacks)]


class AiRouter:
    def __init__(self, redis_url: str | None = None) -> None:
        """``redis_url`` (``KAIROS_REDIS_URL``): decisions are also shared with the other replicas."""
        self.stats = AiStats()
        self.cache = DecisionCache()
        self.shared = SharedDecisionCache(redis_url) if redis_url else None
        self.contexts = ContextMemo()  # raw request -> its redacted context (pure: kept across reloads)
        self.latency = PeakEwma()
        self.providers: dict[str, Provider] = {}
        self.ai: AiConfig | None = None
        self.needs_litellm = False
        self.in_flight = 0  # provider-calling decisions in flight (max_concurrency)
        self._plans: dict[str, RoutePlan] = {}
        self._pending: dict[tuple[str, bytes], asyncio.Future[int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    # -- configuration -------------------------------------------------------------------------

    def configure(self, config: GatewayConfig) -> None:
        """Take a newly applied config: plans are rebuilt lazily per route, providers and their
        breakers carry over when unchanged, and litellm is loaded if a route now needs it."""
        self.ai = config.ai
        self._plans = {}
        needs = any(
            route.ai_policy is not None
            and route.ai_policy.enabled
            and route.ai_policy.strategy.kind in PROVIDER_STRATEGIES
            for route in config.routers
        )
        self.needs_litellm = needs and config.ai is not None
        # Keep the providers (breaker state, counters) the new config still uses; forget the others.
        wanted: set[str] = set()
        if config.ai is not None:
            for route in config.routers:
                policy = route.ai_policy
                if policy is not None and policy.enabled and policy.strategy.kind in PROVIDER_STRATEGIES:
                    wanted.update(
                        ProviderSpec.of(c, m).identity for c, m in _chain_configs(config.ai, policy)
                    )
        self.providers = {key: provider for key, provider in self.providers.items() if key in wanted}
        if self._started and self.needs_litellm:
            self._spawn(self._load())

    def plan_for(self, route: Route) -> RoutePlan | None:
        plan = self._plans.get(route.key)
        if plan is not None and plan.config is route.config:
            return plan
        policy = route.config.ai_policy
        if policy is None or not policy.enabled:
            return None
        plan = self._build(route, policy)
        if plan is not None:
            self._plans[route.key] = plan
        return plan

    def _build(self, route: Route, policy: AiPolicy) -> RoutePlan | None:
        if len(route.backends) < 2:
            return None  # nothing to choose between: no decision, no provider call
        kind = policy.strategy.kind
        if kind == "latency_prediction":
            return RoutePlan(route, policy, None)
        ai = self.ai
        if ai is None:  # the validator refuses this; a hand-built config may still have it
            return None
        chain = ProviderChain(
            [self._provider(config, model, ai) for config, model in _chain_configs(ai, policy)]
        )
        upstreams = route.config.upstreams
        if kind == "semantic":
            texts = [[t for t in (b.description, *b.examples) if t] or [b.host] for b in upstreams]
            return RoutePlan(route, policy, Semantic(texts, chain))
        lines = backend_lines([b.description for b in upstreams], [(b.host, b.port) for b in upstreams])
        return RoutePlan(route, policy, ContentAnalysis(lines, chain))

    def _provider(self, config: AiProviderConfig, model: str | None, ai: AiConfig) -> Provider:
        spec = ProviderSpec.of(config, model)
        provider = self.providers.get(spec.identity)
        if provider is None:
            provider = self.providers[spec.identity] = Provider(spec, ai.circuit_breaker)
        else:
            provider.breaker_config = ai.circuit_breaker
        return provider

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load litellm (off the event loop) when the config has a route that needs it."""
        self._started = True
        if self.needs_litellm:
            await self._load()

    async def _load(self) -> None:
        try:
            await ensure_litellm()
        except Exception:
            logger.exception("litellm could not be loaded: AI routes will fall back")
            return
        if self._started:  # loaded by a reload while serving: keep its tables out of the collector's scans
            freeze_long_lived(collect=False)

    async def close(self) -> None:
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.shared is not None:
            await self.shared.close()
        await close_litellm()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- decisions -------------------------------------------------------------------------------

    async def decide(self, plan: RoutePlan, route: Route, context: RequestContext | None) -> Decision:
        """Choose a backend for one request; never raises (every failure is a fallback)."""
        started = time.perf_counter()
        chosen, outcome = await self._choose(plan, route, context)
        if chosen is not None and plan.shadow:
            outcome = "shadow"
        self.stats.count(plan.name, outcome, time.perf_counter() - started)
        if chosen is None or plan.shadow:
            return Decision(plan.fallback if not plan.shadow else None, outcome, chosen)
        return Decision(chosen, outcome, chosen)

    def cached(self, plan: RoutePlan, context: RequestContext) -> int | None:
        """The hit path of ``decide``, for a request routed by its decision (not shadow mode): the
        cached backend index, counted as ``cached`` with its duration exactly as ``decide`` counts
        it, or None when the cache holds no live decision (then ``decide``). Synchronous (no
        coroutine, no Decision): a repeated request is the common case, and it should cost little
        more than a route without AI routing."""
        if plan.ttl <= 0.0 or plan.shadow:
            return None
        started = perf_counter()
        index = self.cache.get((plan.signature, context.fingerprint()), monotonic())
        if index is None:
            return None
        self.stats.count(plan.name, "cached", perf_counter() - started)
        return index

    def decide_in_background(
        self, plan: RoutePlan, route: Route, context: RequestContext | None
    ) -> asyncio.Task[Decision]:
        """Shadow mode: the decision runs beside the request, which does not wait for it."""
        return self._spawn(self.decide(plan, route, context))

    async def _choose(
        self, plan: RoutePlan, route: Route, context: RequestContext | None
    ) -> tuple[int | None, str]:
        strategy = plan.strategy
        if strategy is None or context is None:
            return self.latency.pick(route.backends, time.monotonic()), "chosen"
        ai = self.ai
        timeout = ai.timeout_ms / 1000 if ai is not None else 1.5
        deadline = time.monotonic() + timeout
        key = (plan.signature, context.fingerprint())
        if plan.ttl > 0:
            hit = self.cache.get(key, time.monotonic())
            if hit is not None:
                return hit, "cached"
        pending = self._pending.get(key)
        if pending is not None:  # an identical request is being decided: wait for its answer
            try:
                return await asyncio.wait_for(asyncio.shield(pending), timeout), "cached"
            except asyncio.CancelledError:
                if pending.cancelled():  # the leader's client left: not this request's fault
                    return None, "fallback_error"
                raise
            except Exception as exc:
                return None, _outcome_of(exc)
        limit = ai.max_concurrency if ai is not None else 64
        if self.in_flight >= limit and (self.shared is None or plan.ttl <= 0):
            return None, "fallback_busy"  # (with a shared cache: after its lookup, which is not counted)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            index, left = await asyncio.wait_for(
                self._lookup_or_choose(plan, strategy, context, deadline, limit), timeout
            )
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters may be none
            if isinstance(exc, InvalidAnswer) and THROTTLE.allow("invalid:" + plan.name):
                logger.info(
                    "AI route %s: invalid answer (more within 10 s are not logged): %s", plan.name, exc
                )
            return None, _outcome_of(exc)
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        if not future.done():
            future.set_result(index)
        if left is not None:  # decided by another replica: remembered here as long as it is there
            self.cache.put(key, index, time.monotonic() + left)
            return index, "cached"
        if plan.ttl > 0:
            self.cache.put(key, index, time.monotonic() + plan.ttl)
            if self.shared is not None:  # for the other replicas; the request does not wait for it
                self._spawn(self.shared.put(plan.signature, key[1], index, plan.ttl))
        return index, "chosen"

    async def _lookup_or_choose(
        self,
        plan: RoutePlan,
        strategy: ContentAnalysis | Semantic,
        context: RequestContext,
        deadline: float,
        limit: int,
    ) -> tuple[int, float | None]:
        """The work of the one request that decides for its identical concurrent ones: the replicas'
        shared cache first, then the strategy (the provider call, counted against ``limit``). Returns
        the index and, when another replica had decided, the seconds its decision stays cached (None:
        decided here)."""
        shared = self.shared
        if shared is not None and plan.ttl > 0:
            hit = await shared.get(plan.signature, context.fingerprint(), plan.backends)
            if hit is not None:
                return hit
        if self.in_flight >= limit:
            raise Busy(f"{limit} AI decisions are calling a provider")
        self.in_flight += 1
        try:
            return await strategy.choose(context, deadline), None
        finally:
            self.in_flight -= 1

    def observe(self, exchange: Exchange) -> None:
        """A latency_prediction route's request ended: feed its backend's peak-EWMA."""
        backend = exchange.backend or (exchange.tried[-1] if exchange.tried else None)
        if backend is None:
            return
        seconds = exchange.upstream_seconds
        if exchange.upstream_failure is not None or seconds is None:
            if exchange.upstream_failure is None:
                return  # answered without reaching the upstream (e.g. refused): no sample
            seconds = FAILURE_PENALTY
        self.latency.observe(backend.key, seconds, time.monotonic())


class Busy(Exception):
    """``ai.max_concurrency`` provider calls are in flight: this decision falls back at once."""


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, Busy):
        return "fallback_busy"
    if isinstance(exc, InvalidAnswer):
        return "fallback_invalid"
    if isinstance(exc, CircuitOpen):
        return "fallback_circuit_open"
    if isinstance(exc, TimeoutError) or (isinstance(exc, ProviderError) and exc.timeout):
        return "fallback_timeout"
    if not isinstance(exc, ProviderError):
        logger.warning("AI decision failed unexpectedly: %s", type(exc).__name__)
    return "fallback_error"
