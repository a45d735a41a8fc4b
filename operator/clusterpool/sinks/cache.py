"""The cache sink: the operator's watch over one pool's cache (spec.cache -> status.cache, CacheReady, Events).

Each pool round calls `update()`: it checks Redis (one PING, the key count every
KEY_COUNT_EVERY seconds) and notices version changes. A version change emits
CacheVersionChanged and starts a background task that copies warmUp.fromVersion's
entries into the new version and then removes every other version's entries
(CacheInvalidated). Redis going away and coming back emit CacheUnreachable and
CacheReachable. Nothing here touches the pool's endpoints: a broken cache never makes a
pool less ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clusterpool import api
from clusterpool.cache.admin import CacheAdmin, classify
from clusterpool.cache.build import redis_connection
from clusterpool.core.cache_settings import CacheSettings, SecretRef
from clusterpool.core.publish import cache_settings
from clusterpool.core.status import CACHE_READY, ConditionSpec, rfc3339
from clusterpool.stages import Emit, Log, PoolRef, PoolSecrets, Snapshot, Wake

KEY_COUNT_EVERY = 30.0


@dataclass
class CacheFigures:
    """What status.cache reports (restored from the stored status until the first check)."""

    version: int | None = None
    reachable: bool | None = None
    latency_us: int | None = None
    keys: int | None = None
    keys_at: str | None = None
    removed: int | None = None
    warmed: int | None = None
    problem: tuple[str, str] | None = None  # (reason, message) while Redis does not answer

    @classmethod
    def restored(cls, stored: Mapping[str, Any]) -> CacheFigures:
        return cls(
            stored.get("version") if isinstance(stored.get("version"), int) else None,
            stored.get("reachable") if isinstance(stored.get("reachable"), bool) else None,
            stored.get("latencyMicroseconds"),
            stored.get("keys"),
            stored.get("keysCountedAt"),
            stored.get("removedKeys"),
            stored.get("warmedKeys"),
        )


class CacheMonitor:
    def __init__(
        self, secrets: PoolSecrets, emit: Emit, log: Log, wake: Wake, restored: Mapping[str, Any] | None = None
    ) -> None:
        self.secrets, self.emit, self.log, self.wake = secrets, emit, log, wake
        restored = restored or {}
        self.restored: dict[str, Any] | None = dict(restored) or None  # reported until the first check
        self.settings: CacheSettings | None = None
        self.spec: api.CacheSpec | None = None
        self.admin: CacheAdmin | None = None
        self.figures = CacheFigures.restored(restored)
        self.next_count = 0.0
        self.cleanup_needed = True  # once per operator start too: a previous one may have died midway
        self.cleanup: asyncio.Task[None] | None = None

    # -- the round ----------------------------------------------------------------------

    async def update(self, spec: api.CacheSpec | None, settings: CacheSettings | None) -> None:
        self.restored = None
        if settings != self.settings:
            await self._reconfigure(spec, settings)
        if settings is None or settings.redis is None:
            return
        if self.admin is None:
            r = settings.redis
            password = await self._secret(r.password_secret, "passwordSecretRef")
            ca = await self._secret(r.ca_secret, "caSecretRef")
            if (r.password_secret and password is None) or (r.ca_secret and ca is None):
                return
            self.admin = CacheAdmin(redis_connection(r, password, ca), settings.key_prefix)
        timeout = settings.redis.timeout_milliseconds / 1000
        try:
            async with asyncio.timeout(max(timeout, 1.0)):
                latency = await self.admin.ping()
            if time.monotonic() >= self.next_count:
                async with asyncio.timeout(30):
                    self.figures.keys = await self.admin.count(settings.version)
                self.figures.keys_at = rfc3339(datetime.now(UTC))
                self.next_count = time.monotonic() + KEY_COUNT_EVERY
        except Exception as exc:  # any failure to answer: report it, keep the pool going
            reason, message = classify(exc)
            self._unreachable(reason, message)
            if reason.startswith("Authentication") or reason == "TLSFailed":
                await self._close_admin()  # read the Secret again next round: it may have been fixed
            return
        us = int(latency * 1e6)
        if self.figures.latency_us is None or abs(us - self.figures.latency_us) > self.figures.latency_us / 4:
            self.figures.latency_us = us
        self._reachable()
        if self.cleanup_needed and (self.cleanup is None or self.cleanup.done()):
            self.cleanup = asyncio.create_task(self._clean(settings.version))

    async def _reconfigure(self, spec: api.CacheSpec | None, settings: CacheSettings | None) -> None:
        old = self.settings
        if old is None or settings is None or (old.redis, old.key_prefix) != (settings.redis, settings.key_prefix):
            await self._close_admin()
            self.figures.problem = None
            self.next_count = 0.0
        if settings is not None and self.figures.version is not None and settings.version != self.figures.version:
            what = (
                "; removing them from Redis in the background"
                if settings.redis is not None
                else "; clients drop their memory caches"
            )
            self.emit(
                "Normal",
                "CacheVersionChanged",
                f"cache version {self.figures.version} -> {settings.version}: entries of version "
                f"{self.figures.version} are unreachable now{what}",
            )
            self.cleanup_needed = True
            self.next_count = 0.0
            self.figures.removed = self.figures.warmed = None
        if settings is not None and settings.version != self.figures.version:
            self.figures.keys = None
        self.figures.version = settings.version if settings is not None else None
        self.settings, self.spec = settings, spec
        if settings is None or settings.redis is None:
            self.figures.reachable = self.figures.latency_us = self.figures.keys = self.figures.keys_at = None

    async def _secret(self, ref: SecretRef | None, field: str) -> str | None:
        """A Secret's value; on failure reports SecretNotFound naming the field."""
        if ref is None:
            return None
        value = await self.secrets.read(ref)
        if value is None:
            self._unreachable(
                "SecretNotFound",
                f"Secret {ref.namespace}/{ref.name} (key {ref.key}) named by spec.cache.redis.{field} "
                "cannot be read; create it, or fix the reference",
            )
        return value

    def _unreachable(self, reason: str, message: str) -> None:
        if self.figures.reachable is not False or (
            self.figures.problem is not None and self.figures.problem[0] != reason
        ):
            self.emit("Warning", "CacheUnreachable", f"{reason}: {message}; {self._fallback()}")
            self.log.warning("cache unreachable: %s: %s", reason, message)
        self.figures.problem, self.figures.reachable = (reason, message), False

    def _reachable(self) -> None:
        if self.figures.reachable is False:
            self.emit("Normal", "CacheReachable", f"Redis at {self._where()} answers again")
        self.figures.reachable, self.figures.problem = True, None

    async def _clean(self, version: int) -> None:
        admin, spec = self.admin, self.spec
        if admin is None:
            return
        try:
            warm = spec.warm_up if spec is not None else None
            warmed = None
            if warm is not None and warm.from_version is not None:
                warmed = await admin.copy_version(warm.from_version, version, warm.max_keys)
            removed = await admin.remove_other_versions(version)
        except Exception as exc:  # retried next round
            self.log.warning("removing old cache versions failed (%s: %s); retrying", type(exc).__name__, exc)
            return
        if self.figures.version != version:
            return  # the version moved on meanwhile; the next task cleans for it
        self.cleanup_needed = False
        self.figures.removed, self.figures.warmed = removed, warmed
        if removed or warmed:
            copied = f"copied {warmed} entries of version {warm.from_version}, " if warm and warmed is not None else ""
            self.emit(
                "Normal", "CacheInvalidated", f"{copied}removed {removed} entries of versions other than {version}"
            )
        self.next_count = 0.0
        self.wake("old cache versions removed")

    # -- what it reports ----------------------------------------------------------------

    def _where(self) -> str:
        r = self.settings.redis if self.settings else None
        if r is None:
            return "-"
        return r.address or ",".join(r.cluster_nodes)

    def _fallback(self) -> str:
        if self.settings is not None and self.settings.type == "Layered":
            return "clients serve from their local layer meanwhile"
        return "clients miss the cache meanwhile (requests still go to the backends)"

    def condition(self) -> ConditionSpec | None:
        s = self.settings
        if s is None or s.type == "None":
            return None
        if s.redis is None:
            return ConditionSpec(CACHE_READY, "True", "LocalOnly", f"each client keeps its own {s.policy} memory cache")
        if self.figures.reachable is None:
            return ConditionSpec(CACHE_READY, "Unknown", "Checking", f"checking Redis at {self._where()}")
        if not self.figures.reachable:
            reason, message = self.figures.problem or ("Unreachable", "Redis does not answer")
            return ConditionSpec(CACHE_READY, "False", reason, f"{message}; {self._fallback()}")
        kind = "Redis Cluster" if s.redis.cluster_nodes else "Redis"
        return ConditionSpec(CACHE_READY, "True", "Reachable", f"{kind} at {self._where()} answers")

    def status(self) -> dict[str, Any] | None:
        s = self.settings
        if s is None:
            return self.restored
        out: dict[str, Any] = {"type": s.type, "version": s.version}
        optional = {
            "reachable": self.figures.reachable,
            "latencyMicroseconds": self.figures.latency_us if self.figures.reachable else None,
            "keys": self.figures.keys,
            "keysCountedAt": self.figures.keys_at,
            "removedKeys": self.figures.removed,
            "warmedKeys": self.figures.warmed,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.figures.reachable is False and self.figures.problem:
            out["message"] = self.figures.problem[1][:1024]
        return out

    async def _close_admin(self) -> None:
        if self.cleanup is not None and not self.cleanup.done():
            self.cleanup.cancel()
            await asyncio.wait({self.cleanup})
        self.cleanup = None
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
            self.admin = None

    async def close(self) -> None:
        await self._close_admin()


class CacheSink:
    """Sink: Redis checked, old versions cleaned; the CacheMonitor keeps status.cache."""

    condition_type = CACHE_READY

    def __init__(self, body: Mapping[str, Any], monitor: CacheMonitor, wake: Wake) -> None:
        self.body, self.monitor, self.wake = body, monitor, wake
        self.condition: ConditionSpec | None = None

    async def sync(self, snapshot: Snapshot) -> ConditionSpec | None:
        pool = PoolRef.of(self.body)
        settings = cache_settings(snapshot.spec, pool.namespace, pool.name)
        before = self.monitor.status()
        await self.monitor.update(snapshot.spec.cache, settings)
        if self.monitor.status() != before:
            self.wake("status.cache changed")  # a new version, a count: written now, not next interval
        return self.monitor.condition()

    async def close(self) -> None:
        await self.monitor.close()

    async def remove(self) -> None:
        """Nothing to remove: the cache's entries are the applications'."""
