"""The client SDK against real HTTP servers on loopback, and against the routing table the
operator publishes on the real apiserver."""

import json
import os
from collections import Counter

import httpx
import openai
import pytest

from backends import HTTPBackend, free_port
from clusterpool.client import (
    AsyncPoolTransport,
    ConfigMapTable,
    FileTable,
    PoolClient,
    PoolTransport,
    RetryBudget,
    RoutingTable,
    RoutingTableError,
)
from conftest import endpoints_of, wait_for


def table(backends, strategy="RoundRobin", eligible=None, revision="r1", failure_threshold=1):
    return {
        "schemaVersion": 1,
        "revision": revision,
        "strategy": strategy,
        "activeTier": 0,
        "panic": False,
        "circuitBreaker": {
            "failureThreshold": failure_threshold,
            "openSeconds": 30,
            "maxOpenSeconds": 300,
            "halfOpenMaxProbes": 1,
            "successThreshold": 1,
        },
        "endpoints": [
            {
                "name": f"ep-{i}",
                "address": b.host,
                "port": b.port,
                "tier": 0,
                "weight": 1,
                "effectiveWeight": 1,
                "eligible": eligible is None or i in eligible,
                "health": "Healthy",
                "breaker": "Closed",
            }
            for i, b in enumerate(backends)
        ],
        "cache": None,
    }


@pytest.fixture
def servers():
    port = free_port()
    bs = [HTTPBackend(f"127.0.1.{i}", port, name=f"ep-{i}").start() for i in range(3)]
    yield bs
    for b in bs:
        b.stop()


def write(path, t):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(t))
    os.replace(tmp, path)  # atomically, as the kubelet swaps a mounted ConfigMap


def counts(servers):
    return [b.requests for b in servers]


def test_requests_are_spread_by_the_table_strategy(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers))
    pool = PoolClient(FileTable(path, check_every=0))
    with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
        for _ in range(30):
            assert http.get("/v1/models").status_code == 200
    assert counts(servers) == [10, 10, 10]
    assert all(pool.balancer.inflight(t.name) == 0 for t in pool.balancer.targets)


def test_a_dead_endpoint_costs_no_failed_request(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers))
    pool = PoolClient(FileTable(path, check_every=0))
    servers[1].stop()
    with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
        statuses = [
            http.post("/v1/chat/completions", json={"model": "stub", "messages": []}).status_code for _ in range(30)
        ]
    assert statuses == [200] * 30  # POST too: a refused connect never reached the server
    assert pool.breaker_state("ep-1") == "Open"
    assert servers[0].requests + servers[2].requests == 30


def test_an_updated_table_applies_without_a_restart(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers))
    pool = PoolClient(FileTable(path, check_every=0))
    with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
        http.get("/")
        write(path, table(servers, eligible={0, 2}, revision="r2", strategy="LeastConnections"))
        before = counts(servers)
        for _ in range(20):
            http.get("/")
    after = counts(servers)
    assert after[1] == before[1] and after[0] + after[2] - before[0] - before[2] == 20
    assert pool.table.strategy == "LeastConnections"


def test_a_bad_table_keeps_the_last_good_one(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers))
    source = FileTable(path, check_every=0)
    path.write_text("{ not json")
    assert source.current().revision == "r1"
    with pytest.raises(RoutingTableError, match="schemaVersion 2 is not supported"):
        RoutingTable.parse(json.dumps({**table(servers), "schemaVersion": 2}))


def test_idempotent_requests_retry_on_503_within_budget(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))  # keep the breaker out of it
    servers[0].mode = "unavailable"
    pool = PoolClient(FileTable(path, check_every=0))
    with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
        assert [http.get("/").status_code for _ in range(9)] == [200] * 9
        # every answer from ep-0 was a 503 retried once elsewhere
        assert servers[0].requests >= 1
        assert servers[1].requests + servers[2].requests == 9
        posts = Counter(http.post("/", json={}).status_code for _ in range(9))
    assert posts[503] == 3  # a POST may have been acted on: not retried
    broke = PoolClient(FileTable(path, check_every=0), budget=RetryBudget(ratio=0, burst=0))
    with httpx.Client(transport=PoolTransport(broke), base_url="http://pool") as http:
        assert Counter(http.get("/").status_code for _ in range(9))[503] == 3  # no budget, no retry


async def test_the_async_transport_routes_and_fails_over(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, strategy="Adaptive"))
    pool = PoolClient(FileTable(path, check_every=0))
    servers[2].stop()
    async with httpx.AsyncClient(transport=AsyncPoolTransport(pool), base_url="http://pool") as http:
        for _ in range(20):
            r = await http.get("/v1/models")
            assert r.status_code == 200
    assert servers[0].requests + servers[1].requests == 20


def test_the_openai_client_uses_the_pool_unchanged(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers))
    pool = PoolClient(FileTable(path, check_every=0))
    client = openai.OpenAI(
        base_url="http://pool/v1",
        api_key="unused",
        http_client=httpx.Client(transport=PoolTransport(pool)),
        max_retries=0,
    )
    answers = {
        client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content
        for _ in range(6)
    }
    assert answers == {"hello from ep-0", "hello from ep-1", "hello from ep-2"}
    servers[0].stop()
    for _ in range(6):
        reply = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content != "hello from ep-0"


def test_consistent_hash_keys_stick_to_an_endpoint(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, strategy="ConsistentHash"))
    pool = PoolClient(FileTable(path, check_every=0))
    with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
        for _ in range(10):
            http.get("/", headers={"X-ClusterPool-Key": "conversation-7"})
    assert sorted(counts(servers)) == [0, 0, 10]


def test_the_configmap_table_follows_the_operator(pools, http_backends, k8s):
    backends = http_backends(3)
    pools.create(
        "p",
        {
            "discovery": {"static": {"endpoints": endpoints_of(backends)}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
        },
    )
    pools.wait_ready("p", healthy=3)
    wait_for(lambda: pools.condition("p", "Published").get("status") == "True", 10, "the routing table published")
    pool = PoolClient(ConfigMapTable(pools.namespace, "p", api_client=k8s))
    try:
        assert len(pool.balancer.targets) == 3
        backends[0].stop()
        wait_for(
            lambda: [t.name for t in pool.balancer.targets] == ["ep-1", "ep-2"], 10, "the watched table to drop ep-0"
        )
        with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
            assert all(http.get("/").status_code == 200 for _ in range(10))
        assert backends[1].requests + backends[2].requests >= 10
    finally:
        pool.close()


async def test_langchain_chat_openai_uses_the_pool_unchanged(servers, tmp_path):
    from langchain_openai import ChatOpenAI

    path = tmp_path / "routing.json"
    write(path, table(servers))
    pool = PoolClient(FileTable(path, check_every=0))
    llm = ChatOpenAI(
        model="stub",
        base_url="http://pool/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=PoolTransport(pool)),
        http_async_client=httpx.AsyncClient(transport=AsyncPoolTransport(pool)),
    )
    answers = {llm.invoke("hi").content for _ in range(3)}
    answers |= {(await llm.ainvoke("hi")).content for _ in range(3)}
    assert answers == {"hello from ep-0", "hello from ep-1", "hello from ep-2"}
