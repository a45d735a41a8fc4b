"""Failover against the real apiserver, the operator process and real backends: ejection
and recovery through the breaker, panic, tiers, the ejection limit, restarts, and what the
pool publishes (Service, EndpointSlices of eligible endpoints, routing ConfigMap).

Kubernetes refuses loopback IPs in EndpointSlices, so these backends listen on test-host
addresses 198.18.0.x, which `make test` puts on the loopback interface of a network
namespace of its own (scripts/netns-run).
"""

import json

import kubernetes

from conftest import wait_for

INTERVAL = 2


def spec(backends, tiers=None, **failover):
    eps = [
        {"name": f"ep-{i}", "address": b.host, "port": b.port, "tier": (tiers or {}).get(i, 0)}
        for i, b in enumerate(backends)
    ]
    breaker = {"openSeconds": 3, "maxOpenSeconds": 30, "successThreshold": 1}
    breaker.update(failover.pop("circuitBreaker", {}))
    return {
        "discovery": {"static": {"endpoints": eps}},
        "healthCheck": {
            "intervalSeconds": INTERVAL,
            "timeoutSeconds": 1,
            "healthyThreshold": 1,
            "unhealthyThreshold": 1,
            "http": {},
        },
        "failover": {"circuitBreaker": breaker, "maxEjectionPercent": 100, "panicThresholdPercent": 0, **failover},
    }


class Published:
    def __init__(self, k8s, namespace, name):
        self.core = kubernetes.client.CoreV1Api(k8s)
        self.disc = kubernetes.client.DiscoveryV1Api(k8s)
        self.ns, self.name = namespace, name

    def addresses(self):
        items = self.disc.list_namespaced_endpoint_slice(
            self.ns, label_selector=f"kubernetes.io/service-name={self.name}"
        ).items
        return sorted(a for s in items for e in (s.endpoints or []) for a in e.addresses)

    def table(self):
        try:
            cm = self.core.read_namespaced_config_map(f"{self.name}-routing", self.ns)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(cm.data["routing.json"])

    def service(self):
        try:
            return self.core.read_namespaced_service(self.name, self.ns)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise


def reasons(pools, name):
    return [e.reason for e in pools.events(name)]


def wait_event(pools, name, *wanted, timeout=10):
    """Events are posted asynchronously and can trail the status: wait for them."""
    return wait_for(lambda: set(wanted) <= set(reasons(pools, name)), timeout, f"Events {wanted}")


def test_ejection_and_recovery_are_published_everywhere(pools, net_backends, k8s):
    backends = net_backends(3)
    hosts = sorted(b.host for b in backends)
    pools.create("p", spec(backends))
    pools.wait_ready("p", healthy=3)
    pub = Published(k8s, pools.namespace, "p")
    wait_for(lambda: pub.addresses() == hosts, 10, "3 endpoints in the EndpointSlices")
    svc = pub.service()
    uid = pools.get("p")["metadata"]["uid"]
    assert svc.spec.selector is None and svc.metadata.owner_references[0].uid == uid
    table = pub.table()
    assert table["schemaVersion"] == 1 and table["strategy"] == "RoundRobin"
    assert [e["eligible"] for e in table["endpoints"]] == [True, True, True]

    backends[1].stop()
    wait_for(
        lambda: pub.addresses() == sorted([backends[0].host, backends[2].host]),
        3 * INTERVAL + 3,
        "the dead endpoint to leave the EndpointSlices",
    )
    table = pub.table()
    ep1 = table["endpoints"][1]
    assert (ep1["eligible"], ep1["breaker"], ep1["effectiveWeight"]) == (False, "Open", 0)
    # slices are applied before status in each round: wait for the status to follow
    wait_for(
        lambda: (pools.status("p").get("ejected"), pools.status("p").get("eligible")) == (1, 2),
        5,
        "status: 1 ejected, 2 eligible",
    )
    assert pools.endpoint("p", "ep-1")["breaker"] == "Open"
    wait_event(pools, "p", "EndpointEjected")

    backends[1].start()
    wait_for(lambda: pub.addresses() == hosts, 3 + 3 * INTERVAL + 3, "the endpoint back after its ejection")
    wait_for(lambda: pools.endpoint("p", "ep-1").get("breaker") == "Closed", 5, "status: ep-1 breaker Closed")
    wait_event(pools, "p", "EndpointHalfOpen", "EndpointRecovered")
    assert pub.table()["endpoints"][1]["eligible"] is True

    pools.delete("p")
    wait_for(
        lambda: pub.service() is None and pub.table() is None and pub.addresses() == [],
        15,
        "Service, EndpointSlices and ConfigMap deleted with the pool",
    )


def test_a_failed_trial_ejects_again_for_longer(pools, net_backends):
    backends = net_backends(2)
    pools.create("p", spec(backends))
    pools.wait_ready("p", healthy=2)
    backends[0].mode = "fail"
    wait_for(lambda: pools.endpoint("p", "ep-0").get("ejections") == 2, 3 + 3 * INTERVAL + 6, "a second ejection")
    wait_event(pools, "p", "EndpointReejected")


def test_panic_routes_to_every_endpoint_and_is_reported(pools, net_backends, k8s):
    backends = net_backends(3)
    pools.create("p", spec(backends, panicThresholdPercent=50))
    pools.wait_ready("p", healthy=3)
    backends[0].stop()
    backends[1].stop()
    wait_for(lambda: pools.condition("p", "Panic").get("status") == "True", 3 * INTERVAL + 3, "Panic=True")
    pub = Published(k8s, pools.namespace, "p")
    wait_for(lambda: len(pub.addresses()) == 3, 5, "all endpoints published in panic")
    assert pools.status("p")["panic"] is True and pub.table()["panic"] is True
    wait_event(pools, "p", "PanicEntered")
    backends[0].start()
    backends[1].start()
    wait_for(lambda: pools.condition("p", "Panic").get("status") == "False", 3 + 3 * INTERVAL + 3, "Panic=False")
    wait_event(pools, "p", "PanicLeft")


def test_tier_failover_and_failback(pools, net_backends, k8s):
    primary_a, primary_b, secondary = net_backends(3)
    pools.create("p", spec([primary_a, primary_b, secondary], tiers={2: 1}))
    pools.wait_ready("p", healthy=3)
    pub = Published(k8s, pools.namespace, "p")
    wait_for(lambda: pub.addresses() == sorted([primary_a.host, primary_b.host]), 5, "tier 0 serving")
    primary_a.stop()
    primary_b.stop()
    wait_for(lambda: pools.status("p").get("activeTier") == 1, 3 * INTERVAL + 3, "failover to tier 1")
    wait_for(lambda: pub.addresses() == [secondary.host], 5, "only tier 1 published")
    wait_event(pools, "p", "TierFailover")
    primary_a.start()
    primary_b.start()
    wait_for(lambda: pools.status("p").get("activeTier") == 0, 3 + 3 * INTERVAL + 3, "failback to tier 0")
    wait_for(lambda: pub.addresses() == sorted([primary_a.host, primary_b.host]), 5, "tier 0 published again")
    wait_event(pools, "p", "TierFailback")


def test_max_ejection_percent_keeps_endpoints_in_and_says_so(pools, net_backends):
    backends = net_backends(4)
    pools.create("p", spec(backends, maxEjectionPercent=25))
    pools.wait_ready("p", healthy=4)
    backends[0].stop()
    wait_for(lambda: pools.endpoint("p", "ep-0").get("breaker") == "Open", 3 * INTERVAL + 3, "ep-0 ejected")
    backends[1].stop()
    wait_for(
        lambda: pools.endpoint("p", "ep-1").get("ejectionLimited") is True,
        3 * INTERVAL + 3,
        "ep-1 kept in by the limit",
    )
    assert pools.endpoint("p", "ep-1")["eligible"] is True and pools.status("p")["ejected"] == 1
    wait_event(pools, "p", "EjectionLimited")


def test_an_operator_restart_keeps_open_breakers_open(pools, net_backends, operator):
    backends = net_backends(2)
    pools.create("p", spec(backends, circuitBreaker={"openSeconds": 60, "maxOpenSeconds": 300}))
    pools.wait_ready("p", healthy=2)
    backends[1].stop()
    wait_for(lambda: pools.endpoint("p", "ep-1").get("breaker") == "Open", 3 * INTERVAL + 3, "ep-1 ejected")
    wait_event(pools, "p", "EndpointEjected")
    before = pools.endpoint("p", "ep-1")
    seen = {e.metadata.name for e in pools.events("p")}
    operator.restart(kill=True)
    backends[1].start()  # healthy again, but its ejection has 60s to run
    wait_for(lambda: pools.endpoint("p", "ep-1").get("health") == "Healthy", 3 * INTERVAL + 5, "ep-1 probed again")
    after = pools.endpoint("p", "ep-1")
    assert (after["breaker"], after["openUntil"], after["ejections"]) == ("Open", before["openUntil"], 1)
    assert after["eligible"] is False
    wait_event(pools, "p", "EndpointHealthy")
    new = [e.reason for e in pools.events("p") if e.metadata.name not in seen]
    assert "EndpointEjected" not in new and "EndpointUnhealthy" not in new, new


def test_a_foreign_service_of_the_same_name_is_not_taken_over(pools, net_backends, k8s):
    core = kubernetes.client.CoreV1Api(k8s)
    core.create_namespaced_service(pools.namespace, {"metadata": {"name": "p"}, "spec": {"ports": [{"port": 1234}]}})
    backends = net_backends(1)
    pools.create("p", spec(backends))
    pools.wait_ready("p", healthy=1)
    wait_for(lambda: pools.condition("p", "Published").get("reason") == "PublishConflict", 10, "PublishConflict")
    assert "does not belong to this pool" in pools.condition("p", "Published")["message"]
    pub = Published(k8s, pools.namespace, "p")
    assert pub.table() is not None and pub.addresses() == [backends[0].host]
    assert core.read_namespaced_service("p", pools.namespace).spec.ports[0].port == 1234
    pools.delete("p")
    wait_for(lambda: pools.get("p") is None, 15, "pool deleted")
    assert core.read_namespaced_service("p", pools.namespace).spec.ports[0].port == 1234  # still theirs
