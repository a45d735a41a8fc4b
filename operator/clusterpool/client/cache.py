"""The pool's cache, as the operator configures it (spec.cache -> the routing table).

    from clusterpool.client import FileTable, PoolCache
    cache = PoolCache(FileTable("/etc/clusterpool/routing.json"))
    cache.get(key) / cache.set(key, value)    # no-ops while the pool has no cache

The cache is built from the routing table's `cache` settings and rebuilt when they change:
a new spec.cache.version empties it at once (the old cache's unflushed writes are dropped,
they belong to the old version), other changes flush it first. The Redis password is read
from the Secret the table names: through the Kubernetes API by default (`secrets=` takes
another reader), or given by the application (`password=`), or from
$CLUSTERPOOL_CACHE_PASSWORD. A TLS CA bundle (caSecretRef) is read the same way.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from clusterpool.cache.build import build_cache
from clusterpool.cache.layered import LayeredCache, LayeredStats
from clusterpool.cache.redis import Value
from clusterpool.client.routing import RoutingTable, TableSource
from clusterpool.core.cache_settings import CacheSettings, SecretRef

log = logging.getLogger(__name__)
SecretSource = Callable[[SecretRef], str | None]


def secret_from_api(api_client: Any = None) -> SecretSource:
    """Read a Secret's key through the Kubernetes API (needs `get` on that Secret)."""

    def read(ref: SecretRef) -> str | None:
        import kubernetes

        core = kubernetes.client.CoreV1Api(api_client)
        secret = core.read_namespaced_secret(ref.name, ref.namespace, _request_timeout=10)
        value = (secret.data or {}).get(ref.key)
        return base64.b64decode(value).decode() if value else None

    return read


class PoolCache:
    def __init__(
        self,
        source: TableSource,
        password: str | None = None,
        secrets: SecretSource | None = None,
        warm_up: bool = True,
    ) -> None:
        self.source, self.warm = source, warm_up
        self._password = password or os.environ.get("CLUSTERPOOL_CACHE_PASSWORD") or None
        self._secrets = secrets
        self._table: RoutingTable | None = None
        self._settings: CacheSettings | None = None
        self._cache: LayeredCache | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> LayeredCache | None:
        """The cache for the current table (cheap when the table did not change)."""
        table = self.source.current()
        if table is not self._table:
            with self._lock:
                if table is not self._table:
                    if table.cache != self._settings:
                        self._rebuild(table.cache)
                    self._table = table
        return self._cache

    def _rebuild(self, settings: CacheSettings | None) -> None:
        old, old_settings = self._cache, self._settings
        self._cache = None
        if settings is not None:
            r = settings.redis
            password = self._password or self._read(r.password_secret if r else None)
            self._cache = build_cache(settings, password, self._read(r.ca_secret if r else None))
        self._settings = settings
        if self._cache is not None and self.warm and settings is not None and settings.warm_up_keys:
            n = self._cache.warm_up(settings.warm_up_keys)
            log.info("cache warm-up: %d of %d keys loaded", n, len(settings.warm_up_keys))
        if old is not None:
            if old_settings is not None and settings is not None and old_settings.version != settings.version:
                old.discard_pending()
            old.close()

    def _read(self, ref: SecretRef | None) -> str | None:
        if ref is None:
            return None
        try:
            return (self._secrets or secret_from_api())(ref)
        except Exception as exc:  # then Redis refuses us, and the cache degrades to misses
            log.warning("cannot read Secret %s/%s for the cache: %s", ref.namespace, ref.name, exc)
            return None

    def get(self, key: str) -> bytes | None:
        c = self.cache
        return c.get(key) if c is not None else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        c = self.cache
        return c.get_many(keys) if c is not None else {}

    def set(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        c = self.cache
        if c is not None:
            c.set(key, value, ttl_seconds)

    def delete(self, key: str) -> None:
        c = self.cache
        if c is not None:
            c.delete(key)

    async def aget(self, key: str) -> bytes | None:
        c = self.cache
        return await c.aget(key) if c is not None else None

    async def aset(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        c = self.cache
        if c is not None:
            await c.aset(key, value, ttl_seconds)

    def clear_local(self) -> None:
        c = self.cache
        if c is not None:
            c.clear_local()

    @property
    def stats(self) -> LayeredStats | None:
        c = self.cache
        return c.stats if c is not None else None

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
            self._cache, self._settings, self._table = None, None, None
