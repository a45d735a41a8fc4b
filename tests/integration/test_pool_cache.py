"""PoolCache: the SDK builds the pool's cache from the routing table and follows it."""

import json
import os

from clusterpool.client import FileTable, PoolCache
from clusterpool.core.cache_settings import CacheSettings, RedisSettings, SecretRef
from conftest import wait_for


def write_table(path, cache):
    table = {
        "schemaVersion": 1,
        "revision": str(hash(cache)),
        "strategy": "RoundRobin",
        "endpoints": [],
        "cache": cache.to_json() if cache else None,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)


def layered(server, version=1, **kw):
    redis = RedisSettings(address=server.address, password_secret=SecretRef("ns", "redis", "password"))
    return CacheSettings(type="Layered", version=version, key_prefix="cp:ns/p:", redis=redis, **kw)


def test_pool_cache_follows_the_routing_table(tmp_path, redis_server):
    server = redis_server(password="pw")
    path = tmp_path / "routing.json"
    write_table(path, None)
    seen = []
    cache = PoolCache(FileTable(path, check_every=0), secrets=lambda ref: seen.append(ref) or "pw")
    cache.set("k", "v")  # no cache configured: a no-op
    assert cache.get("k") is None and cache.stats is None

    write_table(path, layered(server))
    cache.set("k", "v1")
    assert cache.get("k") == b"v1"
    assert seen == [SecretRef("ns", "redis", "password")]  # the password came from the named Secret
    first = cache.cache
    assert first is not None and first.stats.local_hits == 1

    # a new version: the old entries are unreachable at once, locally too
    write_table(path, layered(server, version=2, warm_up_keys=("greeting",)))
    assert cache.get("k") is None
    assert cache.cache is not first and first.closed
    cache.set("k", "v2")
    assert cache.get("k") == b"v2"

    # another process starting with this table warms its local layer up
    cache.set("greeting", "hello")
    other = PoolCache(FileTable(path, check_every=0), password="pw")
    assert other.cache is not None
    server.stop(kill=True)
    assert other.get("greeting") == b"hello"  # from the warmed local layer, Redis is gone
    other.close()
    cache.close()


def test_pool_cache_memory_only(tmp_path):
    path = tmp_path / "routing.json"
    write_table(path, CacheSettings(type="Memory", policy="FIFO", max_entries=2))
    cache = PoolCache(FileTable(path, check_every=0))
    for k in ("a", "b", "c"):
        cache.set(k, k)
    assert cache.get("a") is None and cache.get("c") == b"c"  # FIFO, two entries
    write_table(path, CacheSettings(type="None"))
    wait_for(lambda: cache.cache is None, 2, "the cache to be switched off")
    assert cache.get("c") is None
