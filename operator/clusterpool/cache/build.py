"""Build the cache a pool's CacheSettings describe (the SDK's side of spec.cache)."""

from __future__ import annotations

from typing import cast

from clusterpool.cache.layered import LayeredCache, WriteMode
from clusterpool.cache.memory import MemoryCache, Policy
from clusterpool.cache.redis import RedisCache, RedisConnection
from clusterpool.core.cache_settings import CacheSettings, RedisSettings


def redis_connection(settings: RedisSettings, password: str | None, ca_pem: str | None = None) -> RedisConnection:
    return RedisConnection(
        address=settings.address,
        cluster_nodes=settings.cluster_nodes,
        database=settings.database,
        username=settings.username,
        password=password,
        tls=settings.tls,
        insecure_skip_verify=settings.insecure_skip_verify,
        ca_pem=ca_pem,
        timeout_seconds=settings.timeout_milliseconds / 1000,
    )


def build_cache(settings: CacheSettings, password: str | None = None, ca_pem: str | None = None) -> LayeredCache | None:
    """The cache the settings describe; None for type None. Redis is not contacted here
    (the first call does, and an unreachable Redis only means misses)."""
    if settings.type == "None":
        return None
    local = None
    if settings.type in ("Memory", "Layered"):
        local = MemoryCache(
            cast(Policy, settings.policy), settings.max_entries, settings.max_bytes, settings.ttl_seconds
        )
    remote = None
    if settings.type in ("Redis", "Layered"):
        if settings.redis is None:
            raise ValueError(f"cache type {settings.type} needs Redis settings")
        remote = RedisCache.connect(
            redis_connection(settings.redis, password, ca_pem),
            settings.key_prefix,
            settings.version,
            settings.ttl_seconds,
        )
    return LayeredCache(
        remote,
        local,
        cast(WriteMode, settings.write_mode),
        flush_interval=settings.flush_interval_milliseconds / 1000,
        max_pending=settings.max_pending,
    )
