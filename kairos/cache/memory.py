"""The in-memory store: one LRU bounded by entry count AND bytes (bodies, headers, keys).

Every operation is O(1) but ``purge``; nothing ever awaits, so the ``async`` methods cost a
coroutine and no event-loop round trip. Stale entries are dropped when read or evicted.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from kairos.cache.entry import Entry


class MemoryStore:
    name = "memory"

    def __init__(self, max_entries: int = 1000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def available(self) -> bool:
        return True

    def get_now(self, key: str, now: float) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        entry = found[0]
        if entry.expires_at <= now:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def get(self, key: str) -> Entry | None:
        return self.get_now(key, time.time())

    async def set(self, key: str, entry: Entry) -> None:
        size = entry.size + len(key)
        self._remove(key)
        if size > self.max_bytes:
            return
        self._entries[key] = (entry, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    async def purge(self, prefix: str = "") -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)] if prefix else list(self._entries)
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[1]

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0
