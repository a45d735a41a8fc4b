"""Consul discovery against a real `consul agent -dev` (built from the Go module proxy by
scripts/consul.py): registrations, check states and an outage reach the pool."""

import httpx
import pytest

import consul as consul_script
import controlplane
from backends import free_port
from conftest import wait_for

PROMPT = 5  # changes reach the pool promptly (blocking queries); measured by a benchmark


@pytest.fixture(scope="module")
def consul_agent(tmp_path_factory):
    certs = tmp_path_factory.mktemp("consul-certs")
    controlplane.make_certs(certs)  # a CA and a serving certificate for 127.0.0.1
    tls = (str(certs / "apiserver.crt"), str(certs / "apiserver.key"), str(certs / "ca.crt"))
    agent = consul_script.up(tmp_path_factory.mktemp("consul"), http_port=free_port(), tls=tls)
    agent.ca_pem = (certs / "ca.crt").read_text()
    yield agent
    consul_script.down(agent)


class Consul:
    def __init__(self, http):
        self.http = http

    def register(self, sid, backend, status="passing"):
        r = httpx.put(
            f"{self.http}/v1/agent/service/register",
            json={
                "ID": sid,
                "Name": "vllm",
                "Address": backend.host,
                "Port": backend.port,
                "Tags": ["gpu"],
                "Check": {"CheckID": f"{sid}-ttl", "TTL": "10m", "Status": status},
            },
        )
        r.raise_for_status()

    def check(self, sid, status):
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        httpx.put(f"{self.http}/v1/agent/check/{verb}/{sid}-ttl").raise_for_status()

    def deregister(self, sid):
        httpx.put(f"{self.http}/v1/agent/service/deregister/{sid}").raise_for_status()


def spec(agent, **extra):
    return {
        "discovery": {
            "consul": {"address": agent.http, "service": "vllm", "tags": ["gpu"], "waitSeconds": 30, **extra}
        },
        "healthCheck": {"intervalSeconds": 30, "timeoutSeconds": 1, "http": {}},
    }


def test_consul_registrations_and_check_states_reach_the_pool(pools, http_backends, consul_agent):
    c = Consul(consul_agent.http)
    backends = http_backends(3)
    for i, b in enumerate(backends[:2]):
        c.register(f"vllm-{i}", b)
    pools.create("p", spec(consul_agent))
    status = pools.wait_ready("p", healthy=2)
    assert status["source"] == "Consul" and pools.condition("p", "DiscoveryDegraded")["status"] == "False"

    c.register("vllm-2", backends[2])
    pools.wait_ready("p", healthy=3, timeout=PROMPT)
    c.check("vllm-1", "warning")
    wait_for(lambda: pools.endpoint("p", "vllm-1").get("sourceState") == "Warning", PROMPT, "vllm-1 Warning")
    assert pools.endpoint("p", "vllm-1")["eligible"] is True
    c.check("vllm-1", "critical")
    wait_for(lambda: pools.endpoint("p", "vllm-1").get("sourceState") == "NotReady", PROMPT, "vllm-1 NotReady")
    assert pools.endpoint("p", "vllm-1")["eligible"] is False
    c.deregister("vllm-0")
    wait_for(lambda: "vllm-0" not in [e["name"] for e in pools.status("p").get("endpoints", [])], PROMPT, "vllm-0 gone")
    for sid in ("vllm-1", "vllm-2"):
        c.deregister(sid)


def test_a_consul_outage_keeps_the_last_membership_then_recovers(pools, http_backends, tmp_path):
    port = free_port()
    agent = consul_script.up(tmp_path / "a", http_port=port)
    try:
        c = Consul(agent.http)
        backends = http_backends(2)
        for i, b in enumerate(backends):
            c.register(f"vllm-{i}", b)
        pools.create("p", spec(agent))
        pools.wait_ready("p", healthy=2)
        consul_script.down(agent)
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "True", 15, "DiscoveryDegraded")
        assert pools.status("p")["total"] == 2 and pools.condition("p", "Ready")["status"] == "True"
        wait_for(lambda: pools.events("p", "DiscoveryDegraded"), 5, "a DiscoveryDegraded Event")
        agent = consul_script.up(tmp_path / "b", http_port=port)  # a new agent: its catalog starts empty
        Consul(agent.http).register("vllm-0", backends[0])
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "False", 40, "recovery")
        wait_for(lambda: pools.status("p").get("total") == 1, PROMPT, "the new catalog followed")
        wait_for(lambda: pools.events("p", "DiscoveryRecovered"), 5, "a DiscoveryRecovered Event")
    finally:
        consul_script.down(agent)


def consul_health(agent, service):
    r = httpx.get(f"{agent.http}/v1/health/service/{service}")
    r.raise_for_status()
    return {e["Service"]["Meta"]["clusterpool-endpoint"]: e["Checks"][-1]["Status"] for e in r.json()}


def test_publish_consul_registers_health_correct_entries_and_removes_them(pools, http_backends, consul_agent):
    backends = http_backends(2)
    pools.create(
        "pub",
        {
            "discovery": {
                "static": {
                    "endpoints": [
                        {"name": f"ep-{i}", "address": b.host, "port": b.port} for i, b in enumerate(backends)
                    ]
                }
            },
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
            "publish": {"consul": {"address": consul_agent.http, "service": "llm-pool", "tags": ["clusterpool"]}},
        },
    )
    pools.wait_ready("pub", healthy=2)
    wait_for(
        lambda: consul_health(consul_agent, "llm-pool") == {"ep-0": "passing", "ep-1": "passing"},
        10,
        "both passing in Consul",
    )
    # the sink's answer reaches the status on the wake-up it causes
    wait_for(lambda: pools.condition("pub", "PublishedToConsul").get("status") == "True", 5, "PublishedToConsul")
    backends[1].stop()  # our probes see it die; Consul must say so too (not "always passing")
    wait_for(lambda: consul_health(consul_agent, "llm-pool").get("ep-1") == "critical", 10, "ep-1 critical in Consul")
    assert consul_health(consul_agent, "llm-pool")["ep-0"] == "passing"
    pools.delete("pub")
    wait_for(lambda: pools.get("pub") is None, 15, "the pool deleted")
    assert consul_health(consul_agent, "llm-pool") == {}


def test_https_with_a_ca_from_a_secret(pools, http_backends, consul_agent):
    c = Consul(consul_agent.http)
    backends = http_backends(1)
    c.register("tls-0", backends[0])
    pools.core.create_namespaced_secret(
        pools.namespace, {"metadata": {"name": "consul-ca"}, "stringData": {"ca.crt": consul_agent.ca_pem}}
    )
    https = {"address": consul_agent.https}
    pools.create("trusted", spec(consul_agent, **https, caSecretRef={"name": "consul-ca", "key": "ca.crt"}))
    pools.create("untrusted", spec(consul_agent, **https))
    pools.create("missing", spec(consul_agent, **https, caSecretRef={"name": "nope", "key": "ca.crt"}))
    wait_for(lambda: pools.status("trusted").get("total") == 1, 20, "the trusted pool to read Consul over https")
    for name, text in (("untrusted", "CERTIFICATE_VERIFY_FAILED"), ("missing", "named by caSecretRef")):
        cond = wait_for(
            lambda n=name: (c := pools.condition(n, "DiscoveryDegraded")).get("status") == "True" and c,
            20,
            f"{name}: DiscoveryDegraded",
        )
        assert text in cond["message"], cond
    c.deregister("tls-0")
