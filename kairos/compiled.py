"""Values compiled once per config object: the cache every per-route concern keeps on its hot path.

Keyed by identity: hashing a pydantic model costs about a microsecond per request here, and some
configs hold dicts (unhashable). The config is kept beside its value, so a recycled ``id()`` never
returns another config's value. Bounded: past ``limit`` distinct configs (reload after reload) the
cache starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")
V = TypeVar("V")


class PerConfig(Generic[C, V]):
    __slots__ = ("_build", "_entries", "_limit")

    def __init__(self, build: Callable[[C], V], limit: int = 1000) -> None:
        self._build = build
        self._limit = limit
        self._entries: dict[int, tuple[C, V]] = {}

    def get(self, config: C) -> V:
        entry = self._entries.get(id(config))
        if entry is not None and entry[0] is config:
            return entry[1]
        if len(self._entries) >= self._limit:
            self._entries.clear()
        value = self._build(config)
        self._entries[id(config)] = (config, value)
        return value
