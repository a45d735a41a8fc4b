"""Redis and layered cache benchmark, side by side in one run against raw redis-py on the
same real redis-server (and a 3-master Redis Cluster), all on loopback:

- a Redis hit: RedisCache.get and LayeredCache.get (no local layer) against redis-py's
  `r.get(full_key)`, sync and asyncio, one server and a cluster;
- a batch of 100 reads: RedisCache.get_many (one pipeline) against 100 raw GETs and a raw
  pipeline;
- a layered local hit against a dict lookup (`d.get(k)` and `d[k]`) and MemoryCache.get.

The A/B pairs run interleaved, 7 rounds each, and the median per-op time is kept; a ratio
is ours / reference. Results: bench/results/redis_cache.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from clusterpool.cache import AsyncRedisCache, LayeredCache, MemoryCache, RedisCache, RedisConnection  # noqa: E402
from redis_servers import RedisCluster, RedisServer, install  # noqa: E402

ROUNDS = 7
KEYS = [f"prompt-{i}" for i in range(1000)]
VALUE = b"x" * 512  # a short completion


def per_op(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e9


def pair(ours: Callable[[], object], ref: Callable[[], object], n: int) -> dict[str, float]:
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(per_op(ours, n))
        b.append(per_op(ref, n))
    ours_ns, ref_ns = statistics.median(a), statistics.median(b)
    return {"ours_ns": round(ours_ns, 1), "reference_ns": round(ref_ns, 1), "ratio": round(ours_ns / ref_ns, 3)}


async def apair(
    ours: Callable[[], Awaitable[object]], ref: Callable[[], Awaitable[object]], n: int
) -> dict[str, float]:
    async def per(fn: Callable[[], Awaitable[object]]) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.perf_counter() - start) / n * 1e9

    a, b = [], []
    for _ in range(ROUNDS):
        a.append(await per(ours))
        b.append(await per(ref))
    ours_ns, ref_ns = statistics.median(a), statistics.median(b)
    return {"ours_ns": round(ours_ns, 1), "reference_ns": round(ref_ns, 1), "ratio": round(ours_ns / ref_ns, 3)}


def redis_hits(conn: RedisConnection, raw: Any, n: int) -> dict[str, Any]:
    cache = RedisCache.connect(conn, "bench:", 1)
    layered = LayeredCache(RedisCache.connect(conn, "bench:", 1), None)
    cache.set_many(dict.fromkeys(KEYS, VALUE))
    full = [cache.keys.key(k) for k in KEYS]
    ki, fi = itertools.cycle(KEYS), itertools.cycle(full)
    out = {
        "RedisCache.get vs redis-py get": pair(lambda: cache.get(next(ki)), lambda: raw.get(next(fi)), n),
        "LayeredCache.get (no local layer) vs redis-py get": pair(
            lambda: layered.get(next(ki)), lambda: raw.get(next(fi)), n
        ),
    }
    assert cache.get(KEYS[0]) == VALUE and layered.stats.remote_hits > 0 and layered.stats.misses == 0
    cache.close()
    layered.close()
    return out


def batches(conn: RedisConnection, raw: Any) -> dict[str, Any]:
    cache = RedisCache.connect(conn, "bench:", 1)
    batch = KEYS[:100]
    full = [cache.keys.key(k) for k in batch]

    def raw_pipeline() -> object:
        pipe = raw.pipeline(transaction=False)
        for k in full:
            pipe.get(k)
        return pipe.execute()

    out = {
        "get_many(100) vs 100 redis-py gets": pair(
            lambda: cache.get_many(batch), lambda: [raw.get(k) for k in full], 200
        ),
        "get_many(100) vs a redis-py pipeline of 100 gets": pair(lambda: cache.get_many(batch), raw_pipeline, 500),
    }
    cache.close()
    return out


async def async_hits(conn: RedisConnection, n: int) -> dict[str, Any]:
    from clusterpool.cache.redis import async_client

    cache = AsyncRedisCache.connect(conn, "bench:", 1)
    raw = async_client(conn)
    full = [cache.keys.key(k) for k in KEYS]
    ki, fi = itertools.cycle(KEYS), itertools.cycle(full)
    out = {
        "AsyncRedisCache.get vs redis.asyncio get": await apair(
            lambda: cache.get(next(ki)), lambda: raw.get(next(fi)), n
        )
    }
    await cache.close()
    await raw.aclose()
    return out


def local_hits() -> dict[str, Any]:
    layered = LayeredCache(None, MemoryCache("LRU", 10_000))
    memory = MemoryCache("LRU", 10_000)
    d: dict[str, bytes] = {}
    for k in KEYS:
        layered.set(k, VALUE)
        memory.set(k, VALUE)
        d[k] = VALUE
    it = itertools.cycle(KEYS)
    n = 300_000
    return {
        "LayeredCache local hit vs dict.get": pair(lambda: layered.get(next(it)), lambda: d.get(next(it)), n),
        "LayeredCache local hit vs d[k]": pair(lambda: layered.get(next(it)), lambda: d[next(it)], n),
        "LayeredCache local hit vs MemoryCache.get": pair(
            lambda: layered.get(next(it)), lambda: memory.get(next(it)), n
        ),
    }


def main() -> None:
    install()
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "value_bytes": len(VALUE),
        "rounds": ROUNDS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "single").start()
        cluster = RedisCluster(Path(tmp) / "cluster").start()
        try:
            results["redis_server"] = subprocess_version()
            single = RedisConnection(address=server.address, timeout_seconds=5)
            raw = redis.Redis(host=server.host, port=server.port)
            print("==> one server: hits", flush=True)
            results["single"] = redis_hits(single, raw, 5000)
            print("==> one server: batches", flush=True)
            results["single"].update(batches(single, raw))
            print("==> one server: asyncio hits", flush=True)
            results["single"].update(asyncio.run(async_hits(single, 5000)))
            print("==> cluster: hits", flush=True)
            nodes = tuple(cluster.addresses)
            rc = redis.RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
            results["cluster"] = redis_hits(RedisConnection(cluster_nodes=nodes, timeout_seconds=5), rc, 5000)
            rc.close()
            raw.close()
        finally:
            server.stop()
            cluster.stop()
    print("==> local hits", flush=True)
    results["local"] = local_hits()
    out = HERE / "results" / "redis_cache.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for section in ("single", "cluster", "local"):
        for name, r in results[section].items():
            print(f"{section:8} {name:55} {r['ours_ns']:>10.0f} ns vs {r['reference_ns']:>10.0f} ns  x{r['ratio']}")
    print(f"results: {out}")


def subprocess_version() -> str:
    import subprocess

    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout.split()[2]


if __name__ == "__main__":
    main()
