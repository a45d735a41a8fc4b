"""The operator's side of a pool's Redis cache (asyncio): check it, count its keys, copy
one version's entries into another (warm-up) and remove the entries of other versions
(invalidation). Works the same on one server and on a Redis Cluster (SCAN visits every
master)."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import redis
import redis.asyncio

from clusterpool.cache.redis import KeySpace, RedisConnection, async_client

BATCH = 500


class CacheAdmin:
    def __init__(self, conn: RedisConnection, prefix: str) -> None:
        self.conn, self.prefix = conn, prefix
        self.client: Any = async_client(conn)  # redis.asyncio.Redis or RedisCluster

    async def ping(self) -> float:
        """Seconds for one PING round trip."""
        start = time.perf_counter()
        await self.client.ping()
        return time.perf_counter() - start

    async def count(self, version: int) -> int:
        """Keys of this version under the prefix (a SCAN: O(keys in Redis), in steps)."""
        n = 0
        async for _ in self.client.scan_iter(match=KeySpace(self.prefix, version).pattern(), count=1000):
            n += 1
        return n

    async def remove_other_versions(self, keep: int) -> int:
        """UNLINK every entry under the prefix whose version is not `keep`."""
        space = KeySpace(self.prefix, keep)
        removed, batch = 0, []
        async for key in self.client.scan_iter(match=space.pattern_all(), count=1000):
            v = space.version_of(key)
            if v is not None and v != keep:
                batch.append(key)
            if len(batch) >= BATCH:
                removed += await self._unlink(batch)
                batch = []
        if batch:
            removed += await self._unlink(batch)
        return removed

    async def _unlink(self, keys: list[bytes]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("UNLINK", k)  # one key per command: any slot, any node
        return sum(int(n) for n in await pipe.execute())

    async def copy_version(self, source: int, target: int, max_keys: int) -> int:
        """Copy entries of version `source` to version `target`, keeping their remaining
        TTLs; entries that already exist in `target` win. Returns how many were copied."""
        src, dst = KeySpace(self.prefix, source), KeySpace(self.prefix, target)
        copied, seen, batch = 0, 0, []
        async for key in self.client.scan_iter(match=src.pattern(), count=1000):
            batch.append(key)
            seen += 1
            if len(batch) >= BATCH or seen >= max_keys:
                copied += await self._copy(batch, src, dst)
                batch = []
            if seen >= max_keys:
                break
        if batch:
            copied += await self._copy(batch, src, dst)
        return copied

    async def _copy(self, keys: list[bytes], src: KeySpace, dst: KeySpace) -> int:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.dump(k)
            pipe.pttl(k)
        got = await pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for k, data, ttl in zip(keys, got[::2], got[1::2], strict=True):
            if data is None or ttl == -2:
                continue  # expired meanwhile
            pipe.restore(dst.key(src.strip(k)), max(ttl, 0), data)  # no REPLACE: existing entries win
            n += 1
        if not n:
            return 0
        results = await pipe.execute(raise_on_error=False)
        return sum(1 for r in results if not isinstance(r, Exception))

    async def close(self) -> None:
        await self.client.aclose()


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason, message) for a failed check, the reason in one CamelCase word."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in str(exc):
        return "AuthenticationFailed", f"Redis refused the credentials ({text}); check spec.cache.redis"
    if "NOAUTH" in str(exc):
        return "AuthenticationRequired", "Redis wants a password: set spec.cache.redis.passwordSecretRef"
    if isinstance(exc, ssl.SSLError) or "SSL" in str(exc) or "CERTIFICATE" in str(exc):
        return "TLSFailed", (
            f"the TLS handshake with Redis failed ({text}); set spec.cache.redis.caSecretRef to the CA that "
            "signed Redis's certificate (or insecureSkipVerify), or check spec.cache.redis.tls"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | redis.exceptions.TimeoutError):
        return "Timeout", f"Redis did not answer within spec.cache.redis.timeoutMilliseconds ({text})"
    if isinstance(exc, redis.exceptions.ClusterDownError) or "CLUSTERDOWN" in str(exc):
        return "ClusterDown", f"the Redis Cluster is down ({text})"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.RedisClusterException | OSError):
        return "Unreachable", f"cannot connect to Redis ({text})"
    return "RedisError", text
