"""Caches for LLM responses (used by the SDK; importable without kopf).

- MemoryCache: in process, LRU, LFU, FIFO or TTL eviction, bounded by entries and bytes;
- RedisCache / AsyncRedisCache: Redis or Redis Cluster, per-pool prefix and version;
- LayeredCache: memory in front of Redis, write-through or write-back, outage-tolerant;
- build_cache: the cache a pool's routing table describes (see docs/caching.md).
"""

from clusterpool.cache.build import build_cache, redis_connection
from clusterpool.cache.layered import LayeredCache, LayeredStats
from clusterpool.cache.memory import CacheStats, MemoryCache
from clusterpool.cache.redis import AsyncRedisCache, RedisCache, RedisConnection

__all__ = [
    "AsyncRedisCache",
    "CacheStats",
    "LayeredCache",
    "LayeredStats",
    "MemoryCache",
    "RedisCache",
    "RedisConnection",
    "build_cache",
    "redis_connection",
]
