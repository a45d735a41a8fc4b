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


def test_lfu_admits_a_new_key_into_a_cache_of_hot_ones():
    c = MemoryCache("LFU", max_entries=3)
    for k in "abc":
        c.set(k, k)
        c.get(k)
        c.get(k)
    c.get("a")
    # counts: a 4, b 3, c 3 (a write counts one). d has the fewest, but was just written:
    c.set("d", "d")  # the least recent at the next count goes (b)
    assert set(c.keys()) == {"a", "c", "d"} and c.get("d") == "d"  # d: 2
    c.set("e", "e")  # e alone at 1: d, the fewest among the others, goes
    assert set(c.keys()) == {"a", "c", "e"}


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


class Model:
    """A slow, obvious cache to check MemoryCache's eviction order against (no TTL)."""

    def __init__(self, policy, max_entries, max_bytes):
        self.policy, self.max_entries, self.max_bytes = policy, max_entries, max_bytes
        self.items = {}  # key -> [value, reads, tick]; dict order is write order (LRU: use order)
        self.tick = 0
        self.evictions = 0

    def _tick(self):
        self.tick += 1
        return self.tick

    def get(self, key):
        if key not in self.items:
            return None
        item = self.items[key]
        item[1] += 1
        item[2] = self._tick()
        if self.policy == "LRU":
            self.items[key] = self.items.pop(key)
        return item[0]

    def set(self, key, value):
        if len(key) + len(value) > self.max_bytes:
            return
        self.items.pop(key, None)
        self.items[key] = [value, 1, self._tick()]
        while len(self.items) > self.max_entries or self.bytes > self.max_bytes:
            if self.policy == "LFU":  # fewest reads, then least recent; the new key only when alone
                others = [k for k in self.items if k != key] or [key]
                victim = min(others, key=lambda k: self.items[k][1:])
            else:
                victim = next(iter(self.items))
            del self.items[victim]
            self.evictions += 1

    @property
    def bytes(self):
        return sum(len(k) + len(v[0]) for k, v in self.items.items())


@given(
    st.sampled_from(["LRU", "LFU", "FIFO"]),
    st.lists(st.tuples(st.sampled_from(["get", "set", "delete"]), st.integers(0, 12)), max_size=300),
)
def test_eviction_order_matches_a_model(policy, ops):
    c = MemoryCache(policy, max_entries=6, max_bytes=60)
    m = Model(policy, 6, 60)
    for op, k in ops:
        key = f"k{k}"
        if op == "get":
            assert c.get(key) == m.get(key)
        elif op == "set":
            value = "v" * (k * 3 % 17)
            c.set(key, value)
            m.set(key, value)
        else:
            assert c.delete(key) == (m.items.pop(key, None) is not None)
        if policy == "LFU":  # its keys() is in write order, the model's too, but overwrites differ
            assert sorted(c.keys()) == sorted(m.items)
        else:
            assert c.keys() == list(m.items)
        assert (c.stats.evictions, c.stats.bytes, len(c)) == (m.evictions, m.bytes, len(m.items))


def test_lfu_hot_key_alone_at_its_count_and_clear():
    c = MemoryCache("LFU", max_entries=3)
    for k in "abc":
        c.set(k, k)
    for _ in range(5):  # "a" alone at 2, 3, ...: its frequency node moves up with it
        assert c.get("a") == "a"
    c.get("b")
    c.get("b")
    c.set("d", "d")  # c: 1 read
    c.set("e", "e")  # d: 1 read
    assert sorted(c.keys()) == ["a", "b", "e"]
    c.clear()
    assert len(c) == 0 and c.keys() == [] and c.stats.bytes == 0
    for k in "xyz":
        c.set(k, k)
    c.get("x")
    c.set("w", "w")  # y: 1 read, least recent
    assert sorted(c.keys()) == ["w", "x", "z"] and c.get("x") == "x"


@pytest.mark.parametrize("policy", ["LRU", "LFU", "FIFO"])
def test_per_set_ttl_expires_without_a_default_ttl(policy):
    clock = Clock()
    c = MemoryCache(policy, max_entries=3, clock=clock)
    c.set("short", 1, ttl_seconds=5)
    c.set("forever", 2)
    clock.t = 4
    assert "short" in c and c.get("short") == 1
    clock.t = 5
    assert "short" not in c and "forever" in c
    assert c.get("short") is None and c.get("forever") == 2
    assert (c.stats.expirations, c.stats.misses) == (1, 1)
    # When full, an expired entry goes before a live one is evicted.
    c.set("short", 1, ttl_seconds=5)
    c.set("x", 3)
    clock.t = 20
    c.set("y", 4)
    assert set(c.keys()) == {"forever", "x", "y"}  # "short" is gone, not just expired
    assert (c.stats.expirations, c.stats.evictions) == (2, 0)
    # After clear(), and with no TTL in use, nothing expires.
    c.clear()
    c.set("a", 1)
    clock.t = 1e9
    assert c.get("a") == 1


def test_lru_thread_safety_keeps_counts_and_bytes_consistent():
    c = MemoryCache("LRU", max_entries=40, max_bytes=400)

    def work(n):
        for i in range(3000):
            c.set(f"k{(i * n) % 97}", "v" * (i % 9))
            c.get(f"k{i % 97}")
            if i % 50 == 0:
                c.delete(f"k{(i + n) % 97}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = c.keys()
    assert len(c) == len(keys) <= 40 and c.stats.entries == len(keys)
    assert c.stats.bytes == sum(len(k) + len(c.get(k)) for k in keys) <= 400
    assert c.stats.hits + c.stats.misses == 6 * 3000 + len(keys)
