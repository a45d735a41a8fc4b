"""The client SDK against real HTTP servers on loopback, and against the routing table the
operator publishes on the real apiserver."""

import json
import os
import socketserver
import threading
from collections import Counter
from types import SimpleNamespace

import httpx
import openai
import pytest

from backends import HTTPBackend, free_port
from clusterpool.client import (
    ENDPOINT_EXTENSION,
    ENDPOINT_HEADER,
    AsyncPoolTransport,
    ClusterPoolError,
    ConfigMapTable,
    FileTable,
    NoEndpointError,
    PoolClient,
    PoolTransport,
    RetryBudget,
    RoutingTable,
    RoutingTableError,
    async_httpx_client,
    httpx_client,
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


CHAT = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}


def test_inference_posts_move_to_another_endpoint_on_503_and_name_the_one_that_served(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))  # keep the breaker out of it
    servers[0].mode = "unavailable"
    with httpx_client(path, retries=2) as http:
        answers = [http.post("/v1/chat/completions", json=CHAT) for _ in range(9)]
        others = Counter(http.post("/v1/rerank", json={}).status_code for _ in range(9))
    assert [r.status_code for r in answers] == [200] * 9
    assert servers[0].requests >= 1  # it was asked, answered 503, and the request went on
    served = Counter(r.headers[ENDPOINT_HEADER] for r in answers)
    assert set(served) == {"ep-1", "ep-2"} and sum(served.values()) == 9
    assert all(r.extensions[ENDPOINT_EXTENSION] == r.headers[ENDPOINT_HEADER] for r in answers)
    assert all(
        r.json()["choices"][0]["message"]["content"] == f"hello from {r.headers[ENDPOINT_HEADER]}" for r in answers
    )
    assert others[503] == 3  # any other POST may have been acted on: not resent


def test_an_inference_post_is_never_sent_twice_to_one_endpoint(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))
    for s in servers:
        s.mode = "unavailable"
    with httpx_client(path, retries=10) as http:
        r = http.post("/v1/completions", json={"model": "stub", "prompt": "hi"})
    assert r.status_code == 503  # every endpoint tried once, the last answer returned
    assert counts(servers) == [1, 1, 1]


def test_an_inference_post_moves_on_after_a_broken_answer_before_the_first_byte(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))
    servers[1].mode = "garbage"  # answers with a line that is not HTTP, then closes
    with httpx_client(path) as http:
        statuses = [http.post("/v1/embeddings", json={"input": "x"}).status_code for _ in range(9)]
        assert servers[1].requests >= 1

        def three_uploads() -> None:
            for _ in range(3):  # one of them meets ep-1
                http.post("/v1/files", json={})

        with pytest.raises(httpx.RemoteProtocolError):  # not an inference path: not resent
            three_uploads()
    assert statuses == [200] * 9


async def test_the_async_transport_moves_inference_posts_on_503(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))
    servers[2].mode = "unavailable"
    async with async_httpx_client(path) as http:
        answers = [await http.post("/v1/chat/completions", json=CHAT) for _ in range(9)]
    assert [r.status_code for r in answers] == [200] * 9
    assert servers[2].requests >= 1 and {r.headers[ENDPOINT_HEADER] for r in answers} == {"ep-0", "ep-1"}


def test_the_openai_client_gets_a_completion_through_a_pool_where_one_backend_answers_503(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))
    servers[1].mode = "unavailable"
    client = openai.OpenAI(base_url="http://pool/v1", api_key="unused", http_client=httpx_client(path), max_retries=0)
    replies = [
        client.chat.completions.with_raw_response.create(model="stub", messages=CHAT["messages"]) for _ in range(6)
    ]
    assert {r.headers[ENDPOINT_HEADER] for r in replies} == {"ep-0", "ep-2"}
    assert {r.parse().choices[0].message.content for r in replies} == {"hello from ep-0", "hello from ep-2"}
    assert servers[1].requests >= 1
    client.close()


async def test_the_async_openai_client_gets_a_completion_through_a_pool_where_one_backend_answers_503(
    servers, tmp_path
):
    path = tmp_path / "routing.json"
    write(path, table(servers, failure_threshold=100))
    servers[0].mode = "unavailable"
    client = openai.AsyncOpenAI(
        base_url="http://pool/v1", api_key="unused", http_client=async_httpx_client(path), max_retries=0
    )
    for _ in range(6):
        reply = await client.chat.completions.create(model="stub", messages=CHAT["messages"])
        assert reply.choices[0].message.content in {"hello from ep-1", "hello from ep-2"}
    assert servers[0].requests >= 1
    await client.close()


def test_no_eligible_endpoint_is_an_httpx_transport_error_and_openai_a_connection_error(servers, tmp_path):
    path = tmp_path / "routing.json"
    write(path, table(servers, eligible=set()))
    with httpx_client(path) as http, pytest.raises(httpx.TransportError) as caught:
        http.get("/v1/models")
    assert isinstance(caught.value, NoEndpointError) and isinstance(caught.value, ClusterPoolError)
    assert caught.value.request.url.path == "/v1/models"  # httpx attached the request
    client = openai.OpenAI(base_url="http://pool/v1", api_key="unused", http_client=httpx_client(path), max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="stub", messages=CHAT["messages"])
    client.close()
    assert counts(servers) == [0, 0, 0]


class _CutShort(socketserver.BaseRequestHandler):
    """Sends the status line, headers and part of the body it promised, then closes."""

    def handle(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.request.recv(65536)
        self.request.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n{"id"')


def test_once_the_answer_has_begun_an_inference_post_is_not_resent(servers, tmp_path):
    cut = socketserver.ThreadingTCPServer(("127.0.1.9", 0), _CutShort)
    cut.requests = 0  # type: ignore[attr-defined]
    threading.Thread(target=cut.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        backends = [servers[0], SimpleNamespace(host="127.0.1.9", port=cut.server_address[1])]
        path = tmp_path / "routing.json"
        write(path, table(backends, failure_threshold=100))
        with httpx_client(path) as http:
            results = []
            for _ in range(4):
                try:
                    results.append(http.post("/v1/chat/completions", json=CHAT).headers[ENDPOINT_HEADER])
                except httpx.RemoteProtocolError:
                    results.append("broken")
    finally:
        cut.shutdown()
        cut.server_close()
    assert sorted(results) == ["broken", "broken", "ep-0", "ep-0"]  # the break reached the caller
    assert cut.requests == 2 and servers[0].requests == 2  # and nothing was sent again
