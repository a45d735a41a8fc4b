"""Faults: the API server goes away while pools run. The operator keeps probing with what
it last knew, does not exit, and catches up once the API server is back."""

import time
from pathlib import Path

import controlplane
from conftest import endpoints_of, wait_for


def test_an_apiserver_outage_is_survived(cluster, pools, http_backends, operator):
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
    # and keeps following changes
    backends[0].stop()
    wait_for(lambda: pools.condition("p", "Ready").get("status") == "False", 15, "Ready=False after another death")
