"""Memory cache benchmark: clusterpool's MemoryCache against cachetools (8.0.0), bare and
behind a threading.Lock (cachetools' documented way to share a cache between threads;
ours locks internally), and a plain dict, side by side in one run. A cache of 10,000 entries; hits cycle over its keys;
inserts of new keys evict. Median of 5 repeats, ns per operation including the loop.
Results: bench/results/cache.json."""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cachetools

from clusterpool.cache import MemoryCache

HERE = Path(__file__).resolve().parent
N = 10_000


def ns(fn: Callable[[], object], n: int = 300_000) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(runs)


def measure(ours: MemoryCache, theirs: cachetools.Cache, keys: list[str]) -> dict[str, float]:
    for k in keys:
        ours.set(k, k)
        theirs[k] = k
    kit = itertools.cycle(keys)
    lock = threading.Lock()

    def locked_hit() -> object:
        with lock:
            return theirs.get(next(kit))

    hit_ours = ns(lambda: ours.get(next(kit)))
    hit_theirs = ns(lambda: theirs.get(next(kit)))
    hit_theirs_locked = ns(locked_hit)
    fresh = (f"new-{i}" for i in itertools.count())
    set_ours = ns(lambda: ours.set(next(fresh), "v"), 100_000)
    fresh2 = (f"new-{i}" for i in itertools.count())

    def set_theirs() -> None:
        theirs[next(fresh2)] = "v"

    set_theirs_ns = ns(set_theirs, 100_000)
    return {
        "clusterpool_hit_ns": round(hit_ours),
        "cachetools_hit_ns": round(hit_theirs),
        "cachetools_with_lock_hit_ns": round(hit_theirs_locked),
        "hit_ratio_cachetools_over_ours": round(hit_theirs / hit_ours, 2),
        "hit_ratio_locked_cachetools_over_ours": round(hit_theirs_locked / hit_ours, 2),
        "clusterpool_insert_evict_ns": round(set_ours),
        "cachetools_insert_evict_ns": round(set_theirs_ns),
        "insert_ratio_cachetools_over_ours": round(set_theirs_ns / set_ours, 2),
    }


def main() -> int:
    keys = [f"prompt-{i}" for i in range(N)]
    out: dict[str, dict[str, float]] = {}
    pairs: list[tuple[str, object, object]] = [
        ("LRU", MemoryCache("LRU", max_entries=N), cachetools.LRUCache(maxsize=N)),
        ("LFU", MemoryCache("LFU", max_entries=N), cachetools.LFUCache(maxsize=N)),
        ("TTL", MemoryCache("TTL", max_entries=N, ttl_seconds=3600), cachetools.TTLCache(maxsize=N, ttl=3600)),
        ("FIFO", MemoryCache("FIFO", max_entries=N), cachetools.FIFOCache(maxsize=N)),
    ]
    plain: dict[str, str] = {k: k for k in keys}
    kit = itertools.cycle(keys)
    out["dict"] = {"hit_ns": round(ns(lambda: plain.get(next(kit))))}
    for policy, ours, theirs in pairs:
        assert isinstance(ours, MemoryCache) and isinstance(theirs, cachetools.Cache)
        out[policy] = measure(ours, theirs, keys)
        print(policy, out[policy], flush=True)
    result = {
        "benchmark": "memory cache get (hit) and insert-with-eviction, 10,000 entries",
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cachetools": cachetools.__version__,
        "results": out,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cache.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
