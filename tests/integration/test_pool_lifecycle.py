"""A ClusterPool against the real apiserver, the operator process and real backends."""

import time

from conftest import endpoints_of, wait_for

INTERVAL, TIMEOUT, HEALTHY_T, UNHEALTHY_T, JITTER = 2, 1, 2, 2, 10
HTTP_CHECK = {
    "intervalSeconds": INTERVAL,
    "timeoutSeconds": TIMEOUT,
    "healthyThreshold": HEALTHY_T,
    "unhealthyThreshold": UNHEALTHY_T,
    "intervalJitterPercent": JITTER,
    "http": {"path": "/health"},
}
# Worst case to notice a change: threshold probes, each interval stretched by the jitter,
# plus one interval of phase and a margin for the status write and the watch.
MARGIN = 3.0


def detect_bound(threshold: int) -> float:
    return (threshold + 1) * INTERVAL * (1 + JITTER / 100) + MARGIN


OPEN_SECONDS = 2  # a short ejection, so a returning backend is back in within seconds
FAILOVER = {"circuitBreaker": {"openSeconds": OPEN_SECONDS, "successThreshold": 1}}


def static(backends, check=HTTP_CHECK, **extra):
    return {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": check,
        "failover": FAILOVER,
        **extra,
    }


def test_pool_of_three_becomes_ready_then_follows_a_backend_dying_and_returning(pools, http_backends):
    backends = http_backends(3)
    pools.create("p", static(backends))
    status = pools.wait_ready("p", healthy=3)
    assert status["total"] == 3 and status["source"] == "Static"
    assert [e["health"] for e in status["endpoints"]] == ["Healthy"] * 3
    assert pools.condition("p", "Degraded")["status"] == "False"

    backends[1].stop()
    killed = time.monotonic()
    wait_for(
        lambda: pools.endpoint("p", "ep-1").get("health") == "Unhealthy",
        detect_bound(UNHEALTHY_T),
        "ep-1 to turn Unhealthy",
    )
    took = time.monotonic() - killed
    assert took <= detect_bound(UNHEALTHY_T)
    status = pools.status("p")
    assert (status["healthy"], status["total"]) == (2, 3)
    assert pools.condition("p", "Ready")["status"] == "True"
    assert pools.condition("p", "Ready")["message"] == "2 of 3 endpoints healthy"
    degraded = pools.condition("p", "Degraded")
    assert degraded["status"] == "True" and "ep-1" in degraded["message"]
    ep1 = pools.endpoint("p", "ep-1")
    assert ep1["reason"] == "ConnectionRefused" and backends[1].host in ep1["message"]
    unhealthy_events = wait_for(lambda: pools.events("p", "EndpointUnhealthy"), 5, "an EndpointUnhealthy Event")
    assert len(unhealthy_events) == 1 and "ep-1" in unhealthy_events[0].message
    assert unhealthy_events[0].type == "Warning"

    backends[1].start()
    wait_for(
        lambda: pools.endpoint("p", "ep-1").get("health") == "Healthy",
        detect_bound(HEALTHY_T),
        "ep-1 to turn Healthy again",
    )
    wait_for(
        lambda: pools.condition("p", "Degraded").get("status") == "False",
        OPEN_SECONDS + detect_bound(1),
        "Degraded to clear once the ejection is over",
    )
    assert pools.status("p")["healthy"] == 3
    recovered = wait_for(lambda: pools.events("p", "EndpointHealthy"), 5, "an EndpointHealthy Event for ep-1")
    # one, for the recovery: the endpoints healthy from their first probe changed nothing
    assert [(e.count, "ep-1" in e.message, "passing probe" in e.message) for e in recovered] == [(1, True, True)]


def test_a_pool_with_no_healthy_endpoint_is_not_ready(pools, tcp_backends):
    backends = tcp_backends(2)
    check = {"intervalSeconds": INTERVAL, "timeoutSeconds": TIMEOUT, "unhealthyThreshold": 1, "tcp": {}}
    pools.create("p", static(backends, check))
    pools.wait_ready("p", healthy=2)
    for b in backends:
        b.stop()
    wait_for(lambda: pools.condition("p", "Ready").get("status") == "False", detect_bound(1), "Ready=False")
    ready = pools.condition("p", "Ready")
    assert ready["reason"] == "NoHealthyEndpoints" and ready["message"] == "0 of 2 endpoints healthy"
    assert pools.status("p")["healthy"] == 0
    wait_for(lambda: pools.events("p", "PoolNotReady"), 5, "a PoolNotReady Event")


def test_http_answers_that_are_not_healthy_mark_the_endpoint(pools, http_backends):
    ok, failing, hanging, garbage = http_backends(4)
    failing.mode, hanging.mode, garbage.mode = "fail", "hang", "garbage"
    pools.create("p", static([ok, failing, hanging, garbage]))
    wait_for(
        lambda: (
            pools.status("p").get("healthy") == 1
            and all(e["health"] != "Unknown" for e in pools.status("p")["endpoints"])
        ),
        15,
        "first probes",
    )
    reasons = {e["name"]: (e["health"], e["reason"]) for e in pools.status("p")["endpoints"]}
    assert reasons == {
        "ep-0": ("Healthy", "ProbeSucceeded"),
        "ep-1": ("Unhealthy", "UnexpectedStatus"),
        "ep-2": ("Unhealthy", "Timeout"),
        "ep-3": ("Unhealthy", "ProtocolError"),
    }
    assert "HTTP 500" in pools.endpoint("p", "ep-1")["message"]


def test_kubectl_get_clusterpools_prints_the_columns(pools, http_backends, kubectl):
    spec = static(http_backends(3), strategy="LeastConnections")
    spec["models"] = ["m-shown", "m-too"]
    pools.create("shown", spec)
    pools.wait_ready("shown", healthy=3)
    out = kubectl("get", "clusterpools", "-n", pools.namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "HEALTHY", "TOTAL", "EJECTED", "STRATEGY", "SOURCE", "AGE"]
    assert out[1].split()[:7] == ["shown", "True", "3", "3", "0", "LeastConnections", "Static"]
    wide = kubectl("get", "clusterpools", "-n", pools.namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-7:] == ["TIER", "PANIC", "CACHE", "DRIVEN-BY", "MODELS", "WAITING", "LOAD-READ"]
    wait_for(lambda: pools.get("shown")["status"].get("models") == ["m-shown", "m-too"], 15, "status.models")
    wide = kubectl("get", "clusterpools", "-n", pools.namespace, "-o", "wide").stdout.splitlines()
    # CACHE stays empty without spec.cache; MODELS lists what the pool serves (kubectl prints the list as JSON);
    # WAITING and LOAD-READ stay empty without spec.engine (kubectl prints nothing for them)
    assert wide[1].split()[-4:] == ["0", "false", "test-operator", '["m-shown","m-too"]']
    # the short name and the category reach the same objects
    assert "shown" in kubectl("get", "cpool", "-n", pools.namespace).stdout
    assert "shown" in kubectl("get", "llm", "-n", pools.namespace).stdout
    described = kubectl("describe", "clusterpool", "shown", "-n", pools.namespace).stdout
    assert "EndpointsAvailable" in described and "PoolReady" in described


def test_deleting_a_pool_completes(pools, http_backends):
    pools.create("gone", static(http_backends(1)))
    pools.wait_ready("gone", healthy=1)
    assert pools.get("gone")["metadata"]["finalizers"] == ["clusterpool.dev/finalizer"]
    pools.delete("gone")
    wait_for(lambda: pools.get("gone") is None, 15, "the pool to be deleted (finalizer released)")


def test_a_spec_change_applies_at_once_not_after_the_interval(pools, http_backends, operator):
    mark = operator.log_mark()
    a, b, c = http_backends(3)
    slow = {"intervalSeconds": 60, "timeoutSeconds": 1, "tcp": {}}
    pools.create("p", static([a, b], slow))
    pools.wait_ready("p", healthy=2)
    pools.patch_spec("p", static([a, b, c], slow))
    changed = time.monotonic()
    pools.wait_ready("p", healthy=3, timeout=15)
    assert time.monotonic() - changed < 15 < 60
    assert pools.status("p")["observedGeneration"] == pools.get("p")["metadata"]["generation"]
    # kopf stores no last-handled configuration (a write per pool and replica): the wake-up
    # above came from the operator's own event handler
    assert "clusterpool.dev/last-handled-configuration" not in (pools.get("p")["metadata"].get("annotations") or {})
    # and that handler runs (and is logged) for the spec change, not for each status write
    handled = f"[{pools.namespace}/p] Handler 'spec-changed'"
    calls = operator.log_since(mark).count(handled)
    assert 1 <= calls <= 2, calls
    # nor for the deletion (setting deletionTimestamp moves the generation too)
    mark = operator.log_mark()
    pools.delete("p")
    wait_for(lambda: pools.get("p") is None, 15, "the pool to be deleted (finalizer released)")
    assert handled not in operator.log_since(mark)


def test_status_endpoints_are_one_entry_in_managed_fields(pools, http_backends):
    """status.endpoints is written whole (an atomic list): managedFields name the list, not
    every field of every endpoint, so each copy of a pool (every watcher's) stays small."""
    pools.create("m", static(http_backends(3)))
    pools.wait_ready("m", healthy=3)
    entries = [m for m in pools.get("m")["metadata"]["managedFields"] if m.get("subresource") == "status"]
    assert entries
    for entry in entries:
        assert entry["fieldsV1"]["f:status"]["f:endpoints"] == {}, entry["fieldsV1"]["f:status"]["f:endpoints"]


def test_status_holds_nothing_that_changes_while_health_does_not(pools, http_backends):
    # (An identical patch does not bump resourceVersion, so this guards the content of
    # status; that the operator skips identical writes is tested in test_runner.py.)
    backends = http_backends(2)
    pools.create("p", static(backends))
    pools.wait_ready("p", healthy=2)
    wait_for(lambda: pools.condition("p", "Published").get("status") == "True", 15, "the pool's objects published")
    version = pools.get("p")["metadata"]["resourceVersion"]
    probed = [b.requests for b in backends]
    wait_for(  # three probe rounds, all passing, seen by the backends (an operator that hangs fails here)
        lambda: all(b.requests >= n + 3 for b, n in zip(backends, probed, strict=True)),
        3 * detect_bound(0),
        "three more probes of each backend",
    )
    assert pools.get("p")["metadata"]["resourceVersion"] == version


def published_versions(pools):
    svc = pools.core.read_namespaced_service("p", pools.namespace)
    cm = pools.core.read_namespaced_config_map("p-routing", pools.namespace)
    return svc.metadata.resource_version, cm.metadata.resource_version


def test_an_operator_restart_keeps_health_and_emits_nothing_new(pools, http_backends, operator):
    backends = http_backends(3)
    # a long ejection: nothing may move while the operator restarts
    pools.create("p", static(backends, failover={"circuitBreaker": {"openSeconds": 60, "successThreshold": 1}}))
    pools.wait_ready("p", healthy=3)
    backends[2].stop()
    wait_for(lambda: pools.endpoint("p", "ep-2").get("health") == "Unhealthy", detect_bound(UNHEALTHY_T), "ep-2 down")
    wait_for(lambda: pools.events("p", "EndpointEjected"), 5, "the ejection's Event")
    time.sleep(1)
    before = pools.status("p")
    events_before = len(pools.events("p"))
    published_before = published_versions(pools)

    operator.restart(kill=True)  # killed, as a crash or an eviction would
    time.sleep(3 * INTERVAL * (1 + JITTER / 100))
    after = pools.status("p")
    assert after["endpoints"] == before["endpoints"]
    assert after["conditions"] == before["conditions"]
    assert len(pools.events("p")) == events_before
    # what it published is stored as it would publish it: kept, not applied again
    assert published_versions(pools) == published_before
    found = {labels["state"]: value for labels, value in operator.samples("clusterpool_published_objects_found_total")}
    assert found["as_applied"] >= 2  # the Service and the routing ConfigMap (of this pool or others)
    # and it still follows changes
    backends[2].start()
    wait_for(lambda: pools.endpoint("p", "ep-2").get("health") == "Healthy", detect_bound(HEALTHY_T), "ep-2 back")


def test_a_slow_endpoint_is_degraded_but_keeps_serving(pools, http_backends):
    backends = http_backends(2)
    check = {**HTTP_CHECK, "degradedLatencyMilliseconds": 200}
    pools.create("p", static(backends, check))
    pools.wait_ready("p", healthy=2)
    backends[0].mode, backends[0].delay = "slow", 0.5
    wait_for(
        lambda: pools.endpoint("p", "ep-0").get("health") == "Degraded", detect_bound(UNHEALTHY_T), "ep-0 Degraded"
    )
    ep0 = pools.endpoint("p", "ep-0")
    assert ep0["eligible"] is True and ep0["reason"] == "SlowAnswer"
    wait_for(lambda: pools.condition("p", "Degraded").get("reason") == "EndpointsSlow", 5, "Degraded=EndpointsSlow")
    assert pools.status("p")["healthy"] == 2
    wait_for(lambda: pools.events("p", "EndpointDegraded"), 5, "an EndpointDegraded Event")
    backends[0].mode = "ok"
    wait_for(lambda: pools.endpoint("p", "ep-0").get("health") == "Healthy", detect_bound(HEALTHY_T), "ep-0 Healthy")


def test_a_composite_check_ejects_when_a_required_check_fails(pools, http_backends, tcp_backends):
    backends = http_backends(2)
    sidecar = tcp_backends(1)[0]
    check = {
        "intervalSeconds": INTERVAL,
        "timeoutSeconds": TIMEOUT,
        "unhealthyThreshold": 1,
        "composite": {
            "mode": "All",
            "checks": [
                {"name": "api", "http": {"path": "/health", "expectedStatuses": ["200"]}},
                {"name": "sidecar", "tcp": {"port": sidecar.port}},
            ],
        },
    }
    # the sidecar listens on one endpoint's address only: the other fails its composite
    spec = static(backends, check)
    spec["discovery"]["static"]["endpoints"][0]["address"] = sidecar.host
    backends[0].stop()
    backends[0].host = sidecar.host
    backends[0].start()
    pools.create("p", spec)
    wait_for(lambda: pools.endpoint("p", "ep-1").get("health") == "Unhealthy", detect_bound(1), "ep-1 Unhealthy")
    # results are written as they arrive: ep-0's may land after ep-1's
    wait_for(lambda: pools.endpoint("p", "ep-0").get("health") != "Unknown", detect_bound(1), "ep-0 probed")
    assert pools.endpoint("p", "ep-0")["health"] == "Healthy"
    ep1 = pools.endpoint("p", "ep-1")
    assert ep1["reason"] == "ChecksFailed" and "sidecar: TCP connect" in ep1["message"]


def test_new_pools_get_their_first_status_without_a_refused_write(pools, http_backends, operator):
    def status_conflicts():
        samples = operator.samples("clusterpool_kubernetes_write_conflicts_total")
        return sum(value for labels, value in samples if labels["object"] == "status")

    before = status_conflicts()
    backends = http_backends(2)
    names = [f"n{i}" for i in range(6)]
    for name in names:
        pools.create(name, static(backends))
    for name in names:
        pools.wait_ready(name, healthy=2)
    # kopf's finalizer patch came first, so the first status write named the version after it
    assert status_conflicts() == before
