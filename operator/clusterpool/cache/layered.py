"""A local memory cache in front of Redis, with write-through or write-back, that keeps
serving when Redis is gone.

    cache = LayeredCache(RedisCache.connect(conn, prefix), MemoryCache("LRU", 10_000), "WriteBack")
    cache.get("k")       # local hit, else Redis (and the answer is kept locally)
    cache.set("k", b"v")
    cache.close()        # flushes what write-back still holds

Either layer may be missing: without `local` it is a Redis cache that turns outages into
misses; without `remote` it is the memory cache alone.

Reads: the local layer, then the writes not yet flushed, then Redis. An entry read from
Redis is kept locally with the local layer's TTL (at most the cache's TTL).

Writes:
- WriteThrough: a set goes to the local layer, then to Redis before it returns.
- WriteBack: a set goes to the local layer and into a queue of pending writes (the newest
  write of a key replaces an older one still queued); a background thread flushes the
  queue every `flush_interval` seconds in one pipelined round trip, and `close()` flushes
  it. When the queue holds `max_pending` keys the writer flushes inline (it pays one round
  trip); while Redis is down the oldest pending writes are dropped instead (counted in
  `stats.dropped`).
- Deletes that cannot reach Redis are queued like write-back writes in both modes, so a
  recovered Redis does not serve an entry deleted meanwhile.

Outages: a Redis error (refused, timed out, cluster down) marks Redis down. Callers get no
error: reads miss to the local layer, writes stay local (write-through) or queued
(write-back). Redis is not called again for `retry_seconds` (jittered down to half,
doubling up to `max_retry_seconds`: core/backoff.py), so an outage costs no timeouts on the
hot path; the first call after that tries again, and on success the queue is flushed.

What a killed process loses (SIGKILL, no close()): the local layer, and with write-back
the pending writes: while Redis is up, the writes of the last `flush_interval` seconds
(plus one round trip); while Redis is down, every write since the outage began, at most
`max_pending` keys. Write-through loses nothing that returned while Redis was up; writes
made while Redis was down were never in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from clusterpool.cache.memory import CacheStats, MemoryCache
from clusterpool.cache.redis import RedisCache, Value
from clusterpool.core.backoff import Backoff

log = logging.getLogger(__name__)

WriteMode = Literal["WriteThrough", "WriteBack"]
REMOTE_ERRORS = (redis.exceptions.RedisError, OSError)
FLUSH_BATCH = 1000


@dataclass(frozen=True)
class LayeredStats:
    local_hits: int
    remote_hits: int
    misses: int
    remote_errors: int
    pending: int
    flushed: int
    dropped: int
    degraded: bool  # Redis is marked down now
    local: CacheStats | None


class Outage:
    """Whether to call Redis now: after a failure, not for about `retry` seconds (doubling
    up to `max_retry` while failures go on, jittered so that replicas do not come back at once)."""

    def __init__(self, retry: float, max_retry: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.down = False
        self.next_try = 0.0
        self.backoff = Backoff(retry, max(retry, max_retry))
        self.last_error: str | None = None
        self.errors = 0  # Redis errors seen, outage or not

    def available(self) -> bool:
        return not self.down or self.clock() >= self.next_try

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.down:
            log.warning("Redis is unreachable (%s: %s); serving from the local layer", type(exc).__name__, exc)
            self.backoff.reset()
        self.down, self.last_error = True, f"{type(exc).__name__}: {exc}"
        self.next_try = self.clock() + self.backoff.next()

    def succeeded(self) -> bool:
        """True when this success ends an outage."""
        if not self.down:
            return False
        log.info("Redis answers again")
        self.down = False
        return True


def _absent(key: str) -> None:
    return None


_Pending = tuple[bytes | None, float | None]  # (value or None for a delete, ttl)


class PendingWrites:
    """The writes (and deletes) not in Redis yet, oldest first: the newest of a key replaces
    an older one still queued. Holds at most `limit` keys once trimmed; counts the writes
    flushed and those dropped over the limit. Safe to share between threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self.flushed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> _Pending | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, item: _Pending) -> bool:
        """Queue `item` as the newest write of `key`; True when the queue is now over its limit."""
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = item
            return len(self._items) > self.limit

    def trim(self) -> None:
        """Drop the oldest writes beyond the limit."""
        with self._lock:
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
                self.dropped += 1

    def discard(self, key: str) -> None:
        """Forget the queued write of `key` (a write that reached Redis supersedes it)."""
        with self._lock:
            self._items.pop(key, None)

    def oldest(self, n: int) -> list[tuple[str, _Pending]]:
        with self._lock:
            return list(itertools.islice(self._items.items(), n))

    def written(self, batch: list[tuple[str, _Pending]]) -> None:
        """`batch` reached Redis: forget its writes, unless a newer one of the key came meanwhile."""
        with self._lock:
            for k, item in batch:
                if self._items.get(k) is item:
                    del self._items[k]
        self.flushed += len(batch)

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
        return n


class FlushThread:
    """A daemon thread that calls `tick` every `interval` seconds until stopped, started on
    first need (the first queued write)."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self.interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        if self._thread is None and not self._stop.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True, name="clusterpool-flush")
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def stop(self) -> None:
        """No more ticks; waits (up to 5 s) for one under way."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class LayeredCache:
    def __init__(
        self,
        remote: RedisCache | None,
        local: MemoryCache | None = None,
        write_mode: WriteMode = "WriteThrough",
        flush_interval: float = 1.0,
        max_pending: int = 10_000,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if write_mode not in ("WriteThrough", "WriteBack"):
            raise ValueError(f"unknown write mode {write_mode!r}; expected WriteThrough or WriteBack")
        self.remote, self.local, self.write_mode = remote, local, write_mode
        self.outage = Outage(retry_seconds, max_retry_seconds, clock)
        self._pending = PendingWrites(max_pending)
        self._flush_lock = threading.Lock()
        self._flusher = FlushThread(flush_interval, self._flush_due)
        self._local_get: Callable[[str], Any] = local.get if local is not None else _absent
        self._local_hits = self._remote_hits = self._misses = 0  # local: pending-queue hits
        self.closed = False

    @property
    def flush_interval(self) -> float:
        return self._flusher.interval

    @property
    def max_pending(self) -> int:
        return self._pending.limit

    # -- reads --------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._local_get(key)  # the hot path: one call, counted by the memory layer
        if value is not None:
            return value
        return self._get_after_local(key)

    def _get_after_local(self, key: str) -> bytes | None:
        if self._pending:
            queued = self._pending.get(key)
            if queued is not None:
                self._local_hits += queued[0] is not None
                self._misses += queued[0] is None
                return queued[0]
        if self.remote is not None and self.outage.available():
            try:
                value = self.remote.get(key)
            except REMOTE_ERRORS as exc:
                self._failed(exc)
            else:
                self._succeeded()
                if value is not None:
                    self._remote_hits += 1
                    if self.local is not None:
                        self.local.set(key, value)
                    return value
        self._misses += 1
        return None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """One pipelined Redis round trip for everything the local layer lacks."""
        keys = list(keys)
        found: dict[str, bytes] = {}
        missing = []
        for k in keys:
            v = self._local_get(k)
            if v is not None:
                found[k] = v
                continue
            queued = self._pending.get(k)
            if queued is None:
                missing.append(k)
            elif queued[0] is not None:
                found[k] = queued[0]
                self._local_hits += 1
        if missing and self.remote is not None and self.outage.available():
            try:
                fetched = self.remote.get_many(missing)
            except REMOTE_ERRORS as exc:
                self._failed(exc)
                fetched = {}
            else:
                self._succeeded()
            self._remote_hits += len(fetched)
            if self.local is not None:
                for k, v in fetched.items():
                    self.local.set(k, v)
            found.update(fetched)
        self._misses += len(keys) - len(found)
        return found

    async def aget(self, key: str) -> bytes | None:
        """For asyncio callers: a local hit returns at once; a Redis read runs in a thread."""
        value: bytes | None = self._local_get(key)
        if value is not None:
            return value
        return await asyncio.to_thread(self._get_after_local, key)

    # -- writes -------------------------------------------------------------------------

    def set(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        if self.local is not None:
            self.local.set(key, data, ttl_seconds)
        if self.remote is None:
            return
        if self.write_mode == "WriteBack":
            self._enqueue(key, (data, ttl_seconds))
            return
        if self.outage.available():
            try:
                self.remote.set(key, data, ttl_seconds)
            except REMOTE_ERRORS as exc:
                self._failed(exc)
            else:
                self._succeeded()
                self._pending.discard(key)  # a queued delete of it is superseded
        # while Redis is down a write-through set stays in the local layer only

    async def aset(self, key: str, value: Value, ttl_seconds: float | None = None) -> None:
        if self.remote is None or self.write_mode == "WriteBack":
            self.set(key, value, ttl_seconds)  # never blocks on Redis
        else:
            await asyncio.to_thread(self.set, key, value, ttl_seconds)

    def set_many(self, items: dict[str, Value], ttl_seconds: float | None = None) -> None:
        for k, v in items.items():
            self.set(k, v, ttl_seconds)

    def delete(self, key: str) -> None:
        if self.local is not None:
            self.local.delete(key)
        if self.remote is None:
            return
        if self.write_mode == "WriteThrough" and self.outage.available():
            try:
                self.remote.delete(key)
            except REMOTE_ERRORS as exc:
                self._failed(exc)
            else:
                self._succeeded()
                self._pending.discard(key)
                return
        self._enqueue(key, (None, None))

    def _enqueue(self, key: str, item: _Pending) -> None:
        over = self._pending.put(key, item)
        self._ensure_flusher()
        if over and self.outage.available():
            self.flush()  # back pressure: the writer pays one round trip
        self._pending.trim()

    # -- flushing -----------------------------------------------------------------------

    def flush(self) -> int:
        """Write the pending writes to Redis; returns how many went. On failure they stay
        queued (and Redis is marked down)."""
        if self.remote is None:
            return 0
        with self._flush_lock:
            done = 0
            while True:
                batch = self._pending.oldest(FLUSH_BATCH)
                if not batch:
                    return done
                sets = [(k, v, ttl) for k, (v, ttl) in batch if v is not None]
                deletes = [k for k, (v, _) in batch if v is None]
                try:
                    self.remote.write_batch(sets, deletes)
                except REMOTE_ERRORS as exc:
                    self._failed(exc)
                    return done
                self.outage.succeeded()
                self._pending.written(batch)
                done += len(batch)

    def _ensure_flusher(self) -> None:
        if not self.closed:
            self._flusher.ensure_started()

    def _flush_due(self) -> None:
        """The flusher's tick: flush what is pending, if Redis may be called."""
        if self._pending and self.outage.available():
            try:
                self.flush()
            except Exception:  # never let the flusher die
                log.exception("cache flush failed")

    def _failed(self, exc: BaseException) -> None:
        self.outage.failed(exc)

    def _succeeded(self) -> None:
        if self.outage.succeeded() and self._pending:
            self._ensure_flusher()  # the flusher writes the queue on its next tick

    # -- warm-up, stats, close ----------------------------------------------------------

    def warm_up(self, keys: Iterable[str], from_version: int | None = None) -> int:
        """Load these keys from Redis into the local layer; with `from_version`, read them
        from that version's entries and write them into the current version too. Returns
        how many were found."""
        if self.remote is None or not self.outage.available():
            return 0
        source = self.remote
        if from_version is not None:
            source = RedisCache(self.remote.client, self.remote.keys.prefix, from_version, self.remote.ttl)
        found = 0
        keys = list(keys)
        for i in range(0, len(keys), FLUSH_BATCH):
            chunk = keys[i : i + FLUSH_BATCH]
            try:
                values = source.get_many(chunk)
                if from_version is not None and values:
                    self.remote.write_batch([(k, v, None) for k, v in values.items()])
            except REMOTE_ERRORS as exc:
                self._failed(exc)
                break
            if self.local is not None:
                for k, v in values.items():
                    self.local.set(k, v)
            found += len(values)
        return found

    @property
    def stats(self) -> LayeredStats:
        local = self.local.stats if self.local is not None else None
        return LayeredStats(
            self._local_hits + (local.hits if local else 0),
            self._remote_hits,
            self._misses,
            self.outage.errors,
            len(self._pending),
            self._pending.flushed,
            self._pending.dropped,
            self.outage.down,
            local,
        )

    def discard_pending(self) -> int:
        """Forget the writes not flushed yet (they belong to a version no longer in use)."""
        return self._pending.clear()

    def clear_local(self) -> None:
        if self.local is not None:
            self.local.clear()

    def close(self) -> None:
        """Stop the flusher and flush what is pending (one attempt, even during an outage)."""
        if self.closed:
            return
        self.closed = True
        self._flusher.stop()
        if self.remote is not None:
            self.outage.down = False
            self.flush()
            if self._pending:
                log.warning("closing with %d cache writes that could not reach Redis", len(self._pending))
            self.remote.close()

    def __enter__(self) -> LayeredCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
