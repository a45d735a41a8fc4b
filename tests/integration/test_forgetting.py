"""Memory comes back when pools go away: once its pools are deleted, the operator keeps
no state for them (read from its own count, clusterpool_operator_remembered{holder})."""

from conftest import endpoints_of, wait_for


def remembered(operator):
    return {labels["holder"]: value for labels, value in operator.samples("clusterpool_operator_remembered")}


def test_deleted_pools_leave_no_state_in_the_operator(pools, http_backends, operator):
    backends = http_backends(3)
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
        "failover": {"maxEjectionPercent": 100, "panicThresholdPercent": 0},
    }
    names = [f"fg{i}" for i in range(6)]
    for name in names:
        pools.create(name, spec)
    for name in names:
        pools.wait_ready(name, 3)
    backends[0].stop()  # Events, ejections and more status writes: state in every holder
    for name in names:
        wait_for(lambda n=name: pools.endpoint(n, "ep-0").get("health") == "Unhealthy", 20, f"{name}: ep-0 down")
    during = remembered(operator)
    for holder in ("runners", "status_writer", "publisher", "events", "pool_series"):
        assert during.get(holder, 0) >= len(names), (holder, during)

    for name in names:
        pools.delete(name)
    wait_for(lambda: not pools.names(), 60, "every pool gone (finalizers released)")
    wait_for(lambda: not any(remembered(operator).values()), 20, "the operator to forget every deleted pool")
    assert set(remembered(operator)) >= {"runners", "status_writer", "publisher", "events", "write_queue"}
