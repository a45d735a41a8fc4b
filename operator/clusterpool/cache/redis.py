"""A cache in Redis or Redis Cluster, on redis-py (sync: RedisCache; asyncio: AsyncRedisCache).

    cache = RedisCache.connect(RedisConnection(address="198.18.0.5:6379"), prefix="clusterpool:ns/pool:")
    cache.set("k", b"v", ttl_seconds=600)
    cache.get_many(["k", "other"])      # one pipelined round trip

Keys are `<prefix>v<version>:<key>`: every pool has its own prefix, and bumping the version
makes all older entries unreachable at once (the operator then removes them in the
background: `clusterpool.cache.admin`). Values are bytes (str is stored as UTF-8).

Batches are pipelined without a transaction, which works on a Redis Cluster too: redis-py
groups the commands by node. Keys carry no hash tag, so a pool's entries spread over all
the cluster's masters; redis-py follows MOVED and ASK redirections and refreshes its slot
map. Errors are raised as they come (redis.exceptions.RedisError); LayeredCache turns an
outage into misses.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

Value = bytes | str


@dataclass(frozen=True)
class RedisConnection:
    """Where Redis is: one server (`address`) or a cluster (`cluster_nodes`, any subset of
    its nodes)."""

    address: str | None = None
    cluster_nodes: tuple[str, ...] = ()
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    insecure_skip_verify: bool = False
    ca_pem: str | None = field(default=None, repr=False)  # CA bundle that signed the server's certificate
    timeout_seconds: float = 0.25

    def __post_init__(self) -> None:
        if (self.address is None) == (not self.cluster_nodes):
            raise ValueError("a Redis connection needs exactly one of address or cluster_nodes")
        if self.cluster_nodes and self.database != 0:
            raise ValueError("a Redis Cluster has only database 0")

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.timeout_seconds,
            "socket_connect_timeout": self.timeout_seconds,
        }
        if self.tls:
            kw["ssl"] = True
            if self.insecure_skip_verify:
                kw["ssl_cert_reqs"] = ssl.CERT_NONE
                kw["ssl_check_hostname"] = False
            elif self.ca_pem:
                kw["ssl_ca_data"] = self.ca_pem
        return kw


def split_address(address: str, default_port: int = 6379) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host.strip("[]"), int(port)


def sync_client(conn: RedisConnection) -> redis.Redis | redis.RedisCluster:
    """A client that fails fast: no retries of its own (the caller decides what an outage
    means), timeouts from the connection settings."""
    kw = conn.client_kwargs()
    if conn.is_cluster:
        nodes = [redis.cluster.ClusterNode(*split_address(a)) for a in conn.cluster_nodes]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **kw)
    host, port = split_address(conn.address or "")
    return redis.Redis(host=host, port=port, db=conn.database, retry=Retry(NoBackoff(), 0), **kw)


def async_client(conn: RedisConnection) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    from redis.asyncio.retry import Retry as AsyncRetry

    kw = conn.client_kwargs()
    if conn.is_cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(*split_address(a)) for a in conn.cluster_nodes]
        return redis.asyncio.RedisCluster(startup_nodes=nodes, retry=AsyncRetry(NoBackoff(), 0), **kw)
    host, port = split_address(conn.address or "")
    return redis.asyncio.Redis(host=host, port=port, db=conn.database, retry=AsyncRetry(NoBackoff(), 0), **kw)


def _ttl_ms(ttl_seconds: float | None) -> int | None:
    return max(1, int(ttl_seconds * 1000)) if ttl_seconds is not None else None


class KeySpace:
    """`<prefix>v<version>:<key>`, and the glob patterns that select a version's keys."""

    def __init__(self, prefix: str, version: int) -> None:
        self.prefix, self.version = prefix, version
        self.head = f"{prefix}v{version}:"

    def key(self, key: str) -> str:
        return self.head + key

    def strip(self, full: str | bytes) -> str:
        s = full.decode() if isinstance(full, bytes) else full
        return s[len(self.head) :]

    def pattern(self, version: int | None = None) -> str:
        """Keys of one version (default: this one); `pattern_all()` for every version."""
        v = self.version if version is None else version
        return f"{glob_escape(self.prefix)}v{v}:*"

    def pattern_all(self) -> str:
        return f"{glob_escape(self.prefix)}v*"

    def version_of(self, full: str | bytes) -> int | None:
        s = full.decode(errors="replace") if isinstance(full, bytes) else full
        rest = s[len(self.prefix) + 1 :]
        digits, sep, _ = rest.partition(":")
        return int(digits) if sep and digits.isdigit() else None


def glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


class _Commands:
    """What RedisCache and AsyncRedisCache share: the key space, the TTL and the batches they
    queue on a pipeline (the sync cache executes it, the async one awaits it)."""

    client: Any

    def __init__(self, prefix: str, version: int, ttl_seconds: float | None) -> None:
        self.keys, self.ttl = KeySpace(prefix, version), ttl_seconds

    def _px(self, ttl_seconds: float | None) -> int | None:
        return _ttl_ms(ttl_seconds if ttl_seconds is not None else self.ttl)

    def _pipeline(
        self,
        gets: Iterable[str] = (),
        sets: Iterable[tuple[str, Value, float | None]] = (),
        deletes: Iterable[str] = (),
    ) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for k in gets:
            pipe.get(self.keys.key(k))
        for k, v, ttl in sets:
            pipe.set(self.keys.key(k), v, px=self._px(ttl))
        for k in deletes:
            pipe.delete(self.keys.key(k))
        return pipe


def _found(keys: list[str], values: list[bytes | None]) -> dict[str, bytes]:
    return {k: v for k, v in zip(keys, values, strict=True) if v is not None}


class RedisCache(_Commands):
    """Synchronous. One client (a connection pool inside) is safe to share between threads."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        prefix: str = "clusterpool:",
        version: int = 1,
        ttl_seconds: float | None = None,
    ) -> None:
        super().__init__(prefix, version, ttl_seconds)
        self.client = client

    @classmethod
    def connect(
        cls, conn: RedisConnection, prefix: str = "clusterpool:", version: int = 1, ttl_seconds: float | None = None
    ) -> RedisCache:
        return cls(sync_client(conn), prefix, version, ttl_seconds)

    def get(self, key: str) -> bytes | None:
        return cast(bytes | None, self.client.get(self.keys.key(key)))

    def set(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        self.client.set(self.keys.key(key), value, px=self._px(ttl_seconds))

    def delete(self, key: str) -> bool:
        return bool(self.client.delete(self.keys.key(key)))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(keys)
        return _found(keys, self._pipeline(gets=keys).execute()) if keys else {}

    def set_many(self, items: Mapping[str, Value], ttl_seconds: float | None = None) -> None:
        self.write_batch([(k, v, ttl_seconds) for k, v in items.items()])

    def delete_many(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        return sum(int(n) for n in self._pipeline(deletes=keys).execute()) if keys else 0

    def write_batch(self, sets: Iterable[tuple[str, Value, float | None]], deletes: Iterable[str] = ()) -> None:
        """Sets (key, value, ttl or None for the cache's) and deletes in one pipelined round trip."""
        sets, deletes = list(sets), list(deletes)
        if sets or deletes:
            self._pipeline(sets=sets, deletes=deletes).execute()

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


class AsyncRedisCache(_Commands):
    """The same cache for asyncio applications (redis.asyncio)."""

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        prefix: str = "clusterpool:",
        version: int = 1,
        ttl_seconds: float | None = None,
    ) -> None:
        super().__init__(prefix, version, ttl_seconds)
        self.client = client

    @classmethod
    def connect(
        cls, conn: RedisConnection, prefix: str = "clusterpool:", version: int = 1, ttl_seconds: float | None = None
    ) -> AsyncRedisCache:
        return cls(async_client(conn), prefix, version, ttl_seconds)

    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self.client.get(self.keys.key(key)))

    async def set(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        await self.client.set(self.keys.key(key), value, px=self._px(ttl_seconds))

    async def delete(self, key: str) -> bool:
        return bool(await self.client.delete(self.keys.key(key)))

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(keys)
        return _found(keys, await self._pipeline(gets=keys).execute()) if keys else {}

    async def set_many(self, items: Mapping[str, Value], ttl_seconds: float | None = None) -> None:
        if items:
            await self._pipeline(sets=[(k, v, ttl_seconds) for k, v in items.items()]).execute()

    async def delete_many(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        return sum(int(n) for n in await self._pipeline(deletes=keys).execute()) if keys else 0

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
