"""The response cache's state and stores (the ASGI side is kairos/middleware/cache.py)."""

from kairos.cache.entry import CachedResponse, VaryMarker
from kairos.cache.manager import Outcome, ResponseCache
from kairos.cache.memory import MemoryStore
from kairos.cache.redis_store import CacheUnavailable, RedisCacheStore

__all__ = [
    "CacheUnavailable",
    "CachedResponse",
    "MemoryStore",
    "Outcome",
    "RedisCacheStore",
    "ResponseCache",
    "VaryMarker",
]
