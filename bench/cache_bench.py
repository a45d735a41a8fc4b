"""Memory cache benchmark: clusterpool's MemoryCache against cachetools (8.0.0), bare (`.get(k)`
and `c[k]`) and behind a threading.Lock (cachetools' documented way to share a cache between
threads; ours locks internally), and a plain dict, side by side in one run. A cache of 10,000
entries; hits cycle over its keys; misses ask for one absent key; inserts of new keys evict.
ns per operation including the loop.

The machines here drift between fast and slow spells lasting seconds, so the contenders of a
measurement take turns: each of REPEATS rounds runs every contender for one short batch, and
a contender's figure is the median of its batches. Results: bench/results/cache.json."""

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
REPEATS = 15


def interleaved(fns: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    """Median ns per call of each function, over REPEATS rounds of n calls each, in turns."""
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(n):
                fn()
            runs[name].append((time.perf_counter() - start) / n * 1e9)
    return {name: statistics.median(r) for name, r in runs.items()}


def measure(ours: MemoryCache, theirs: cachetools.Cache, keys: list[str]) -> dict[str, float]:
    for k in keys:
        ours.set(k, k)
        theirs[k] = k
    lock = threading.Lock()
    k1, k2, k3, k4 = (itertools.cycle(keys) for _ in range(4))

    def locked_hit() -> object:
        with lock:
            return theirs.get(next(k3))

    hit = interleaved(
        {
            "ours": lambda: ours.get(next(k1)),
            "theirs": lambda: theirs.get(next(k2)),
            "theirs_locked": locked_hit,
            "theirs_getitem": lambda: theirs[next(k4)],
        },
        50_000,
    )
    miss = interleaved({"ours": lambda: ours.get("absent"), "theirs": lambda: theirs.get("absent")}, 50_000)
    fresh1 = (f"new-{i}" for i in itertools.count())
    fresh2 = (f"new-{i}" for i in itertools.count())

    def set_theirs() -> None:
        theirs[next(fresh2)] = "v"

    insert = interleaved({"ours": lambda: ours.set(next(fresh1), "v"), "theirs": set_theirs}, 10_000)
    return {
        "clusterpool_hit_ns": round(hit["ours"]),
        "cachetools_hit_ns": round(hit["theirs"]),
        "cachetools_getitem_hit_ns": round(hit["theirs_getitem"]),
        "cachetools_with_lock_hit_ns": round(hit["theirs_locked"]),
        "hit_ratio_cachetools_over_ours": round(hit["theirs"] / hit["ours"], 2),
        "hit_ratio_getitem_cachetools_over_ours": round(hit["theirs_getitem"] / hit["ours"], 2),
        "hit_ratio_locked_cachetools_over_ours": round(hit["theirs_locked"] / hit["ours"], 2),
        "clusterpool_miss_ns": round(miss["ours"]),
        "cachetools_miss_ns": round(miss["theirs"]),
        "clusterpool_insert_evict_ns": round(insert["ours"]),
        "cachetools_insert_evict_ns": round(insert["theirs"]),
        "insert_ratio_cachetools_over_ours": round(insert["theirs"] / insert["ours"], 2),
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
    out["dict"] = {"hit_ns": round(interleaved({"dict": lambda: plain.get(next(kit))}, 50_000)["dict"])}
    for policy, ours, theirs in pairs:
        assert isinstance(ours, MemoryCache) and isinstance(theirs, cachetools.Cache)
        out[policy] = measure(ours, theirs, keys)
        print(policy, out[policy], flush=True)
    result = {
        "benchmark": "memory cache get (hit, miss) and insert-with-eviction, 10,000 entries",
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cachetools": cachetools.__version__,
        "method": f"contenders interleaved, {REPEATS} rounds, median per contender",
        "results": out,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cache.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
