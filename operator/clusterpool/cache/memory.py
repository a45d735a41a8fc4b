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
- TTL: expired entries first, then the oldest written (with one TTL for all entries, the
  first to expire); entries expire after their TTL under every policy.
Sizes count the value's bytes (len() of bytes/str, else len(repr())) plus the key's.

get() is the hot path and is written for CPython's speed (bench/cache_bench.py): it takes the
lock with acquire()/release() rather than `with` (half the cost on 3.11), fetches what it needs
from one tuple attribute, and reads the clock only for entries that carry an expiry.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Policy = Literal["LRU", "LFU", "FIFO", "TTL"]

# Entries are lists, cheaper to build and to index than objects:
#   [value, size, expires]                           under LRU, FIFO and TTL;
#   [value, size, expires, node, prev, next, key]    under LFU (see below).
# expires is a clock reading, or None for an entry that never expires.
_VALUE, _SIZE, _EXPIRES, _NODE, _PREV, _NEXT, _KEY = range(7)

# LFU bookkeeping. A node [freq, ring, prev node, next node] stands for one read count in use.
# Nodes form a circular list in increasing freq from a root node of freq 0, so the root's next
# node holds the least often read entries. ring is a sentinel entry: its _NEXT/_PREV chain the
# node's entries circularly, in the order they reached freq, so ring[_NEXT] is the least recent.
# A read moves its entry to the end of the next node's ring (creating the node for freq + 1 if
# missing) and drops the node it left if that is now empty: a few list stores, no hashing.
_FREQ, _RING, _PREV_NODE, _NEXT_NODE = range(4)

_TEXT = (bytes, bytearray, str)


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
    if isinstance(value, _TEXT):
        return len(key) + len(value)
    return len(key) + len(repr(value))


# -- LFU rings and nodes ----------------------------------------------------------------------


def _new_node(freq: int, before: list[Any]) -> list[Any]:
    """A node for freq with an empty ring, linked in right after the node `before`."""
    ring: list[Any] = [None, 0, None, None, None, None, None]
    ring[_PREV] = ring[_NEXT] = ring
    after = before[_NEXT_NODE]
    node = [freq, ring, before, after]
    before[_NEXT_NODE] = after[_PREV_NODE] = node
    return node


def _unlink(entry: list[Any]) -> None:
    """Take entry out of its node's ring, and the node out of the list if it is left empty."""
    prev, after = entry[_PREV], entry[_NEXT]
    prev[_NEXT] = after
    after[_PREV] = prev
    node = entry[_NODE]
    ring = node[_RING]
    if ring[_NEXT] is ring:
        before, after = node[_PREV_NODE], node[_NEXT_NODE]
        before[_NEXT_NODE] = after
        after[_PREV_NODE] = before
        ring[_PREV] = ring[_NEXT] = None  # the sentinel pointed at itself: let it be freed now


class LfuOrder:
    """The LFU eviction order: entries grouped by read count in O(1) (see the node layout
    above). A new entry joins the one-read group; a read moves it up one group; the victim
    is the least recent entry of the lowest group."""

    def __init__(self) -> None:
        self._root: list[Any] = [0, None, None, None]  # the root node, alone to begin with
        self._root[_PREV_NODE] = self._root[_NEXT_NODE] = self._root

    def add(self, entry: list[Any]) -> None:
        """A new entry (or an overwrite, which starts afresh): at the end of the one-read ring."""
        root = self._root
        ones = root[_NEXT_NODE]
        if ones[_FREQ] != 1:
            ones = _new_node(1, root)
        ring = ones[_RING]
        last = ring[_PREV]
        last[_NEXT] = entry
        entry[_PREV], entry[_NEXT], entry[_NODE] = last, ring, ones
        ring[_PREV] = entry

    def read(self, entry: list[Any]) -> None:
        """A read: move entry to the end of the node for one more read.

        Hot, so the unlink and the append are written out in place and the indexes are literals:
        entry[3] node, [4] prev, [5] next; node[0] freq, [1] ring, [2] prev node, [3] next node.
        """
        node = entry[3]
        freq = node[0] + 1
        above = node[3]
        prev, after = entry[4], entry[5]
        if above[0] != freq:  # (the root, freq 0, never matches)
            if prev is after:  # both are the ring: entry is alone, so its node moves up with it
                node[0] = freq
                return
            above = _new_node(freq, node)
        # out of node's ring
        prev[5] = after
        after[4] = prev
        ring = node[1]
        if ring[5] is ring:  # node left empty: drop it (the node before it now precedes above)
            before = node[2]
            before[3] = above
            above[2] = before
            ring[4] = ring[5] = None
        # onto the end of above's ring
        ring = above[1]
        last = ring[4]
        last[5] = entry
        entry[4], entry[5], entry[3] = last, ring, above
        ring[4] = entry

    remove = staticmethod(_unlink)  # an entry leaves the cache: out of its ring

    def pop_victim(self, new: str, entries: int) -> list[Any]:
        """Take out the entry to evict: the fewest reads, the least recent among them; not
        `new` (the entry just written) while `entries` > 1 leaves others."""
        node = self._root[_NEXT_NODE]
        entry: list[Any] = node[_RING][_NEXT]
        if entry[_KEY] == new and entries > 1:
            entry = entry[_NEXT]  # the next least recent at that count...
            if entry is node[_RING]:  # ...or, the new entry alone at its count, the next count's
                node = node[_NEXT_NODE]
                entry = node[_RING][_NEXT]
        # _unlink(entry), written out (a call is a noticeable share of an evicting set)
        prev, after = entry[_PREV], entry[_NEXT]
        prev[_NEXT] = after
        after[_PREV] = prev
        ring = node[_RING]
        if ring[_NEXT] is ring:  # node left empty: out of the list
            before, above = node[_PREV_NODE], node[_NEXT_NODE]
            before[_NEXT_NODE] = above
            above[_PREV_NODE] = before
            ring[_PREV] = ring[_NEXT] = None
        return entry

    def clear(self, entries: Iterable[list[Any]]) -> None:
        """Forget every entry. Entries and nodes link to each other in cycles: cut them so
        that memory is returned now rather than at the next garbage collection."""
        for entry in entries:
            del entry[_NODE:]
        root = self._root
        node = root[_NEXT_NODE]
        while node is not root:
            after = node[_NEXT_NODE]
            node.clear()
            node = after
        root[_PREV_NODE] = root[_NEXT_NODE] = root


class CacheCounters:
    """What the cache counts for its stats: reads that hit and missed, entries evicted and
    expired, and the bytes stored. The cache bumps the fields in place (a method call would
    be a noticeable share of a get); `snapshot` is the stats a caller sees."""

    __slots__ = ("bytes", "evictions", "expirations", "hits", "misses")

    def __init__(self) -> None:
        self.hits = self.misses = self.evictions = self.expirations = self.bytes = 0

    def snapshot(self, entries: int) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.evictions, self.expirations, entries, self.bytes)


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
        # key -> entry. Its order is the eviction order under LRU (reads move keys to the end),
        # FIFO and TTL; under LFU it is the write order, used only by the expiry scan.
        self._data: OrderedDict[str, list[Any]] = OrderedDict()
        self._lfu = LfuOrder() if policy == "LFU" else None
        self._counts = CacheCounters()
        # get() unpacks these from one attribute, cheaper than four attribute loads. The third is
        # what a read does to the order under LRU; LFU is handled by _lfu, FIFO/TTL do nothing.
        move_to_end = self._data.move_to_end if policy == "LRU" else None
        self._hot = (self._lock, self._data.get, move_to_end, self._counts)
        # False while no stored entry can have an expiry (no default TTL and no set() with one
        # since the last clear()): set() then needs neither the clock nor the expiry scan.
        self._may_expire = ttl_seconds is not None

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return self._counts.snapshot(len(self._data))

    # -- internals ----------------------------------------------------------------------------

    def _remove(self, key: str) -> list[Any]:
        entry = self._data.pop(key)
        if self._lfu is not None:
            self._lfu.remove(entry)
        self._counts.bytes -= entry[_SIZE]
        return entry

    def _purge_expired(self, now: float) -> int:
        """Drop expired entries at the head (under TTL/FIFO the oldest expire first)."""
        dropped = 0
        for key, entry in list(itertools.islice(self._data.items(), 8)):
            expires = entry[_EXPIRES]
            if expires is not None and now >= expires:
                self._remove(key)
                self._counts.expirations += 1
                dropped += 1
        return dropped

    def _make_room(self, now: float | None, new: str) -> None:
        """Evict until within max_entries and max_bytes, expired entries first. The entry
        just written (`new`) is not a candidate while others remain: under LFU it has the
        fewest reads, and evicting it would keep every new key out of a cache of hot ones."""
        if now is None and self._may_expire:
            now = self._clock()  # set() had no TTL so did not read the clock, but others may expire
        data, max_bytes, counts, lfu = self._data, self.max_bytes, self._counts, self._lfu
        while len(data) > self.max_entries or (max_bytes is not None and counts.bytes > max_bytes):
            if now is not None and self._purge_expired(now):
                continue
            if lfu is not None:
                entry = lfu.pop_victim(new, len(data))
                del data[entry[_KEY]]
            else:
                _, entry = data.popitem(last=False)  # the head: least recent / oldest written
            counts.bytes -= entry[_SIZE]
            counts.evictions += 1

    # -- the API ------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        lock, lookup, move_to_end, counts = self._hot
        lock.acquire()  # released in `finally`: the same critical section as `with`, cheaper
        try:
            entry = lookup(key)
            if entry is None:
                counts.misses += 1
                return default
            expires = entry[2]  # _EXPIRES (literal indexes: this path counts every nanosecond)
            if expires is not None and self._clock() >= expires:
                self._remove(key)
                counts.expirations += 1
                counts.misses += 1
                return default
            if move_to_end is not None:  # LRU
                move_to_end(key)
            elif (lfu := self._lfu) is not None:
                lfu.read(entry)
            counts.hits += 1
            return entry[0]  # _VALUE
        finally:
            lock.release()

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        # size_of(key, value), written out: a function call is a noticeable share of an insert
        size = len(key) + (len(value) if isinstance(value, _TEXT) else len(repr(value)))
        max_bytes = self.max_bytes
        if max_bytes is not None and size > max_bytes:
            return  # larger than the whole cache: not cached
        ttl = ttl_seconds if ttl_seconds is not None else self.ttl
        lock = self._lock
        lock.acquire()
        try:
            if ttl is None:
                now = expires = None
            else:
                now = self._clock()
                expires = now + ttl
                self._may_expire = True
            data, counts, lfu = self._data, self._counts, self._lfu
            old = data.pop(key, None)
            if old is not None:  # an overwrite starts afresh (and at one read under LFU)
                counts.bytes -= old[_SIZE]
                if lfu is not None:
                    lfu.remove(old)
            if lfu is not None:
                entry = [value, size, expires, None, None, None, key]
                lfu.add(entry)
            else:
                entry = [value, size, expires]
            data[key] = entry
            counts.bytes += size
            if len(data) > self.max_entries or (max_bytes is not None and counts.bytes > max_bytes):
                self._make_room(now, key)
        finally:
            lock.release()

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._data:
                return False
            self._remove(key)
            return True

    def clear(self) -> None:
        with self._lock:
            if self._lfu is not None:
                self._lfu.clear(self._data.values())
            self._data.clear()
            self._counts.bytes = 0
            self._may_expire = self.ttl is not None

    def __contains__(self, key: str) -> bool:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False
            expires = entry[_EXPIRES]
            return expires is None or self._clock() < expires

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)
