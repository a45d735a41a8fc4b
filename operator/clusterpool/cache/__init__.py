"""Caches for LLM responses (used by the SDK; importable without kopf).

Built so far: MemoryCache (LRU, LFU, FIFO, TTL; bounded by entries and bytes).
"""

from clusterpool.cache.memory import CacheStats, MemoryCache

__all__ = ["CacheStats", "MemoryCache"]
