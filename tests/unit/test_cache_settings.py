"""spec.cache -> the routing table's cache settings -> what the SDK reads back; key spaces;
the operator's CacheReady condition; error classification."""

import json
import logging

import pytest
import redis

from clusterpool import api
from clusterpool.cache.admin import classify
from clusterpool.cache.redis import KeySpace, RedisConnection
from clusterpool.client import RoutingTable
from clusterpool.core.cache_settings import CacheSettings, SecretRef
from clusterpool.core.pool import PoolState
from clusterpool.core.publish import build_routing_table, cache_settings
from clusterpool.sinks.cache import CacheMonitor
from clusterpool.stages import PoolSecrets
from samples import VALID

POOL = {"metadata": {"name": "chat", "namespace": "team", "uid": "u", "generation": 1}}


def test_layered_spec_renders_into_the_table_and_reads_back():
    spec = api.parse_spec(VALID["cache-layered-write-back"])
    table = build_routing_table(POOL, spec, PoolState())
    cache = table["cache"]
    assert cache["type"] == "Layered" and cache["version"] == 3 and cache["keyPrefix"] == "team-a:chat:"
    assert cache["redis"]["passwordSecretRef"] == {"namespace": "team", "name": "redis", "key": "password"}
    assert cache["flushIntervalMilliseconds"] == 200 and cache["warmUpKeys"] == ["greeting"]
    parsed = RoutingTable.parse(json.dumps(table))
    assert parsed.cache == cache_settings(spec, "team", "chat")
    assert parsed.cache is not None and parsed.cache.redis is not None
    assert parsed.cache.redis.password_secret == SecretRef("team", "redis", "password")


def test_default_prefix_and_revision_follow_the_cache():
    spec = api.parse_spec(VALID["cache-memory"])
    s = cache_settings(spec, "team", "chat")
    assert s is not None and s.key_prefix == "clusterpool:team/chat:" and s.max_bytes == 64 << 20
    bumped = api.parse_spec({**VALID["cache-memory"], "cache": {**VALID["cache-memory"]["cache"], "version": 2}})
    assert (
        build_routing_table(POOL, spec, PoolState())["revision"]
        != build_routing_table(POOL, bumped, PoolState())["revision"]
    )
    assert build_routing_table(POOL, api.parse_spec(VALID["minimal"]), PoolState())["cache"] is None


def test_settings_round_trip_and_refuse_nonsense():
    s = CacheSettings(type="Memory", policy="TTL", max_entries=5, ttl_seconds=9, version=7)
    assert CacheSettings.from_json(s.to_json()) == s
    with pytest.raises(ValueError):
        CacheSettings.from_json({"type": "Memory", "policy": "MRU"})


def test_key_space():
    ks = KeySpace("clusterpool:ns/p:", 3)
    assert ks.key("x") == "clusterpool:ns/p:v3:x"
    assert ks.strip(b"clusterpool:ns/p:v3:x") == "x"
    assert ks.version_of("clusterpool:ns/p:v12:y") == 12 and ks.version_of("clusterpool:ns/p:vx:y") is None
    assert KeySpace("a*b:", 1).pattern() == "a\\*b:v1:*"


def test_connection_rules():
    with pytest.raises(ValueError):
        RedisConnection()
    with pytest.raises(ValueError):
        RedisConnection(cluster_nodes=("a:1",), database=1)
    assert "password" not in repr(RedisConnection(address="a:1", password="secret")).replace("password=", "")


def test_classify_names_the_field_to_fix():
    assert classify(redis.exceptions.AuthenticationError("invalid"))[0] == "AuthenticationFailed"
    assert classify(redis.exceptions.ResponseError("NOAUTH Authentication required."))[0] == "AuthenticationRequired"
    assert classify(redis.exceptions.ConnectionError("refused"))[0] == "Unreachable"
    assert classify(TimeoutError())[0] == "Timeout"
    assert classify(redis.exceptions.ClusterDownError("CLUSTERDOWN"))[0] == "ClusterDown"


async def test_monitor_conditions_without_redis():
    events = []
    m = CacheMonitor(PoolSecrets(None, "ns"), lambda *e: events.append(e), logging.getLogger("t"), lambda why: None)
    assert m.condition() is None and m.status() is None
    await m.update(api.CacheSpec(type="Memory"), CacheSettings(type="Memory"))
    assert m.condition().reason == "LocalOnly" and m.status() == {"type": "Memory", "version": 1}
    await m.update(api.CacheSpec(type="Memory", version=2), CacheSettings(type="Memory", version=2))
    assert [e[1] for e in events] == ["CacheVersionChanged"]
    await m.update(None, None)
    assert m.condition() is None and m.status() is None


async def test_monitor_restored_version_emits_nothing_on_restart():
    events = []
    m = CacheMonitor(
        PoolSecrets(None, "ns"),
        lambda *e: events.append(e),
        logging.getLogger("t"),
        lambda why: None,
        {"type": "Memory", "version": 4},
    )
    await m.update(api.CacheSpec(type="Memory", version=4), CacheSettings(type="Memory", version=4))
    assert events == []
