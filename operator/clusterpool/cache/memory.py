"""An in-process cache with LRU, LFU, FIFO or TTL eviction, bounded by entries and by bytes.

    cache = MemoryCache(policy="LRU", max_entries=10_000, max_bytes=64 << 20, ttl_seconds=600)
    cache.set("prompt-hash", b"...")
    cache.get("prompt-hash")          # None when absent or expired
    cache.stats                       # hits, misses, evictions, expirations, entries, bytes

Every operation is O(1) and takes one lock, so the cache is safe to share between threads;
nothing awaits, so asyncio tasks use it directly. Eviction order:
- LRU: the least recently read or written;
- LFU: the least often read (ties: the least recent among them), O(1) with frequency lists;
- FIFO: the oldest written;
- TTL: the one that expires first (entries expire after ttl_seconds under every policy).
Sizes count the value's bytes (len() of bytes/str, else len(repr())) plus the key's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Policy = Literal["LRU", "LFU", "FIFO", "TTL"]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def size_of(key: str, value: Any) -> int:
    if isinstance(value, bytes | bytearray | str):
        return len(key) + len(value)
    return len(key) + len(repr(value))


class _Entry:
    __slots__ = ("expires", "freq", "size", "value")

    def __init__(self, value: Any, size: int, expires: float | None) -> None:
        self.value, self.size, self.expires, self.freq = value, size, expires, 1


class MemoryCache:
    def __init__(
        self,
        policy: Policy = "LRU",
        max_entries: int = 10_000,
        max_bytes: int | None = None,
        ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in ("LRU", "LFU", "FIFO", "TTL"):
            raise ValueError(f"unknown eviction policy {policy!r}; expected LRU, LFU, FIFO or TTL")
        if policy == "TTL" and ttl_seconds is None:
            raise ValueError("the TTL policy needs ttl_seconds")
        self.policy, self.max_entries, self.max_bytes, self.ttl = policy, max_entries, max_bytes, ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, _Entry] = OrderedDict()  # eviction order for LRU/FIFO/TTL
        self._freq: dict[int, OrderedDict[str, None]] = {}  # LFU: frequency -> keys, least recent first
        self._min_freq = 0
        self._lru, self._lfu = policy == "LRU", policy == "LFU"
        self._hits = self._misses = self._evictions = self._expirations = 0
        self._entries = self._bytes = 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, self._expirations, self._entries, self._bytes)

    # -- LFU bookkeeping ----------------------------------------------------------------------

    def _lfu_add(self, key: str, freq: int) -> None:
        self._freq.setdefault(freq, OrderedDict())[key] = None

    def _lfu_remove(self, key: str, freq: int) -> None:
        bucket = self._freq[freq]
        del bucket[key]
        if not bucket:
            del self._freq[freq]
            if self._min_freq == freq:
                self._min_freq = freq + 1

    def _lfu_victim(self) -> str:
        if self._min_freq not in self._freq:
            self._min_freq = min(self._freq)
        return next(iter(self._freq[self._min_freq]))

    # -- internals ----------------------------------------------------------------------------

    def _remove(self, key: str) -> _Entry:
        entry = self._data.pop(key)
        if self._lfu:
            self._lfu_remove(key, entry.freq)
        self._entries -= 1
        self._bytes -= entry.size
        return entry

    def _evict_one(self) -> None:
        victim = self._lfu_victim() if self._lfu else next(iter(self._data))
        self._remove(victim)
        self._evictions += 1

    def _expired(self, entry: _Entry, now: float) -> bool:
        return entry.expires is not None and now >= entry.expires

    # -- the API ------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._misses += 1
                return default
            if entry.expires is not None and self._clock() >= entry.expires:
                self._remove(key)
                self._expirations += 1
                self._misses += 1
                return default
            if self._lru:
                self._data.move_to_end(key)
            elif self._lfu:
                self._lfu_remove(key, entry.freq)
                entry.freq += 1
                self._lfu_add(key, entry.freq)
            self._hits += 1
            return entry.value

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        size = size_of(key, value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole cache: not cached
        ttl = ttl_seconds if ttl_seconds is not None else self.ttl
        with self._lock:
            now = self._clock()
            if key in self._data:
                self._remove(key)
            entry = _Entry(value, size, now + ttl if ttl is not None else None)
            self._data[key] = entry
            if self._lfu:
                self._lfu_add(key, 1)
                self._min_freq = 1
            self._entries += 1
            self._bytes += size
            while self._entries > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes):
                if self._purge_expired(now) == 0:
                    self._evict_one()

    def _purge_expired(self, now: float) -> int:
        """Drop expired entries at the head (under TTL/FIFO the oldest expire first)."""
        dropped = 0
        for key in list(itertools.islice(self._data, 8)):
            if self._expired(self._data[key], now):
                self._remove(key)
                self._expirations += 1
                dropped += 1
        return dropped

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._data:
                return False
            self._remove(key)
            return True

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._freq.clear()
            self._entries = self._bytes = 0

    def __contains__(self, key: str) -> bool:
        with self._lock:
            entry = self._data.get(key)
            return entry is not None and not self._expired(entry, self._clock())

    def __len__(self) -> int:
        return self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)
