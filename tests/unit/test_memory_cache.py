import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterpool.cache import MemoryCache


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lru_evicts_the_least_recently_used():
    c = MemoryCache("LRU", max_entries=3)
    for k in "abc":
        c.set(k, k)
    c.get("a")
    c.set("d", "d")
    assert c.keys() == ["c", "a", "d"] and c.stats.evictions == 1


def test_lfu_evicts_the_least_frequently_used_then_the_least_recent():
    c = MemoryCache("LFU", max_entries=3)
    for k in "abc":
        c.set(k, k)
    for _ in range(3):
        c.get("a")
    c.get("b")
    c.set("d", "d")  # c: freq 1, least recent of the freq-1 entries
    assert "c" not in c and set(c.keys()) == {"a", "b", "d"}
    c.set("e", "e")  # d: freq 1 -> evicted
    assert "d" not in c and "b" in c


def test_fifo_evicts_the_oldest_written_whatever_is_read():
    c = MemoryCache("FIFO", max_entries=2)
    c.set("a", 1)
    c.set("b", 2)
    c.get("a")
    c.set("c", 3)
    assert c.keys() == ["b", "c"]


def test_ttl_expires_entries_and_evicts_the_first_to_expire():
    clock = Clock()
    c = MemoryCache("TTL", max_entries=2, ttl_seconds=10, clock=clock)
    c.set("a", 1)
    clock.t = 5
    c.set("b", 2)
    clock.t = 10
    assert c.get("a") is None and c.stats.expirations == 1
    assert c.get("b") == 2
    c.set("c", 3)
    c.set("d", 4)  # full: b expires first
    assert c.keys() == ["c", "d"]
    with pytest.raises(ValueError, match="needs ttl_seconds"):
        MemoryCache("TTL")


def test_per_entry_ttl_and_default_ttl_under_lru():
    clock = Clock()
    c = MemoryCache("LRU", ttl_seconds=60, clock=clock)
    c.set("short", 1, ttl_seconds=1)
    c.set("long", 2)
    clock.t = 2
    assert c.get("short") is None and c.get("long") == 2


def test_byte_bound():
    c = MemoryCache("LRU", max_entries=100, max_bytes=30)
    c.set("a", b"x" * 10)  # 11 bytes
    c.set("b", b"x" * 10)  # 22
    c.set("c", b"x" * 10)  # 33 > 30: a goes
    assert c.keys() == ["b", "c"] and c.stats.bytes == 22
    c.set("huge", b"x" * 100)  # bigger than the cache: not cached, nothing evicted
    assert "huge" not in c and len(c) == 2


def test_stats():
    c = MemoryCache()
    c.set("a", 1)
    c.get("a")
    c.get("zz")
    assert (c.stats.hits, c.stats.misses, c.stats.hit_ratio) == (1, 1, 0.5)


@given(st.sampled_from(["LRU", "LFU", "FIFO"]), st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=200))
def test_bounds_and_counts_always_hold(policy, ops):
    c = MemoryCache(policy, max_entries=5, max_bytes=40)
    model = {}
    for is_set, k in ops:
        key = f"k{k}"
        if is_set:
            c.set(key, "v" * (k % 7))
            model[key] = "v" * (k % 7)
        else:
            got = c.get(key)
            assert got is None or got == model[key]
        assert len(c) <= 5 and c.stats.bytes <= 40
        present = c.keys()
        assert c.stats.entries == len(present)
        assert c.stats.bytes == sum(len(k) + len(model[k]) for k in present)


def test_thread_safety():
    c = MemoryCache("LFU", max_entries=50)

    def work(n):
        for i in range(3000):
            c.set(f"k{(i * n) % 97}", i)
            c.get(f"k{i % 97}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50 == len(c.keys())
