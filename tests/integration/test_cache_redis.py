"""The Redis, Redis Cluster and layered caches against real redis-server processes on
loopback: semantics, write-through and write-back, outages, versions and warm-up."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from clusterpool.cache import AsyncRedisCache, LayeredCache, MemoryCache, RedisCache, RedisConnection
from clusterpool.cache.admin import CacheAdmin
from conftest import ROOT, wait_for


def conn(server, **kw):
    return RedisConnection(address=server.address, password=server.password, **kw)


def raw(server):
    return redis.Redis(host=server.host, port=server.port, password=server.password)


# -- RedisCache -----------------------------------------------------------------------


def test_redis_cache_round_trip_prefix_version_and_ttl(redis_server):
    server = redis_server()
    a = RedisCache.connect(conn(server), prefix="clusterpool:ns/a:", version=1)
    b = RedisCache.connect(conn(server), prefix="clusterpool:ns/b:", version=1)
    a2 = RedisCache.connect(conn(server), prefix="clusterpool:ns/a:", version=2)
    a.set("k", "é")
    assert a.get("k") == "é".encode()
    assert b.get("k") is None  # another pool's prefix
    assert a2.get("k") is None  # another version
    assert raw(server).get("clusterpool:ns/a:v1:k") == "é".encode()
    a.set("short", b"x", ttl_seconds=0.2)
    assert 0 < raw(server).pttl("clusterpool:ns/a:v1:short") <= 200
    wait_for(lambda: a.get("short") is None, 3, "the entry to expire")
    assert a.delete("k") and not a.delete("k")
    for c in (a, b, a2):
        c.close()


def test_redis_cache_batches(redis_server):
    server = redis_server()
    cache = RedisCache.connect(conn(server), prefix="p:", ttl_seconds=60)
    r = raw(server)
    r.config_resetstat()
    cache.set_many({f"k{i}": f"v{i}" for i in range(50)})
    got = cache.get_many([f"k{i}" for i in range(60)])
    assert got == {f"k{i}": f"v{i}".encode() for i in range(50)}
    assert cache.delete_many([f"k{i}" for i in range(0, 60, 2)]) == 25
    calls = {k: v["calls"] for k, v in r.info("commandstats").items()}
    assert (calls["cmdstat_set"], calls["cmdstat_get"], calls["cmdstat_del"]) == (50, 60, 30)
    assert 0 < r.ttl("p:v1:k1") <= 60
    cache.close()


async def test_async_redis_cache(redis_server):
    server = redis_server(password="s3cret")
    cache = AsyncRedisCache.connect(conn(server), prefix="p:", version=3, ttl_seconds=30)
    await cache.set("a", b"1")
    await cache.set_many({"b": b"2", "c": b"3"})
    assert await cache.get("a") == b"1"
    assert await cache.get_many(["a", "b", "c", "d"]) == {"a": b"1", "b": b"2", "c": b"3"}
    assert await cache.delete_many(["a", "b"]) == 2
    assert await cache.delete("c") is True
    assert await cache.get("c") is None
    assert await cache.ping()
    await cache.close()


def test_a_wrong_password_is_an_error_of_redis_cache(redis_server):
    server = redis_server(password="right")
    cache = RedisCache.connect(RedisConnection(address=server.address, password="wrong"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        cache.get("x")
    cache.close()


def test_tls_verifies_against_the_given_ca(redis_server):
    server = redis_server(tls=True)
    ca = (server.dir / "ca.crt").read_text()
    verified = RedisCache.connect(RedisConnection(address=server.address, tls=True, ca_pem=ca))
    verified.set("k", "v")
    assert verified.get("k") == b"v"
    insecure = RedisCache.connect(RedisConnection(address=server.address, tls=True, insecure_skip_verify=True))
    assert insecure.get("k") == b"v"
    untrusted = RedisCache.connect(RedisConnection(address=server.address, tls=True))
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.get("k")
    plain = RedisCache.connect(RedisConnection(address=server.address))
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.get("k")
    for c in (verified, insecure, untrusted, plain):
        c.close()


# -- Redis Cluster --------------------------------------------------------------------


def test_cluster_spreads_a_pools_keys_over_all_masters(redis_cluster):
    cache = RedisCache.connect(RedisConnection(cluster_nodes=tuple(redis_cluster.addresses[:1])), prefix="cp:ns/p:")
    cache.set_many({f"prompt-{i}": f"answer-{i}" for i in range(600)})
    sizes = [raw(n).dbsize() for n in redis_cluster.nodes]
    assert sum(sizes) == 600
    assert all(s > 120 for s in sizes), sizes  # about a third each (slots are spread evenly)
    assert cache.get_many([f"prompt-{i}" for i in range(600)]) == {
        f"prompt-{i}": f"answer-{i}".encode() for i in range(600)
    }
    assert cache.delete_many([f"prompt-{i}" for i in range(300)]) == 300
    assert sum(raw(n).dbsize() for n in redis_cluster.nodes) == 300
    cache.close()


def test_cluster_follows_moved_after_a_slot_migrates(redis_cluster):
    cache = RedisCache.connect(RedisConnection(cluster_nodes=tuple(redis_cluster.addresses)), prefix="cp:")
    cache.set("moving", b"still here")
    full = cache.keys.key("moving")
    slot = cache.client.keyslot(full)
    before = redis_cluster.node_of_slot(slot)
    target = next(n for n in redis_cluster.nodes if n is not before)
    redis_cluster.move_slot(slot, target)
    assert redis_cluster.node_of_slot(slot) is target
    with pytest.raises(redis.exceptions.MovedError):
        raw(before).get(full)  # the old owner redirects
    assert cache.client.get_node_from_key(full).port == before.port  # the client's map is stale
    # the cache's client still has the old slot map: it gets MOVED, follows it, refreshes
    assert cache.get("moving") == b"still here"
    assert cache.client.get_node_from_key(full).port == target.port
    cache.set("moving", b"updated")
    assert raw(target).get(full) == b"updated"
    cache.close()


async def test_async_cluster_cache(redis_cluster):
    cache = AsyncRedisCache.connect(RedisConnection(cluster_nodes=tuple(redis_cluster.addresses)), prefix="cp:")
    await cache.set_many({f"k{i}": b"v" for i in range(100)})
    assert len(await cache.get_many([f"k{i}" for i in range(100)])) == 100
    assert await cache.delete_many([f"k{i}" for i in range(100)]) == 100
    await cache.close()


# -- LayeredCache: write-through and write-back ---------------------------------------


def test_write_through_reaches_redis_before_returning(redis_server):
    server = redis_server()
    r = raw(server)
    cache = LayeredCache(RedisCache.connect(conn(server), "p:"), MemoryCache("LRU", 100), "WriteThrough")
    cache.set("k", "v")
    assert r.get("p:v1:k") == b"v"
    assert cache.get("k") == b"v" and cache.stats.local_hits == 1
    # another process's cache finds it in Redis and keeps it locally
    other = LayeredCache(RedisCache.connect(conn(server), "p:"), MemoryCache("LRU", 100))
    assert other.get("k") == b"v" and other.stats.remote_hits == 1
    assert other.get("k") == b"v" and other.stats.local_hits == 1
    cache.delete("k")
    assert r.get("p:v1:k") is None
    cache.close()
    other.close()


def test_write_back_queues_coalesces_and_flushes_on_close(redis_server):
    server = redis_server()
    r = raw(server)
    cache = LayeredCache(
        RedisCache.connect(conn(server), "p:"), MemoryCache("LRU", 100), "WriteBack", flush_interval=3600
    )
    for i in range(100):
        cache.set("hot", f"v{i}")
    cache.set("other", "x")
    assert r.get("p:v1:hot") is None  # not in Redis yet
    assert cache.stats.pending == 2  # the newest write of a key replaces the older ones
    assert cache.get("hot") == b"v99"
    cache.close()
    assert r.get("p:v1:hot") == b"v99" and r.get("p:v1:other") == b"x"
    assert cache.stats.flushed == 2 and cache.stats.pending == 0


def test_write_back_flushes_on_its_timer(redis_server):
    server = redis_server()
    r = raw(server)
    cache = LayeredCache(
        RedisCache.connect(conn(server), "p:"), MemoryCache("LRU", 100), "WriteBack", flush_interval=0.1
    )
    cache.set("k", "v")
    wait_for(lambda: r.get("p:v1:k") == b"v", 3, "the timer to flush")
    cache.delete("k")
    wait_for(lambda: r.get("p:v1:k") is None, 3, "the queued delete to flush")
    cache.close()


def test_write_back_queue_is_bounded(redis_server):
    server = redis_server()
    r = raw(server)
    cache = LayeredCache(
        RedisCache.connect(conn(server), "p:"),
        MemoryCache("LRU", 1000),
        "WriteBack",
        flush_interval=3600,
        max_pending=10,
    )
    for i in range(25):
        cache.set(f"k{i}", "v")
    # the 11th write flushed inline (back pressure), so nothing was dropped
    assert cache.stats.pending <= 10 and cache.stats.dropped == 0
    assert r.dbsize() >= 10
    server.stop(kill=True)
    for i in range(25, 60):
        cache.set(f"k{i}", "v")  # Redis is down: the oldest pending writes go
    assert cache.stats.pending == 10
    assert cache.stats.dropped > 0
    cache.close()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from clusterpool.cache import LayeredCache, MemoryCache, RedisCache, RedisConnection
    address, interval, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    cache = LayeredCache(RedisCache.connect(RedisConnection(address=address), "p:"), MemoryCache(), "WriteBack",
                         flush_interval=interval)
    for i in range(50):
        cache.set(f"k{i}", "v")
    time.sleep(pause)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize(("interval", "pause", "survivors"), [(3600, 0.3, 0), (0.1, 0.6, 50)])
def test_write_back_loss_when_the_process_is_killed(redis_server, interval, pause, survivors):
    """What docs/caching.md promises: a SIGKILL loses the writes of the last flush interval."""
    server = redis_server()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, server.address, str(interval), str(pause)], env=env, timeout=30, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert raw(server).dbsize() == survivors


# -- outages --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["WriteThrough", "WriteBack"])
def test_a_redis_outage_degrades_to_the_local_layer_and_recovers(redis_server, mode):
    server = redis_server()
    cache = LayeredCache(
        RedisCache.connect(conn(server), "p:"),
        MemoryCache("LRU", 100),
        mode,
        flush_interval=0.1,
        retry_seconds=0.2,
        max_retry_seconds=0.4,
    )
    cache.set("before", "1")
    cache.flush()
    server.stop(kill=True)
    started = time.monotonic()
    assert cache.get("before") == b"1"  # local hit
    assert cache.get("unknown") is None  # Redis down: a miss, not an error
    assert cache.stats.degraded
    cache.set("during", "2")  # no error either
    cache.delete("before")
    assert cache.get("during") == b"2"
    for _ in range(200):  # while Redis is marked down, calls do not wait for it
        cache.get("unknown")
    assert time.monotonic() - started < 2.0
    server.start()  # same port, empty (nothing persisted)
    r = raw(server)
    r.set("p:v1:before", b"stale")  # as if it had survived: the queued delete must win
    wait_for(lambda: cache.get("unknown") is None and not cache.stats.degraded, 5, "the cache to use Redis again")
    wait_for(lambda: r.get("p:v1:before") is None, 5, "the delete made during the outage to reach Redis")
    if mode == "WriteBack":
        wait_for(lambda: r.get("p:v1:during") == b"2", 5, "the write made during the outage to be flushed")
    else:
        assert r.get("p:v1:during") is None  # write-through: made while Redis was down, local only
    cache.set("after", "3")
    cache.flush()
    assert r.get("p:v1:after") == b"3"
    cache.close()


def test_a_redis_only_cache_misses_during_an_outage(redis_server):
    server = redis_server()
    cache = LayeredCache(RedisCache.connect(conn(server), "p:"), None, retry_seconds=0.1)
    cache.set("k", "v")
    assert cache.get("k") == b"v"
    server.stop(kill=True)
    assert cache.get("k") is None
    cache.set("k", "w")
    server.start()
    wait_for(lambda: cache.set("k", "x") is None and cache.get("k") == b"x", 5, "Redis to be used again")
    cache.close()


# -- versions and warm-up -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["server", "cluster"])
async def test_version_cleanup_and_copy(kind, request):
    if kind == "server":
        server = request.getfixturevalue("redis_server")()
        c = conn(server)
    else:
        c = RedisConnection(cluster_nodes=tuple(request.getfixturevalue("redis_cluster").addresses))
    v1 = RedisCache.connect(c, "cp:ns/p:", version=1, ttl_seconds=600)
    v1.set_many({f"k{i}": f"old-{i}" for i in range(1200)})
    v2 = RedisCache.connect(c, "cp:ns/p:", version=2)
    v2.set("k0", "new-0")
    other_pool = RedisCache.connect(c, "cp:ns/q:", version=1)
    other_pool.set("k0", "q")
    admin = CacheAdmin(c, "cp:ns/p:")
    try:
        assert await admin.count(1) == 1200
        assert await admin.copy_version(1, 2, max_keys=100_000) == 1199  # k0 exists in v2 and wins
        assert v2.get("k0") == b"new-0" and v2.get("k7") == b"old-7"
        assert 0 < v2.client.pttl(v2.keys.key("k7")) <= 600_000  # the remaining TTL is kept
        assert await admin.remove_other_versions(2) == 1200
        assert await admin.count(1) == 0 and await admin.count(2) == 1200
        assert other_pool.get("k0") == b"q"  # another pool's keys are untouched
    finally:
        await admin.close()
        for x in (v1, v2, other_pool):
            x.close()


def test_warm_up_loads_keys_into_the_local_layer(redis_server):
    server = redis_server()
    old = RedisCache.connect(conn(server), "p:", version=1)
    old.set_many({"a": "1", "b": "2"})
    cache = LayeredCache(RedisCache.connect(conn(server), "p:", version=2), MemoryCache("LRU", 10))
    assert cache.warm_up(["a", "b", "c"]) == 0  # nothing in version 2 yet
    assert cache.warm_up(["a", "b", "c"], from_version=1) == 2
    assert raw(server).get("p:v2:a") == b"1"  # copied into the current version
    server.stop(kill=True)
    assert cache.get("a") == b"1" and cache.get("b") == b"2"  # served locally
    cache.close()
