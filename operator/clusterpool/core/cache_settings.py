"""A pool's cache settings as the routing table carries them (its `cache` field).

The operator renders CacheSettings from spec.cache; the SDK reads them back from the
routing table and builds the cache with `clusterpool.cache.build_cache`. The Redis
password is never in the table: it names the Secret, and the client reads it (see
`clusterpool.client.PoolCache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("LRU", "LFU", "FIFO", "TTL")
WRITE_MODES = ("WriteThrough", "WriteBack")


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class RedisSettings:
    address: str | None = None
    cluster_nodes: tuple[str, ...] = ()
    database: int = 0
    username: str | None = None
    password_secret: SecretRef | None = None
    tls: bool = False
    insecure_skip_verify: bool = False
    ca_secret: SecretRef | None = None
    timeout_milliseconds: int = 250


@dataclass(frozen=True)
class CacheSettings:
    type: str  # None, Memory, Redis, Layered
    version: int = 1
    key_prefix: str = "clusterpool:"
    policy: str = "LRU"
    max_entries: int = 10_000
    max_bytes: int | None = None
    ttl_seconds: int = 3600
    write_mode: str = "WriteThrough"
    flush_interval_milliseconds: int = 1000
    max_pending: int = 10_000
    redis: RedisSettings | None = None
    warm_up_keys: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "version": self.version,
            "keyPrefix": self.key_prefix,
            "policy": self.policy,
            "maxEntries": self.max_entries,
            "maxBytes": self.max_bytes,
            "ttlSeconds": self.ttl_seconds,
            "writeMode": self.write_mode,
            "flushIntervalMilliseconds": self.flush_interval_milliseconds,
            "maxPending": self.max_pending,
            "warmUpKeys": list(self.warm_up_keys),
            "redis": None,
        }
        r = self.redis
        if r is not None:
            secret, ca = r.password_secret, r.ca_secret
            out["redis"] = {
                "address": r.address,
                "clusterNodes": list(r.cluster_nodes),
                "database": r.database,
                "username": r.username,
                "passwordSecretRef": (
                    {"namespace": secret.namespace, "name": secret.name, "key": secret.key} if secret else None
                ),
                "tls": r.tls,
                "insecureSkipVerify": r.insecure_skip_verify,
                "caSecretRef": {"namespace": ca.namespace, "name": ca.name, "key": ca.key} if ca else None,
                "timeoutMilliseconds": r.timeout_milliseconds,
            }
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CacheSettings:
        """Raises KeyError, TypeError or ValueError on a malformed object."""
        r = raw.get("redis")
        redis = None
        if r:
            ref, ca = r.get("passwordSecretRef"), r.get("caSecretRef")
            redis = RedisSettings(
                address=r.get("address"),
                cluster_nodes=tuple(str(a) for a in r.get("clusterNodes") or ()),
                database=int(r.get("database") or 0),
                username=r.get("username"),
                password_secret=SecretRef(str(ref["namespace"]), str(ref["name"]), str(ref["key"])) if ref else None,
                tls=bool(r.get("tls")),
                insecure_skip_verify=bool(r.get("insecureSkipVerify")),
                ca_secret=SecretRef(str(ca["namespace"]), str(ca["name"]), str(ca["key"])) if ca else None,
                timeout_milliseconds=int(r.get("timeoutMilliseconds") or 250),
            )
        policy, mode = str(raw.get("policy", "LRU")), str(raw.get("writeMode", "WriteThrough"))
        if policy not in POLICIES or mode not in WRITE_MODES:
            raise ValueError(f"unknown cache policy {policy!r} or write mode {mode!r}")
        max_bytes = raw.get("maxBytes")
        return cls(
            type=str(raw["type"]),
            version=int(raw.get("version", 1)),
            key_prefix=str(raw.get("keyPrefix", "clusterpool:")),
            policy=policy,
            max_entries=int(raw.get("maxEntries", 10_000)),
            max_bytes=int(max_bytes) if max_bytes is not None else None,
            ttl_seconds=int(raw.get("ttlSeconds", 3600)),
            write_mode=mode,
            flush_interval_milliseconds=int(raw.get("flushIntervalMilliseconds", 1000)),
            max_pending=int(raw.get("maxPending", 10_000)),
            redis=redis,
            warm_up_keys=tuple(str(k) for k in raw.get("warmUpKeys") or ()),
        )
