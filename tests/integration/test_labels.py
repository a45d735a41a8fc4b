"""Endpoint labels and capacity end to end: declared on a static pool, taken from Consul
Meta (a real `consul agent -dev`) and from EndpointSlices (the real apiserver), through
the operator into the status and the routing ConfigMap, and followed by the SDK against
real HTTP backends."""

import importlib.util
import json
import threading

import httpx
import kubernetes
import openai
import pytest
from test_consul import consul_agent  # noqa: F401  (the module's real agent, shared)
from test_discovery import make_slice

from backends import HTTPBackend, free_port
from clusterpool.client import CapacityError, ConfigMapTable, FileTable, PoolClient, PoolTransport
from conftest import ROOT, endpoints_of, labelled_table, wait_for

PROMPT = 5


def labelled(backends, models, capacities):
    eps = endpoints_of(backends)
    for ep, model, cap in zip(eps, models, capacities, strict=True):
        ep["labels"] = {"model": model, "example.com/tier": "gpu"}
        if cap is not None:
            ep["capacity"] = cap
    return eps


def test_static_labels_reach_status_configmap_and_the_sdk_selects_by_them(pools, http_backends, k8s):
    backends = http_backends(3)
    pools.create(
        "p",
        {
            "discovery": {"static": {"endpoints": labelled(backends, ["llama", "llama", "qwen"], [None, None, 1])}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},  # backends count only ours
        },
    )
    status = pools.wait_ready("p", healthy=3)
    by_name = {e["name"]: e for e in status["endpoints"]}
    assert by_name["ep-0"]["labels"] == {"model": "llama", "example.com/tier": "gpu"}
    assert "capacity" not in by_name["ep-0"] and by_name["ep-2"]["capacity"] == 1
    wait_for(lambda: pools.condition("p", "Published").get("status") == "True", 10, "the routing table published")
    pool = PoolClient(ConfigMapTable(pools.namespace, "p", api_client=k8s))
    try:
        assert {t.name: (dict(t.labels), t.capacity) for t in pool.balancer.targets}["ep-2"] == (
            {"model": "qwen", "example.com/tier": "gpu"},
            1,
        )
        with httpx.Client(transport=PoolTransport(pool), base_url="http://pool") as http:
            for _ in range(20):
                assert http.get("/", headers={"X-ClusterPool-Selector": "model=llama"}).status_code == 200
        assert backends[0].requests + backends[1].requests == 20 and backends[2].requests == 0
        assert backends[0].requests > 0 and backends[1].requests > 0

        # A relabel in the spec reaches the client through the ConfigMap.
        eps = labelled(backends, ["llama", "qwen", "qwen"], [None, None, 1])
        pools.patch_spec("p", {"discovery": {"static": {"endpoints": eps}}})
        wait_for(
            lambda: {t.name for t in pool.balancer_for({"model": "qwen"}).targets} == {"ep-1", "ep-2"},
            10,
            "the relabelled endpoint in the client's qwen subset",
        )
    finally:
        pool.close()


def test_capacity_from_the_spec_bounds_requests_in_flight_to_a_real_backend(pools, http_backends, k8s):
    backends = http_backends(1)
    pools.create(
        "p",
        {
            "discovery": {"static": {"endpoints": labelled(backends, ["llama"], [1])}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},
        },
    )
    pools.wait_ready("p", healthy=1)
    wait_for(lambda: pools.condition("p", "Published").get("status") == "True", 10, "the routing table published")
    pool = PoolClient(ConfigMapTable(pools.namespace, "p", api_client=k8s))
    try:
        backends[0].mode = "hang"  # the first request holds the only place until released
        http = httpx.Client(transport=PoolTransport(pool), base_url="http://pool", timeout=30)
        first = threading.Thread(target=lambda: http.get("/"))
        first.start()
        wait_for(lambda: backends[0].requests == 1, 5, "the first request at the backend")
        with pytest.raises(CapacityError, match="every eligible endpoint is at its capacity"):
            http.get("/")  # fails fast (the client's default), without reaching the backend
        assert backends[0].requests == 1
        pool.capacity_wait = 30.0  # the caller chooses to wait instead
        answers: list[int] = []
        second = threading.Thread(target=lambda: answers.append(http.get("/").status_code))
        second.start()
        second.join(0.5)
        assert second.is_alive() and backends[0].requests == 1  # waiting for room, not sent
        backends[0].release.set()
        first.join(10)
        second.join(10)
        assert answers == [200] and backends[0].requests == 2
        http.close()
    finally:
        pool.close()


def test_consul_meta_becomes_labels_and_capacity(pools, http_backends, consul_agent):  # noqa: F811
    backends = http_backends(2)
    for i, (b, meta) in enumerate(zip(backends, [{"model": "llama", "capacity": "4"}, {"model": "qwen"}], strict=True)):
        httpx.put(
            f"{consul_agent.http}/v1/agent/service/register",
            json={
                "ID": f"lab-{i}",
                "Name": "labelled",
                "Address": b.host,
                "Port": b.port,
                "Tags": ["zone=b", "gpu"],
                "Meta": meta,
            },
        ).raise_for_status()
    try:
        pools.create(
            "p",
            {
                "discovery": {"consul": {"address": consul_agent.http, "service": "labelled", "waitSeconds": 30}},
                "healthCheck": {"intervalSeconds": 30, "timeoutSeconds": 1, "http": {}},
            },
        )
        pools.wait_ready("p", healthy=2)
        assert pools.endpoint("p", "lab-0")["labels"] == {"model": "llama", "zone": "b"}
        assert pools.endpoint("p", "lab-0")["capacity"] == 4
        assert pools.endpoint("p", "lab-1")["labels"] == {"model": "qwen", "zone": "b"}
        assert "capacity" not in pools.endpoint("p", "lab-1")

        # A Meta change in Consul reaches the pool through the blocking query.
        httpx.put(
            f"{consul_agent.http}/v1/agent/service/register",
            json={
                "ID": "lab-1",
                "Name": "labelled",
                "Address": backends[1].host,
                "Port": backends[1].port,
                "Meta": {"model": "qwen", "capacity": "2"},
            },
        ).raise_for_status()
        wait_for(lambda: pools.endpoint("p", "lab-1").get("capacity") == 2, PROMPT, "lab-1's new capacity")
        assert pools.endpoint("p", "lab-1")["labels"] == {"model": "qwen"}
    finally:
        for i in range(2):
            httpx.put(f"{consul_agent.http}/v1/agent/service/deregister/lab-{i}").raise_for_status()


def test_endpointslice_labels_and_zones_reach_the_status(pools, net_backends, k8s):
    disc = kubernetes.client.DiscoveryV1Api(k8s)
    backends = net_backends(2)
    s = make_slice(
        "vllm-a",
        "vllm",
        backends,
        labels={"kubernetes.io/service-name": "vllm", "model": "llama", "clusterpool.dev/capacity": "6"},
    )
    s["endpoints"][0]["zone"] = "zone-a"
    s["endpoints"][0]["nodeName"] = "node-1"
    disc.create_namespaced_endpoint_slice(pools.namespace, s)
    pools.create(
        "p",
        {
            "discovery": {"kubernetes": {"service": "vllm"}},
            "healthCheck": {"intervalSeconds": 30, "timeoutSeconds": 1, "http": {}},
        },
    )
    pools.wait_ready("p", healthy=2)
    assert pools.endpoint("p", "vllm-0")["labels"] == {
        "model": "llama",
        "topology.kubernetes.io/zone": "zone-a",
        "clusterpool.dev/node": "node-1",
    }
    assert pools.endpoint("p", "vllm-0")["capacity"] == 6
    assert pools.endpoint("p", "vllm-1")["labels"] == {"model": "llama"}


def test_the_models_by_label_example_sends_each_model_to_its_endpoints(tmp_path):
    spec = importlib.util.spec_from_file_location("models_by_label", ROOT / "examples" / "models_by_label.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    port = free_port()
    servers = [HTTPBackend(f"127.0.2.{i + 1}", port, name=f"s{i}").start() for i in range(3)]
    try:
        models = ["llama-3-8b", "org_qwen-2", "llama-3-8b"]
        table = labelled_table(servers, models)
        (tmp_path / "routing.json").write_text(json.dumps(table))
        pool = PoolClient(FileTable(tmp_path / "routing.json"))
        client = openai.OpenAI(
            base_url="http://pool/v1",
            api_key="x",
            max_retries=0,
            http_client=httpx.Client(transport=PoolTransport(pool, selector=example.by_model)),
        )
        for _ in range(4):
            client.chat.completions.create(model="org/qwen-2", messages=[{"role": "user", "content": "hi"}])
        assert [s.requests for s in servers] == [0, 4, 0]
        for _ in range(4):
            client.chat.completions.create(model="llama-3-8b", messages=[{"role": "user", "content": "hi"}])
        assert [s.requests for s in servers] == [2, 4, 2]
    finally:
        for s in servers:
            s.stop()
