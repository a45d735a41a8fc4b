"""The operator's side of spec.cache against a real Redis: status.cache, the CacheReady
condition, Events, version changes with warm-up and cleanup, and the routing table."""

import base64
import json

import redis

from clusterpool.cache import RedisCache, RedisConnection
from conftest import endpoints_of, wait_for


def spec(backends, cache):
    return {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "healthyThreshold": 1, "tcp": {}},
        "cache": cache,
    }


def secret(pools, name, password):
    pools.core.create_namespaced_secret(
        pools.namespace,
        {"metadata": {"name": name}, "data": {"password": base64.b64encode(password.encode()).decode()}},
    )


def routing(pools, name):
    cm = pools.core.read_namespaced_config_map(f"{name}-routing", pools.namespace)
    return cm.data["routing.json"]


def event_messages(pools, name, reason):
    return [e.message for e in pools.events(name, reason)]


def test_cache_status_follows_redis_down_and_back(pools, tcp_backends, redis_server):
    server = redis_server(password="pw-1")
    secret(pools, "redis", "pw-1")
    backends = tcp_backends(2)
    cache = {
        "type": "Layered",
        "writeMode": "WriteBack",
        "redis": {"address": server.address, "passwordSecretRef": {"name": "redis", "key": "password"}},
        "warmUp": {"keys": ["greeting"]},
    }
    pools.create("chat", spec(backends, cache))
    pools.wait_ready("chat", 2)
    wait_for(lambda: pools.condition("chat", "CacheReady").get("reason") == "Reachable", 20, "CacheReady")
    st = pools.status("chat")["cache"]
    assert st["type"] == "Layered" and st["version"] == 1 and st["reachable"] is True
    assert st["latencyMicroseconds"] > 0 and st["keys"] == 0

    # the routing table carries the settings, names the Secret, never holds the password
    text = routing(pools, "chat")
    assert "pw-1" not in text
    table = json.loads(text)["cache"]
    assert table["type"] == "Layered" and table["writeMode"] == "WriteBack"
    assert table["keyPrefix"] == f"clusterpool:{pools.namespace}/chat:"
    assert table["redis"]["passwordSecretRef"] == {"namespace": pools.namespace, "name": "redis", "key": "password"}
    assert table["warmUpKeys"] == ["greeting"]

    server.stop(kill=True)
    cond = wait_for(
        lambda: (c := pools.condition("chat", "CacheReady")).get("status") == "False" and c, 20, "CacheReady=False"
    )
    assert cond["reason"] == "Unreachable"
    assert "local layer" in cond["message"]
    assert pools.status("chat")["cache"]["reachable"] is False
    wait_for(lambda: event_messages(pools, "chat", "CacheUnreachable"), 20, "a CacheUnreachable Event")
    assert pools.condition("chat", "Ready")["status"] == "True"  # the pool still serves

    server.start()
    wait_for(lambda: pools.condition("chat", "CacheReady").get("status") == "True", 20, "CacheReady=True again")
    wait_for(lambda: event_messages(pools, "chat", "CacheReachable"), 20, "a CacheReachable Event")


def test_a_version_change_warms_up_and_removes_old_entries(pools, tcp_backends, redis_server):
    server = redis_server()
    backends = tcp_backends(1)
    cache = {"type": "Redis", "redis": {"address": server.address}}
    pools.create("ver", spec(backends, cache))
    wait_for(lambda: pools.condition("ver", "CacheReady").get("status") == "True", 30, "CacheReady")
    prefix = f"clusterpool:{pools.namespace}/ver:"
    v1 = RedisCache.connect(RedisConnection(address=server.address), prefix, version=1, ttl_seconds=600)
    v1.set_many({f"prompt-{i}": f"answer-{i}" for i in range(300)})

    pools.patch_spec("ver", {"cache": {**cache, "version": 2, "warmUp": {"fromVersion": 1, "maxKeys": 100}}})
    wait_for(lambda: event_messages(pools, "ver", "CacheVersionChanged"), 20, "a CacheVersionChanged Event")
    assert "version 1 -> 2" in event_messages(pools, "ver", "CacheVersionChanged")[0]
    st = wait_for(
        lambda: (s := pools.status("ver")["cache"])["version"] == 2 and s.get("removedKeys") is not None and s,
        30,
        "the cleanup after the version change",
    )
    assert st["version"] == 2 and st["warmedKeys"] == 100 and st["removedKeys"] == 300
    wait_for(lambda: pools.status("ver")["cache"].get("keys") == 100, 20, "the key count of version 2")
    r = redis.Redis(host=server.host, port=server.port)
    assert len(list(r.scan_iter(match=f"{prefix}v1:*"))) == 0
    assert len(list(r.scan_iter(match=f"{prefix}v2:*"))) == 100
    wait_for(lambda: event_messages(pools, "ver", "CacheInvalidated"), 20, "a CacheInvalidated Event")
    assert json.loads(routing(pools, "ver"))["cache"]["version"] == 2
    v1.close()


def test_credentials_problems_are_reported_and_recover(pools, tcp_backends, redis_server):
    server = redis_server(password="right")
    backends = tcp_backends(1)
    cache = {
        "type": "Redis",
        "redis": {"address": server.address, "passwordSecretRef": {"name": "r", "key": "password"}},
    }
    pools.create("auth", spec(backends, cache))
    cond = wait_for(
        lambda: (c := pools.condition("auth", "CacheReady")).get("reason") == "SecretNotFound" and c,
        20,
        "CacheReady=False SecretNotFound",
    )
    assert "spec.cache.redis.passwordSecretRef" in cond["message"] and cond["status"] == "False"
    secret(pools, "r", "wrong")
    wait_for(
        lambda: pools.condition("auth", "CacheReady").get("reason") == "AuthenticationFailed",
        20,
        "CacheReady=False AuthenticationFailed",
    )
    pools.core.delete_namespaced_secret("r", pools.namespace)
    secret(pools, "r", "right")
    # after an authentication failure the operator reads the Secret again every round
    wait_for(lambda: pools.condition("auth", "CacheReady").get("status") == "True", 20, "CacheReady=True")


def test_a_memory_cache_is_local_only(pools, tcp_backends):
    backends = tcp_backends(1)
    pools.create("mem", spec(backends, {"type": "Memory", "policy": "LFU"}))
    cond = wait_for(lambda: pools.condition("mem", "CacheReady"), 20, "CacheReady")
    assert cond["status"] == "True" and cond["reason"] == "LocalOnly"
    assert pools.status("mem")["cache"] == {"type": "Memory", "version": 1}
    assert json.loads(routing(pools, "mem"))["cache"]["redis"] is None
    pools.patch_spec("mem", {"cache": None})  # no cache any more: its status and condition go
    wait_for(lambda: "cache" not in pools.status("mem"), 20, "status.cache to be removed")
    assert pools.condition("mem", "CacheReady") == {}
    assert json.loads(routing(pools, "mem"))["cache"] is None


def test_tls_with_a_ca_from_a_secret(pools, tcp_backends, redis_server):
    server = redis_server(tls=True)
    pools.core.create_namespaced_secret(
        pools.namespace,
        {"metadata": {"name": "redis-ca"}, "stringData": {"ca.crt": (server.dir / "ca.crt").read_text()}},
    )
    backends = tcp_backends(1)
    redis_tls = {"address": server.address, "tls": True}
    pools.create("untrusted", spec(backends, {"type": "Redis", "redis": redis_tls}))
    pools.create(
        "trusted",
        spec(backends, {"type": "Redis", "redis": {**redis_tls, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}}),
    )
    wait_for(lambda: pools.condition("trusted", "CacheReady").get("reason") == "Reachable", 20, "trusted Reachable")
    cond = wait_for(
        lambda: (c := pools.condition("untrusted", "CacheReady")).get("status") == "False" and c, 20, "untrusted"
    )
    assert cond["reason"] == "TLSFailed" and "caSecretRef" in cond["message"]
    table = json.loads(routing(pools, "trusted"))["cache"]["redis"]
    assert table["caSecretRef"] == {"namespace": pools.namespace, "name": "redis-ca", "key": "ca.crt"}


def test_a_redis_cluster_cache(pools, tcp_backends, redis_cluster):
    backends = tcp_backends(1)
    nodes = redis_cluster.addresses[:2]  # some of the nodes: the rest are found from them
    pools.create("clu", spec(backends, {"type": "Redis", "redis": {"clusterNodes": nodes}}))
    cond = wait_for(lambda: (c := pools.condition("clu", "CacheReady")).get("status") == "True" and c, 20, "Ready")
    assert cond["message"].startswith("Redis Cluster at ")
    prefix = f"clusterpool:{pools.namespace}/clu:"
    cache = RedisCache.connect(RedisConnection(cluster_nodes=tuple(nodes)), prefix, version=1)
    cache.set_many({f"k{i}": "v" for i in range(90)})
    # a version change recounts; the old version's 90 entries, spread over three masters, go
    pools.patch_spec("clu", {"cache": {"type": "Redis", "version": 2, "redis": {"clusterNodes": nodes}}})
    st = wait_for(
        lambda: (s := pools.status("clu")["cache"])["version"] == 2 and s.get("removedKeys") is not None and s,
        30,
        "the cleanup after the version change",
    )
    assert st["removedKeys"] == 90
    assert sum(redis.Redis(host=n.host, port=n.port).dbsize() for n in redis_cluster.nodes) == 0
    cache.close()


def test_an_operator_killed_mid_cleanup_finishes_it_after_restart(pools, tcp_backends, redis_server, operator):
    server = redis_server()
    backends = tcp_backends(1)
    cache = {"type": "Redis", "redis": {"address": server.address}}
    pools.create("big", spec(backends, cache))
    wait_for(lambda: pools.condition("big", "CacheReady").get("status") == "True", 30, "CacheReady")
    r = redis.Redis(host=server.host, port=server.port)
    old = f"clusterpool:{pools.namespace}/big:v1:"
    for start in range(0, 300_000, 20_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, start + 20_000):
            pipe.set(f"{old}{i}", b"x")
        pipe.execute()

    def left():
        return sum(1 for _ in r.scan_iter(match=f"{old}*", count=10_000))

    pools.patch_spec("big", {"cache": {**cache, "version": 2}})
    wait_for(lambda: left() < 300_000, 30, "the cleanup to begin")
    operator.restart(kill=True)  # mid-cleanup, as a crash would
    remaining = left()
    assert 0 < remaining < 300_000, remaining
    st = wait_for(
        lambda: (s := pools.status("big")["cache"])["version"] == 2 and s.get("removedKeys") is not None and s,
        60,
        "the restarted operator to finish the cleanup",
    )
    assert left() == 0 and st["removedKeys"] == remaining
    assert len(event_messages(pools, "big", "CacheVersionChanged")) == 1  # not announced twice


def test_the_sdk_follows_the_operators_cache_settings(pools, tcp_backends, redis_server, k8s):
    """End to end: the operator publishes spec.cache; PoolCache reads it through the API
    (ConfigMapTable), takes the password from the Secret through the API, and follows a
    version change made with a patch of the pool."""
    from clusterpool.client import ConfigMapTable, PoolCache, secret_from_api

    server = redis_server(password="pw-9")
    secret(pools, "redis", "pw-9")
    backends = tcp_backends(1)
    cache = {
        "type": "Layered",
        "redis": {"address": server.address, "passwordSecretRef": {"name": "redis", "key": "password"}},
    }
    pools.create("e2e", spec(backends, cache))
    wait_for(lambda: pools.condition("e2e", "CacheReady").get("status") == "True", 30, "CacheReady")
    table = ConfigMapTable(pools.namespace, "e2e", api_client=k8s)
    sdk = PoolCache(table, secrets=secret_from_api(k8s))
    try:
        sdk.set("q", "answer")
        r = redis.Redis(host=server.host, port=server.port, password="pw-9")
        assert r.get(f"clusterpool:{pools.namespace}/e2e:v1:q") == b"answer"  # write-through, authenticated
        pools.patch_spec("e2e", {"cache": {**cache, "version": 2}})
        wait_for(lambda: sdk.get("q") is None, 20, "the SDK to switch to version 2 (old entries unreachable)")
        sdk.set("q", "new")
        assert r.get(f"clusterpool:{pools.namespace}/e2e:v2:q") == b"new"
    finally:
        sdk.close()
        table.close()
