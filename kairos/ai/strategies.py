"""The AI routing strategies: each turns a request context into a backend index of its route.

- ``content_analysis`` (kairos-rs's one working strategy): one chat completion per (uncached)
  request; the model reads the request and the backends' descriptions and answers ``{"index": N}``.
- ``semantic``: no chat call. The backends' ``description`` and ``examples`` are embedded once per
  config (lazily, then kept); each (uncached) request's preview is embedded and the backend holding
  the nearest text (cosine similarity) wins. One embedding call per request instead of a
  completion: cheaper, faster, and deterministic.
- ``latency_prediction``: no provider at all; the backend with the lowest predicted latency
  (peak-EWMA x load, see kairos/ai/latency.py).

A provider chain (the route's provider, then its fallbacks, in order) is shared by the first two:
a provider whose breaker is open is skipped without a call, a failing one hands over to the next,
and every call gets only what is left of the decision's time budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from kairos.ai.context import RequestContext
from kairos.ai.prompt import describe_backend, messages, parse_answer
from kairos.ai.provider import CircuitOpen, Provider, ProviderError

T = TypeVar("T")


class ProviderChain:
    """The providers a route may ask, in order."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers = tuple(providers)

    async def complete(self, prompt: list[dict[str, str]], deadline: float) -> str | None:
        return await self._first(lambda provider, left: provider.complete(prompt, left), deadline)

    async def embed(self, texts: list[str], deadline: float) -> list[list[float]]:
        return await self._first(lambda provider, left: provider.embed(texts, left), deadline)

    async def _first(self, call: Callable[[Provider, float], Awaitable[T]], deadline: float) -> T:
        error: ProviderError | None = None
        for provider in self.providers:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise error or ProviderError("decision budget spent", timeout=True)
            if provider.blocked(now):
                continue
            try:
                return await call(provider, left)
            except ProviderError as exc:
                error = exc
        if error is None:
            raise CircuitOpen("every provider's circuit is open")
        raise error


class ContentAnalysis:
    kind = "content_analysis"
    uses_body = True

    def __init__(self, lines: Sequence[str], chain: ProviderChain) -> None:
        self.lines = tuple(lines)
        self.chain = chain

    async def choose(self, context: RequestContext, deadline: float) -> int:
        answer = await self.chain.complete(messages(self.lines, context.as_dict()), deadline)
        return parse_answer(answer, len(self.lines))


class Semantic:
    kind = "semantic"
    uses_body = True

    def __init__(self, texts: Sequence[Sequence[str]], chain: ProviderChain) -> None:
        self.texts = tuple(tuple(group) for group in texts)  # per backend: description + examples
        self.chain = chain
        self._vectors: list[list[list[float]]] | None = None
        self._lock = asyncio.Lock()

    @property
    def prepared(self) -> bool:
        return self._vectors is not None

    async def prepare(self, deadline: float) -> list[list[list[float]]]:
        """Embed the backends' texts (once; concurrent callers wait for the one call)."""
        if self._vectors is not None:
            return self._vectors
        async with self._lock:
            if self._vectors is None:
                flat = [text for group in self.texts for text in group]
                vectors = [_normalised(v) for v in await self.chain.embed(flat, deadline)]
                grouped: list[list[list[float]]] = []
                position = 0
                for group in self.texts:
                    grouped.append(vectors[position : position + len(group)])
                    position += len(group)
                self._vectors = grouped
            return self._vectors

    async def choose(self, context: RequestContext, deadline: float) -> int:
        backends = await self.prepare(deadline)
        (query,) = await self.chain.embed([context.as_text() or context.method], deadline)
        query = _normalised(query)
        best, best_score = 0, -math.inf
        for index, vectors in enumerate(backends):
            score = max((_dot(query, vector) for vector in vectors), default=-math.inf)
            if score > best_score:
                best, best_score = index, score
        return best


def backend_lines(descriptions: Sequence[str | None], hosts: Sequence[tuple[str, int]]) -> list[str]:
    return [
        describe_backend(index, description, host, port)
        for index, (description, (host, port)) in enumerate(zip(descriptions, hosts, strict=True))
    ]


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _dot(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return -math.inf
    return math.fsum(x * y for x, y in zip(a, b, strict=True))
