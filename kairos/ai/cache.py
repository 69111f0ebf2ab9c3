"""Decisions remembered by the fingerprint of the normalised request context.

Bounded (least recently used entries go first) so a flood of unique requests cannot grow memory;
an entry lives ``cache_ttl_secs``. Only good decisions are stored: a fallback is never cached, so
the next request asks again (the provider's circuit breaker is what spares a failing provider).
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_ENTRIES = 10_000


class DecisionCache:
    __slots__ = ("_entries", "evictions", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple[str, bytes], tuple[int, float]] = OrderedDict()
        self.max_entries = max_entries
        self.evictions = 0

    def get(self, key: tuple[str, bytes], now: float) -> int | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        index, expires = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return index

    def put(self, key: tuple[str, bytes], index: int, expires: float) -> None:
        entries = self._entries
        entries[key] = (index, expires)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
