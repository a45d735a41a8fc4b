"""Faults with nothing lost: the operator SIGKILLed at different points of its work, the
API server and etcd restarted, Redis and Consul killed and brought back, a backend that
flaps on every probe. After each, against the real components:

- the pool converges (Ready, the right number healthy, Published);
- nothing duplicated or orphaned: exactly the pool's Service, EndpointSlice and routing
  ConfigMap, and exactly its endpoints' Consul registrations;
- no transition Event twice for one transition (neither a second Event object nor a
  count above 1 where the transition happened once);
- the published EndpointSlice was never emptied by the fault (watched throughout);
- deleting the pool afterwards releases its finalizer and leaves nothing behind.
"""

import collections
import threading
import time
from pathlib import Path

import kubernetes
import pytest
import redis
from test_cleanup import POOL_LABEL, consul_registrations, published_objects
from test_consul import consul_agent  # noqa: F401  (the fixture)

import consul as consul_script
import controlplane
from backends import free_port
from conftest import endpoints_of, wait_for

INTERVAL = 2
BACK = 60  # seconds a pool may take to converge after a fault (a loaded machine included)


class SliceWatch:
    """Polls a pool's published EndpointSlices from a thread and records how many ready
    endpoints they held each time it could read them."""

    def __init__(self, k8s, namespace, pool):
        self.api = kubernetes.client.DiscoveryV1Api(k8s)
        self.namespace, self.pool = namespace, pool
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            try:
                slices = self.api.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=f"{POOL_LABEL}={self.pool}", _request_timeout=2
                ).items
            except Exception:  # the API server is away: nothing can change meanwhile
                time.sleep(0.2)
                continue
            self.samples.append(
                sum(1 for s in slices for e in s.endpoints or [] if e.conditions is None or e.conditions.ready)
            )
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        assert self.samples, "the EndpointSlice watch never read the slices"
        return min(self.samples)


def duplicated_transitions(pools, name):
    """(reason, message, objects, total count) of every Event posted more than once."""
    seen = collections.defaultdict(list)
    for e in pools.events(name):
        seen[(e.reason, e.message)].append(e.count or 1)
    return [(r, m, len(c), sum(c)) for (r, m), c in seen.items() if sum(c) > 1]


def pool_objects(k8s, namespace, name):
    mine = {f"Service/{name}", f"ConfigMap/{name}-routing"}
    return sorted(o for o in published_objects(k8s, namespace) if o in mine or o.startswith(f"EndpointSlice/{name}-"))


def assert_converged(pools, k8s, name, healthy, slices=1, agent=None):
    pools.wait_ready(name, healthy=healthy, timeout=BACK)
    wait_for(lambda: pools.condition(name, "Published").get("status") == "True", BACK, f"{name} Published")
    want = sorted([f"ConfigMap/{name}-routing", f"Service/{name}"])
    objs = wait_for(
        lambda: (o := pool_objects(k8s, pools.namespace, name)) and len(o) == len(want) + slices and o,
        BACK,
        f"{name}'s objects, no more and no fewer",
    )
    assert [o for o in objs if not o.startswith("EndpointSlice/")] == want
    if agent is not None:
        total = len(pools.status(name)["endpoints"])
        wait_for(
            lambda: (
                pools.condition(name, "PublishedToConsul").get("status") == "True"
                and len([r for r in consul_registrations(agent, pools.namespace) if f"-{name}-" in r]) == total
            ),
            BACK,
            f"{name}'s {total} Consul registrations",
        )


def assert_deleted_cleanly(pools, k8s, name, agent=None):
    pools.delete(name)
    wait_for(lambda: pools.get(name) is None, BACK, f"{name} deleted (finalizer released)")
    assert pool_objects(k8s, pools.namespace, name) == []
    if agent is not None:
        assert [r for r in consul_registrations(agent, pools.namespace) if f"-{name}-" in r] == []


def static_spec(backends, agent=None, **health):
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": INTERVAL, "timeoutSeconds": 1, "http": {}, **health},
    }
    if agent is not None:
        spec["publish"] = {"consul": {"address": agent.http, "service": "llm"}}
    return spec


# -- the operator killed ------------------------------------------------------------------


def test_the_operator_killed_mid_round_and_mid_publish_loses_nothing(
    pools,
    net_backends,
    operator,
    k8s,
    consul_agent,  # noqa: F811
):
    backends = net_backends(3)
    # a probe in flight for a while each round; well under the 1 s timeout, so that a
    # loaded machine does not fail it (a real ejection would repeat its Events)
    backends[2].mode, backends[2].delay = "slow", 0.3
    pools.create("p", static_spec(backends, consul_agent, healthyThreshold=1, unhealthyThreshold=1))
    assert_converged(pools, k8s, "p", healthy=3, agent=consul_agent)
    watch = SliceWatch(k8s, pools.namespace, "p")
    try:
        for _ in range(3):  # mid-round: while a probe of the slow backend is answered
            seen = backends[2].requests
            wait_for(lambda s=seen: backends[2].requests > s, 30, "a probe in flight")
            operator.restart(kill=True)
            assert_converged(pools, k8s, "p", healthy=3, agent=consul_agent)
        # mid-publish: the status records the change, the EndpointSlice has yet to follow
        backends[0].mode = "fail"
        wait_for(lambda: pools.endpoint("p", "ep-0").get("health") == "Unhealthy", 30, "ep-0 Unhealthy")
        operator.restart(kill=True)
        assert_converged(pools, k8s, "p", healthy=2, agent=consul_agent)
        wait_for(lambda: watch.samples[-1] == 2, BACK, "ep-0 out of the EndpointSlice")
        backends[0].mode = "ok"
        wait_for(lambda: pools.endpoint("p", "ep-0").get("breaker") == "HalfOpen", 90, "ep-0 on trial")
        operator.restart(kill=True)
        assert_converged(pools, k8s, "p", healthy=3, agent=consul_agent)
    finally:
        lowest = watch.stop()
    assert lowest >= 2, f"the EndpointSlice fell to {lowest} ready endpoints"
    assert duplicated_transitions(pools, "p") == []
    assert [e.count for e in pools.events("p", "EndpointUnhealthy")] == [1]
    assert operator.starts >= 6
    assert_deleted_cleanly(pools, k8s, "p", consul_agent)


def test_the_operator_killed_mid_delete_leaves_nothing_behind(
    pools,
    net_backends,
    operator,
    k8s,
    consul_agent,  # noqa: F811
):
    backends = net_backends(2)
    names = [f"d{i}" for i in range(12)]
    for name in names:
        pools.create(name, static_spec(backends, consul_agent))
    for name in names:
        assert_converged(pools, k8s, name, healthy=2, agent=consul_agent)
    before = len(published_objects(k8s, pools.namespace)) + len(consul_registrations(consul_agent, pools.namespace))
    for name in names:
        pools.delete(name)
    # kill once the cleanups are under way and before they are done
    wait_for(
        lambda: (
            len(published_objects(k8s, pools.namespace)) + len(consul_registrations(consul_agent, pools.namespace))
            < before
        ),
        30,
        "some cleanup done",
        interval=0.02,
    )
    operator.restart(kill=True)
    assert pools.names(), "every cleanup was done before the kill: the test killed too late"
    wait_for(lambda: not pools.names(), BACK, "every pool gone after the restart (finalizers released)")
    assert published_objects(k8s, pools.namespace) == []
    assert consul_registrations(consul_agent, pools.namespace) == []


def test_the_operator_killed_mid_cache_cleanup_finishes_it_after_the_restart(
    pools, net_backends, operator, k8s, redis_server
):
    server = redis_server()
    r = redis.Redis(host=server.host, port=server.port)
    prefix = f"clusterpool:{pools.namespace}/c:"
    backends = net_backends(1)
    cache = {"type": "Redis", "redis": {"address": server.address}}
    pools.create("c", {**static_spec(backends), "cache": cache})
    assert_converged(pools, k8s, "c", healthy=1)
    wait_for(lambda: pools.status("c").get("cache", {}).get("removedKeys") == 0, BACK, "the first cleanup done")
    for start in range(0, 200_000, 10_000):
        r.mset({f"{prefix}v1:k{i}": "x" for i in range(start, start + 10_000)})
    r.set(f"{prefix}v2:kept", "y")
    watch = SliceWatch(k8s, pools.namespace, "c")
    try:
        pools.patch_spec("c", {"cache": {**cache, "version": 2}})
        # Killed once the new version is recorded in status: a kill between the
        # CacheVersionChanged Event and that write would make the restarted operator post
        # the Event again (Events are at least once; see docs/reliability.md).
        wait_for(
            lambda: 0 < r.dbsize() < 200_000 and pools.status("c").get("cache", {}).get("version") == 2,
            60,
            "the cleanup under way, the new version recorded",
            interval=0.01,
        )
        operator.restart(kill=True)
        left = r.dbsize()
        assert left > 1, "the cleanup was done before the kill: the test killed too late"
        wait_for(lambda: r.dbsize() == 1, BACK, "the cleanup finished after the restart")
        wait_for(
            lambda: (s := pools.status("c").get("cache", {})).get("version") == 2 and s.get("removedKeys"),
            BACK,
            "status.cache after the cleanup",
        )
        assert r.get(f"{prefix}v2:kept") == b"y"
        assert_converged(pools, k8s, "c", healthy=1)
    finally:
        lowest = watch.stop()
    assert lowest == 1
    assert duplicated_transitions(pools, "c") == []
    assert len(pools.events("c", "CacheVersionChanged")) == 1
    assert len(pools.events("c", "CacheInvalidated")) == 1
    assert_deleted_cleanly(pools, k8s, "c")


# -- the control plane restarted ------------------------------------------------------------


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_restart_loses_nothing(component, cluster, pools, net_backends, operator, k8s):
    backends = net_backends(2)
    pools.create("cp", static_spec(backends))
    assert_converged(pools, k8s, "cp", healthy=2)
    watch = SliceWatch(k8s, pools.namespace, "cp")
    state_dir = Path(cluster.state_dir)
    try:
        if component == "kube-apiserver":
            controlplane.stop_apiserver(state_dir)
            time.sleep(3 * INTERVAL)
            controlplane.start_apiserver(state_dir)
        else:
            controlplane.restart_etcd(state_dir, down_seconds=3 * INTERVAL)
        backends[1].mode = "fail"  # the operator still follows changes
        assert_converged(pools, k8s, "cp", healthy=1)
        backends[1].mode = "ok"
        wait_for(lambda: pools.endpoint("cp", "ep-1").get("breaker") == "HalfOpen", 90, "ep-1 on trial")
        assert_converged(pools, k8s, "cp", healthy=2)
    finally:
        lowest = watch.stop()
    assert lowest >= 1
    assert operator.proc is not None and operator.proc.poll() is None
    assert duplicated_transitions(pools, "cp") == []
    assert_deleted_cleanly(pools, k8s, "cp")


# -- Redis and Consul killed -------------------------------------------------------------


def test_redis_killed_and_back_loses_nothing(pools, net_backends, k8s, redis_server):
    server = redis_server()
    backends = net_backends(2)
    pools.create("r", {**static_spec(backends), "cache": {"type": "Redis", "redis": {"address": server.address}}})
    assert_converged(pools, k8s, "r", healthy=2)
    wait_for(lambda: pools.condition("r", "CacheReady").get("status") == "True", BACK, "CacheReady")
    watch = SliceWatch(k8s, pools.namespace, "r")
    try:
        server.stop(kill=True)
        wait_for(lambda: pools.condition("r", "CacheReady").get("status") == "False", BACK, "CacheReady=False")
        time.sleep(2 * INTERVAL)  # a few rounds without Redis
        server.start()
        wait_for(lambda: pools.condition("r", "CacheReady").get("status") == "True", BACK, "CacheReady again")
        assert_converged(pools, k8s, "r", healthy=2)
    finally:
        lowest = watch.stop()
    assert lowest == 2
    assert duplicated_transitions(pools, "r") == []
    assert [len(pools.events("r", why)) for why in ("CacheUnreachable", "CacheReachable")] == [1, 1]
    assert_deleted_cleanly(pools, k8s, "r")


def test_consul_killed_and_back_gets_the_registrations_again(pools, net_backends, k8s, tmp_path):
    port = free_port()
    agent = consul_script.up(tmp_path / "a", http_port=port)
    try:
        backends = net_backends(2)
        pools.create("cs", static_spec(backends, agent))
        assert_converged(pools, k8s, "cs", healthy=2, agent=agent)
        watch = SliceWatch(k8s, pools.namespace, "cs")
        try:
            consul_script.down(agent)
            wait_for(lambda: pools.condition("cs", "PublishedToConsul").get("status") == "False", BACK, "Consul away")
            # a -dev agent keeps nothing: the new one's catalog starts empty
            agent = consul_script.up(tmp_path / "b", http_port=port)
            assert_converged(pools, k8s, "cs", healthy=2, agent=agent)
        finally:
            lowest = watch.stop()
        assert lowest == 2
        assert duplicated_transitions(pools, "cs") == []
        assert len(pools.events("cs", "ConsulPublishFailed")) == 1
        assert_deleted_cleanly(pools, k8s, "cs", agent)
    finally:
        consul_script.down(agent)


# -- a backend flapping on every probe ------------------------------------------------------


def test_a_backend_flapping_on_every_probe_never_empties_the_slice(pools, net_backends, k8s):
    backends = net_backends(3)
    pools.create("f", static_spec(backends, healthyThreshold=1, unhealthyThreshold=1))
    assert_converged(pools, k8s, "f", healthy=3)
    watch = SliceWatch(k8s, pools.namespace, "f")
    try:
        backends[0].mode = "flap"
        flapped = backends[0].requests
        wait_for(lambda: backends[0].requests >= flapped + 12, 90, "a dozen flapping probes")
        backends[0].mode = "ok"
        assert_converged(pools, k8s, "f", healthy=3)
    finally:
        lowest = watch.stop()
    assert lowest >= 2, f"the EndpointSlice fell to {lowest} ready endpoints"
    # repeats of one transition are counted on one Event, as Kubernetes' own components do
    evs = pools.events("f")
    keys = [(e.reason, e.message) for e in evs]
    assert len(keys) == len(set(keys)), sorted(keys)
    assert pools.events("f", "EndpointEjected"), "the flapping endpoint was never ejected"
    assert_deleted_cleanly(pools, k8s, "f")
