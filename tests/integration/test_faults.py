"""Faults: the API server goes away while pools run. The operator keeps probing with what
it last knew, does not exit, and catches up once the API server is back."""

import time
from pathlib import Path

import kubernetes

import controlplane
from conftest import endpoints_of, wait_for


def test_an_apiserver_outage_is_survived(cluster, pools, http_backends, net_backends, operator, k8s):
    # a pool that discovers through the API server too: its membership must survive
    discovered = net_backends(1)
    kubernetes.client.DiscoveryV1Api(k8s).create_namespaced_endpoint_slice(
        pools.namespace,
        {
            "metadata": {"name": "svc-a", "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4",
            "ports": [{"port": discovered[0].port}],
            "endpoints": [{"addresses": [discovered[0].host]}],
        },
    )
    pools.create(
        "k",
        {
            "discovery": {"kubernetes": {"service": "svc"}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}},
        },
    )
    pools.wait_ready("k", healthy=1)
    backends = http_backends(2)
    pools.create(
        "p",
        {
            "discovery": {"static": {"endpoints": endpoints_of(backends)}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
            "failover": {"circuitBreaker": {"openSeconds": 60}},
        },
    )
    pools.wait_ready("p", healthy=2)
    controlplane.stop_apiserver(Path(cluster.state_dir))
    try:
        backends[1].stop()  # happens while nobody can write it down
        time.sleep(10)
        assert operator.proc is not None and operator.proc.poll() is None, "the operator exited during the outage"
    finally:
        controlplane.start_apiserver(Path(cluster.state_dir))
    # the operator reconnects by itself and reports what happened meanwhile
    wait_for(lambda: pools.endpoint("p", "ep-1").get("breaker") == "Open", 30, "ep-1 ejected after the outage")
    assert pools.status("p")["healthy"] == 1
    assert operator.proc.poll() is None
    # the outage is on record, and discovered membership survived it
    wait_for(
        lambda: pools.condition("k", "DiscoveryDegraded").get("reason") == "RecoveredFromOutage",
        30,
        "the outage recorded on the discovering pool",
    )
    assert "unreachable for" in pools.condition("k", "DiscoveryDegraded")["message"]
    assert pools.status("k")["total"] == 1 and pools.status("k")["healthy"] == 1
    wait_for(lambda: pools.events("p", "APIServerReachable"), 30, "an APIServerReachable Event")
    # and keeps following changes
    backends[0].stop()
    wait_for(lambda: pools.condition("p", "Ready").get("status") == "False", 15, "Ready=False after another death")
