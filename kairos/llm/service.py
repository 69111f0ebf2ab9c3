"""The gateway's LLM side: litellm loaded when an ``llm`` route exists, the transports (and the HTTP
pool of the direct one), the limit store, the analytics store, and the counters /metrics reads.

Owned by the Gateway: ``update()`` on every config apply, ``start()``/``close()`` in the lifespan.
litellm (~5 s to import) is loaded in a thread at startup, or by the reload that brings the first
``llm`` route, as AI routing does. The analytics store (kairos/analytics/) writes one record per
call in batches, off the request path: SQLite next to the config file by default, PostgreSQL with
``KAIROS_ANALYTICS_URL``. The limit store is memory, or Redis with ``KAIROS_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import Send

from kairos.ai.provider import ensure_litellm
from kairos.config.llm import LlmConfig, LlmTarget
from kairos.exchange import Exchange
from kairos.llm.calls import Attempted
from kairos.llm.transport import Transports
from kairos.observability.requests import Histogram
from kairos.routing.matcher import RouteTable

if TYPE_CHECKING:  # imported when an llm route first needs them (SQLAlchemy, redis scripts)
    from kairos.analytics.store import AnalyticsStore
    from kairos.llm.cache import LlmCache
    from kairos.llm.limits import LimitStore, Reservation
    from kairos.routing.route import Route

logger = logging.getLogger("kairos.llm")

ANALYTICS_FILE = "kairos-analytics.db"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    reported: bool = False  # the provider sent usage (else the counts are estimates or zero)


@dataclass(slots=True)
class LlmStats:
    """Plain counters for /metrics (OpenTelemetry GenAI names where they exist)."""

    requests: defaultdict[tuple[str, str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    tokens: defaultdict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    cost: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    ttft: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    fallbacks: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    limited: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    @staticmethod
    def observe(table: dict[tuple[str, str], Histogram], key: tuple[str, str], seconds: float) -> None:
        histogram = table.get(key)
        if histogram is None:
            histogram = table[key] = Histogram()
        histogram.observe(seconds)


class LlmService:
    def __init__(self, redis_url: str | None, analytics_url: str | None, analytics_dir: Path | None) -> None:
        self.stats = LlmStats()
        self._redis_url = redis_url
        self._analytics_url = analytics_url
        self._analytics_dir = analytics_dir
        self.limits: LimitStore | None = None
        self.analytics: AnalyticsStore | None = None
        self.routes = 0
        # Response caches by route key, with the cache config they were built from: a reload that
        # keeps a route's cache settings keeps its entries.
        self._caches: dict[str, tuple[Any, LlmCache]] = {}
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.transports = Transports()  # how each target is called; the direct one's connection pool
        self._prices: dict[str, Price | None] = {}  # litellm's price of each target, looked up once
        self._counted: list[str] = []
        self._targets: list[LlmTarget] = []

    def update(self, table: RouteTable) -> None:
        llm_routes = [route for route in table.routes if route.config.protocol == "llm"]
        self.routes = len(llm_routes)
        self.transports.clear()
        self._targets = [
            target
            for route in llm_routes
            if route.config.llm is not None
            for entry in route.config.llm.models.values()
            for target in entry.targets
        ]
        # The models whose prompts are counted (routes with limits): their tokenizers load off the loop.
        self._counted = sorted(
            {
                entry.targets[0].label
                for route in llm_routes
                if route.config.llm is not None and route.config.llm.limits is not None
                for entry in route.config.llm.models.values()
            }
        )
        wanted = {route.key: route.config.llm.cache for route in llm_routes if route.config.llm is not None}
        for key in [key for key, (config, _) in self._caches.items() if wanted.get(key) != config]:
            _, stale = self._caches.pop(key)
            if self._started:
                self._spawn(stale.close())
        if self.routes and self._started:
            self._spawn(self._ensure_started())

    async def start(self) -> None:
        self._started = True
        if self.routes:
            await self._ensure_started()

    async def _ensure_started(self) -> None:
        litellm = await ensure_litellm()  # loaded in a thread the first time, then at once
        for target in self._targets:  # decided and priced now (~10 ms the first time), not in a request
            for kind in ("chat", "text"):
                self.transports.for_target(target, kind, litellm)
            if target.label not in self._prices:
                self._prices[target.label] = Price.of(target.label)
        if self._counted:  # a tokenizer takes up to ~1 s to load: not on the event loop, not in a request
            self._spawn(asyncio.to_thread(COUNTER.warm, litellm, list(self._counted)))
        if self.analytics is None and (self._analytics_url or self._analytics_dir is not None):
            from kairos.analytics.store import AnalyticsStore

            directory = self._analytics_dir or Path(".")
            store = AnalyticsStore(self._analytics_url, directory / ANALYTICS_FILE)
            self.analytics = store
            await store.start()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cache_for(self, route: Route) -> LlmCache | None:
        """The route's response cache (built on first use), None without a ``cache`` block."""
        settings = route.config.llm.cache if route.config.llm is not None else None
        if settings is None:
            return None
        found = self._caches.get(route.key)
        if found is not None and found[0] == settings:
            return found[1]
        from kairos.llm.cache import LlmCache

        cache = LlmCache(settings, self._redis_url)
        self._caches[route.key] = (settings, cache)
        return cache

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for _, cache in self._caches.values():
            await cache.close()
        self._caches.clear()
        await self.transports.close()
        if self.analytics is not None:
            await self.analytics.stop()
            self.analytics = None
        if self.limits is not None:
            await self.limits.close()
            self.limits = None
        self._started = False

    # -- limits ---------------------------------------------------------------------------------

    async def reserve(
        self,
        config: LlmConfig,
        consumer: str,
        model: str,
        kind: str,
        request: dict[str, Any],
        send: Send,
        exchange: Exchange,
    ) -> Reservation | bool | None:
        """None: no limits; a Reservation: admitted; False: refused (the 429 has been sent)."""
        settings = config.limits
        if settings is None:
            return None
        from kairos.llm.limits import TokenLimits, make_limit_store

        if self.limits is None:
            self.limits = make_limit_store(self._redis_url)
        limits = TokenLimits(
            tokens_per_minute=settings.tokens_per_minute,
            requests_per_minute=settings.requests_per_minute,
            budget_usd_per_day=settings.budget_usd_per_day,
            budget_usd_per_month=settings.budget_usd_per_month,
        )
        prompt = await estimate_prompt_tokens(config, model, kind, request)
        completion = int(
            request.get("max_tokens")
            or request.get("max_completion_tokens")
            or config.max_tokens
            or config.default_max_tokens
        )
        if kind == "embedding":
            completion = 0
        cost = self.price(config, model, prompt, completion)
        verdict = await self.limits.reserve(f"{consumer}|{model}", limits, prompt + completion, cost)
        headers = _limit_headers(verdict)
        if verdict.allowed:
            return verdict.reservation
        self.stats.limited[(model, verdict.reason or "limit")] += 1
        from kairos.llm.endpoint import LlmError, _error  # the endpoint imports this module

        await _error(
            send,
            LlmError(
                429,
                "rate_limit_error",
                f"{consumer} is over the route's {verdict.reason} for {model}; "
                f"retry in {verdict.reset_seconds:.0f} s",
                code="rate_limit_exceeded",
            ),
            exchange,
            [*headers, (b"retry-after", str(max(1, round(verdict.reset_seconds))).encode())],
        )
        return False

    async def settle(
        self, reservation: Reservation | bool | None, usage: Usage | None, config: LlmConfig, model: str
    ) -> None:
        if reservation is None or reservation is False or reservation is True or self.limits is None:
            return
        if usage is None:
            await self.limits.reconcile(reservation, 0, 0.0)
        else:
            await self.limits.reconcile(
                reservation, usage.prompt_tokens + usage.completion_tokens, usage.cost_usd
            )

    # -- usage, cost, records ----------------------------------------------------------------------

    def price(self, config: LlmConfig, model: str, prompt: int, completion: int, target: Any = None) -> float:
        """USD for the tokens: the route's prices for the model when it sets them, else litellm's price
        list for the target (its bundled copy: nothing is downloaded), looked up once per target."""
        entry = config.models[model]
        if entry.input_cost_per_token is not None or entry.output_cost_per_token is not None:
            return prompt * (entry.input_cost_per_token or 0.0) + completion * (
                entry.output_cost_per_token or 0.0
            )
        label = (target or entry.targets[0]).label
        if label in self._prices:
            found = self._prices[label]
        else:
            if len(self._prices) > 4096:
                self._prices.clear()
            found = self._prices[label] = Price.of(label)
        return found.cost(prompt, completion) if found is not None else 0.0

    async def usage_of(
        self,
        answer: dict[str, Any],
        config: LlmConfig,
        model: str,
        kind: str,
        request: dict[str, Any],
        attempted: Attempted,
    ) -> Usage:
        """The usage a JSON answer reports, priced (estimated when it reports none)."""
        usage = Usage()
        found = answer.get("usage")
        if isinstance(found, dict):
            usage.prompt_tokens = int(found.get("prompt_tokens") or 0)
            usage.completion_tokens = int(found.get("completion_tokens") or 0)
            # 0 tokens in and out is no report: litellm's SDK fills that in when the provider sent no
            # usage; estimated then, as the direct transport does for a missing one.
            usage.reported = usage.prompt_tokens + usage.completion_tokens > 0
        text = "" if usage.reported else answer_text(answer)
        await self.complete_usage(usage, config, model, kind, request, attempted, text)
        return usage

    async def complete_usage(
        self,
        usage: Usage,
        config: LlmConfig,
        model: str,
        kind: str,
        request: dict[str, Any],
        attempted: Attempted,
        text: str,
    ) -> None:
        """Price the usage; when the provider reported none (it ignored ``include_usage``, or has no
        usage), estimate it first, by litellm's counter over the prompt and the answer's ``text``, so
        limits, analytics and metrics still count the call (litellm's SDK estimates it the same way)."""
        if not usage.reported:
            usage.prompt_tokens = await estimate_prompt_tokens(config, model, kind, request)
            if text:
                label = config.models[model].targets[0].label
                try:
                    usage.completion_tokens = COUNTER.text(await ensure_litellm(), label, text)
                except Exception:  # characters / 4, the usual rule of thumb
                    usage.completion_tokens = max(1, len(text) // 4)
        self.finish_usage(usage, config, model, attempted)

    def finish_usage(self, usage: Usage, config: LlmConfig, model: str, attempted: Attempted) -> None:
        usage.cost_usd = self.price(
            config, model, usage.prompt_tokens, usage.completion_tokens, attempted.target
        )

    def recorder(
        self, began: datetime, request_id: str, consumer: str, route: str, model: str, stream: bool
    ) -> Callable[..., None]:
        """What the endpoint calls once per request: counts for /metrics, one analytics record.
        ``record(attempted, usage, started, ttft_ms, outcome, status, cache="off")``."""

        def record(
            attempted: Attempted,
            usage: Usage,
            started: float,
            ttft_ms: float | None,
            outcome: str,
            status: int,
            cache: str = "off",
        ) -> None:
            elapsed = time.perf_counter() - started
            target = attempted.target
            provider = target.provider if target is not None else ""
            stats = self.stats
            stats.requests[(route, model, provider, outcome)] += 1
            if usage.prompt_tokens:
                stats.tokens[(model, provider, "input")] += usage.prompt_tokens
            if usage.completion_tokens:
                stats.tokens[(model, provider, "output")] += usage.completion_tokens
            if usage.cost_usd:
                stats.cost[(model, provider)] += usage.cost_usd
            if attempted.fallbacks:
                stats.fallbacks[(route, model)] += attempted.fallbacks
            stats.observe(stats.durations, (model, provider), elapsed)
            if ttft_ms is not None:
                stats.observe(stats.ttft, (model, provider), ttft_ms / 1000)
            if self.analytics is not None:
                from kairos.analytics.records import LlmCallRecord

                self.analytics.record(
                    LlmCallRecord(
                        time=began,
                        request_id=request_id,
                        consumer=consumer,
                        route=route,
                        model=model,
                        provider=provider,
                        target_model=target.model if target is not None else "",
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        cost_usd=usage.cost_usd,
                        latency_ms=elapsed * 1000,
                        ttft_ms=ttft_ms,
                        outcome=outcome,
                        status=status,
                        cache=cache,
                        fallbacks=attempted.fallbacks,
                        stream=stream,
                    )
                )

        return record


@dataclass(frozen=True, slots=True)
class Price:
    """What litellm's price list says a target costs. ``cost_per_token`` takes ~170 µs a call here
    (~200 µs to raise for a model it does not know), twice per request with limits: a flat price is
    therefore read once, as its per-token rates (litellm's own arithmetic on one token of each kind),
    and only a model priced in tiers (``..._above_128k_tokens``) asks litellm on every call."""

    label: str
    prompt: float  # USD per prompt token
    completion: float
    tiered: bool

    @classmethod
    def of(cls, label: str) -> Price | None:
        """None when litellm does not price the model (a local one): unpriced."""
        try:
            import litellm

            info = litellm.get_model_info(model=label)
            tiered = any("_above_" in key and value for key, value in info.items())
            prompt = sum(litellm.cost_per_token(model=label, prompt_tokens=1, completion_tokens=0))
            completion = sum(litellm.cost_per_token(model=label, prompt_tokens=0, completion_tokens=1))
        except Exception:  # a model litellm's price list does not know
            return None
        return cls(label, float(prompt), float(completion), tiered)

    def cost(self, prompt: int, completion: int) -> float:
        if self.tiered:
            try:
                import litellm

                prompt_cost, completion_cost = litellm.cost_per_token(
                    model=self.label, prompt_tokens=prompt, completion_tokens=completion
                )
                return float(prompt_cost + completion_cost)
            except Exception:  # priced a moment ago: litellm's list does not change at run time
                return 0.0
        return prompt * self.prompt + completion * self.completion


def answer_text(answer: dict[str, Any]) -> str:
    """The generated text of a chat or text completion answer (its choices'), for an estimate."""
    pieces = []
    for choice in answer.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            piece = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(piece, str):
                pieces.append(piece)
    return "".join(pieces)


async def estimate_prompt_tokens(config: LlmConfig, model: str, kind: str, request: dict[str, Any]) -> int:
    """Prompt tokens by litellm's counter (its bundled tokenizers: nothing is downloaded)."""
    litellm = await ensure_litellm()
    label = config.models[model].targets[0].label
    try:
        if kind == "chat":
            return COUNTER.messages(litellm, label, request["messages"])
        text = request.get("prompt") if kind == "text" else request.get("input")
        if isinstance(text, list):
            text = " ".join(str(item) for item in text)
        return COUNTER.text(litellm, label, str(text))
    except Exception:  # an unusual message shape: count characters / 4, the usual rule of thumb
        return max(1, len(str(request.get("messages") or request.get("prompt") or request.get("input"))) // 4)


# The HuggingFace tokenizers litellm would fetch from huggingface.co for a model (Cohere's, Llama's);
# its Anthropic and DeepSeek ones are bundled.
DOWNLOADED_TOKENIZERS = frozenset({"cohere", "llama2", "llama3"})


class TokenCounter:
    """litellm's token counter with its per-model setup kept, and never a download.

    ``litellm.token_counter`` spends ~70% of its ~55 µs per short chat choosing the model's tokenizer and
    message accounting (``_MessageCountParams``), the same for every request of a model: that object is
    kept per model (~17 µs a count then) and litellm's own counting functions are called with it. If
    litellm's internals are not what this expects (another version), the public ``token_counter`` is
    used. For a model whose tokenizer litellm would download from huggingface.co (Llama, Cohere: it
    retries for ~23 s, blocking, when offline), litellm's bundled tiktoken encoding counts instead: an
    estimate within a few percent, and nothing fetched at run time. litellm's own counts (its SDK
    estimates a stream's usage when the provider reports none) make the same choice because
    ``LITELLM_OFFLINE_MODE`` is set before litellm is imported (kairos/ai/provider.py)."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._texts: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}

    def warm(self, litellm: Any, labels: list[str]) -> None:
        """Load the tokenizers of ``labels`` (blocking: from a worker thread)."""
        for label in labels:
            try:
                self.messages(litellm, label, [{"role": "user", "content": "warm-up"}])
                self.text(litellm, label, "warm-up")
            except Exception:  # the first request's count pays instead, or falls back to characters / 4
                logger.debug("warming the token counter of %s failed", label, exc_info=True)

    def tokenizer(self, label: str) -> Any:
        """None (litellm's own choice), or litellm's tiktoken one where its choice is a download."""
        if label in self._tokenizers:
            return self._tokenizers[label]
        try:
            from litellm.utils import _return_openai_tokenizer, huggingface_tokenizer_kind

            chosen = (
                _return_openai_tokenizer(label)
                if huggingface_tokenizer_kind(label) in DOWNLOADED_TOKENIZERS
                else None
            )
        except (ImportError, AttributeError):  # another litellm: no download is assumed either way
            import litellm

            chosen = None
            litellm.disable_hf_tokenizer_download = True
        return self._remember(self._tokenizers, label, chosen)

    def messages(self, litellm: Any, label: str, messages: list[Any]) -> int:
        tokenizer = self.tokenizer(label)
        try:
            internals = _internals()
            params = self._params.get(label)
            if params is None:
                params = self._remember(self._params, label, internals._MessageCountParams(label, tokenizer))
            converted = _converted(messages)
            count = internals._count_messages(params, converted, False, None)
            system = any(message.get("role") == "system" for message in converted)
            count += internals._count_extra(params.count_function, None, None, system, params.tool_section)
            return int(count)
        except (ImportError, AttributeError, TypeError):
            return int(litellm.token_counter(model=label, custom_tokenizer=tokenizer, messages=messages))

    def text(self, litellm: Any, label: str, text: str) -> int:
        tokenizer = self.tokenizer(label)
        try:
            count = self._texts.get(label)
            if count is None:
                count = self._remember(self._texts, label, _internals()._get_count_function(label, tokenizer))
            return int(count(text))
        except (ImportError, AttributeError, TypeError):
            return int(litellm.token_counter(model=label, custom_tokenizer=tokenizer, text=text))

    @staticmethod
    def _remember(table: dict[str, Any], label: str, value: Any) -> Any:
        if len(table) > 4096:
            table.clear()
        table[label] = value
        return value


def _internals() -> Any:
    """litellm's token-counting module: what its ``token_counter`` calls."""
    import importlib

    return importlib.import_module("litellm.litellm_core_utils.token_counter")


def _converted(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages as litellm's counter reads them (``token_counter``'s own first step)."""
    import importlib

    convert: Any = importlib.import_module("litellm.utils").convert_list_message_to_dict
    return list(convert(messages))


COUNTER = TokenCounter()


def _limit_headers(verdict: Any) -> list[tuple[bytes, bytes]]:
    headers = []
    if verdict.remaining_tokens is not None:
        headers.append((b"x-ratelimit-remaining-tokens", str(max(0, verdict.remaining_tokens)).encode()))
    if verdict.remaining_requests is not None:
        headers.append((b"x-ratelimit-remaining-requests", str(max(0, verdict.remaining_requests)).encode()))
    return headers
