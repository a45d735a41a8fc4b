"""The Publisher against the real API server: an object it refuses is not sent again
unchanged on every round, only after a backoff; the other objects go on being applied;
what it adopts, what others changed, and a prune that runs while a listing is checked."""

import asyncio
import uuid
from collections.abc import Callable

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from clusterpool.core.publish import POOL_LABEL
from clusterpool.k8s.publish import Publisher
from clusterpool.k8s.writes import Lane, WriteQueue
from conftest import wait_for


@pytest.fixture
def namespace(k8s):
    core = kubernetes.client.CoreV1Api(k8s)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def config_map(namespace, name, label):
    labels = {POOL_LABEL: "p", "example": label}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    }


async def test_a_refused_object_waits_out_a_backoff_and_the_others_still_go(k8s, namespace):
    now = [1000.0]
    writes = WriteQueue()
    publisher = Publisher(k8s, writes, clock=lambda: now[0])
    invalid = config_map(namespace, "bad", "x" * 64)  # a label value over 63 characters: 422
    try:

        async def apply(*objs):
            sent = writes.sent[Lane.HEALTH]
            with pytest.raises(ApiException) as refused:
                await publisher.apply(list(objs))
            assert refused.value.status == 422
            return writes.sent[Lane.HEALTH] - sent

        assert await apply(invalid, config_map(namespace, "good", "1")) == 2
        assert await apply(invalid, config_map(namespace, "good", "2")) == 1  # the good one only
        # The backoff is jittered (core/backoff.py): the first wait lies in [2.5 s, 5 s], the
        # second, doubled, in [5 s, 10 s].
        now[0] += 2.4
        assert await apply(invalid) == 0
        now[0] += 2.7  # past 5 s after the refusal
        assert await apply(invalid) == 1
        now[0] += 4.9
        assert await apply(invalid) == 0
        now[0] += 5.2  # past 10 s
        assert await apply(invalid) == 1
        changed = config_map(namespace, "bad", "y" * 64)  # a changed object is sent at once
        assert await apply(changed) == 1

        fixed = config_map(namespace, "bad", "ok")
        assert await publisher.apply([fixed]) == []
        core = kubernetes.client.CoreV1Api(k8s)
        assert core.read_namespaced_config_map("good", namespace).metadata.labels["example"] == "2"
        assert core.read_namespaced_config_map("bad", namespace).metadata.labels["example"] == "ok"
        publisher.forget(namespace, "p")
        assert publisher.remembered() == 0
    finally:
        await writes.close()


def routing(namespace, pool, value):
    labels = {POOL_LABEL: pool}
    meta = {"name": f"{pool}-routing", "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"routing.json": value}}


def service(namespace, pool):
    uid = str(uuid.uuid4())  # an owner that does not exist: nothing collects the objects meanwhile
    owner = {"apiVersion": "clusterpool.dev/v1alpha1", "kind": "ClusterPool", "name": pool, "uid": uid}
    meta = {"name": pool, "namespace": namespace, "labels": {POOL_LABEL: pool}, "ownerReferences": [owner]}
    spec = {"type": "ClusterIP", "clusterIP": "None", "ports": [{"name": "backend", "port": 8000}]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


async def sent_by(publisher, writes, objs, adopt):
    before = writes.sent[Lane.HEALTH]
    assert await publisher.apply(objs, adopt=adopt) == []
    return writes.sent[Lane.HEALTH] - before


async def test_a_replica_that_starts_driving_a_pool_keeps_what_is_stored_as_it_would_apply_it(k8s, namespace):
    first_writes, writes = WriteQueue(), WriteQueue()
    first, publisher = Publisher(k8s, first_writes), Publisher(k8s, writes)
    core = kubernetes.client.CoreV1Api(k8s)
    try:
        objs = [service(namespace, "a"), routing(namespace, "a", "1")]
        assert await sent_by(first, first_writes, objs, adopt=True) == 2  # nothing stored yet
        stored = core.read_namespaced_config_map("a-routing", namespace).metadata.resource_version

        # another replica (or this one restarted) that knows nothing of what was applied
        assert await sent_by(publisher, writes, objs, adopt=True) == 0
        assert publisher.adopted == 2
        assert core.read_namespaced_config_map("a-routing", namespace).metadata.resource_version == stored
        # a change goes out, on the adopted version (no conflict) and for the changed object only
        assert await sent_by(publisher, writes, [objs[0], routing(namespace, "a", "2")], adopt=True) == 1
        assert publisher.conflicts == 0
        assert core.read_namespaced_config_map("a-routing", namespace).data == {"routing.json": "2"}

        # what is stored otherwise than it would be applied is applied
        other = Publisher(k8s, writes)
        assert await sent_by(other, writes, [objs[0], routing(namespace, "a", "3")], adopt=True) == 1
        assert other.adopted == 1  # the Service

        # a pool that never published lists nothing and applies everything
        b = [service(namespace, "b"), routing(namespace, "b", "1")]
        assert await sent_by(Publisher(k8s, writes), writes, b, adopt=False) == 2
    finally:
        for p in (first, publisher):
            await p.close()
        await first_writes.close()
        await writes.close()


async def test_what_someone_else_changed_or_removed_is_applied_again_after_the_next_check(k8s, namespace):
    now = [1000.0]
    writes = WriteQueue()
    publisher = Publisher(k8s, writes, clock=lambda: now[0])
    core = kubernetes.client.CoreV1Api(k8s)
    objs = [service(namespace, "a"), routing(namespace, "a", "mine")]
    try:
        assert await sent_by(publisher, writes, objs, adopt=False) == 2
        # a late write of a replica that drove the pool before, and a removal by hand
        core.patch_namespaced_config_map("a-routing", namespace, {"data": {"routing.json": "stale"}})
        core.delete_namespaced_service("a", namespace)
        now[0] += 59.0
        assert await sent_by(publisher, writes, objs, adopt=False) == 0  # not checked yet
        assert publisher.drifted == 0

        now[0] += 1.0  # a minute after: this apply starts the check, the next ones act on it
        assert await sent_by(publisher, writes, objs, adopt=False) == 0
        for _ in range(100):
            if publisher.drifted:
                break
            await asyncio.sleep(0.05)
        assert publisher.drifted == 2
        assert await sent_by(publisher, writes, objs, adopt=False) == 2
        assert core.read_namespaced_config_map("a-routing", namespace).data == {"routing.json": "mine"}
        assert core.read_namespaced_service("a", namespace).metadata.labels[POOL_LABEL] == "a"
    finally:
        await publisher.close()
        await writes.close()


def endpoint_slice(namespace, pool, name):
    labels = {POOL_LABEL: pool, "kubernetes.io/service-name": pool}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "backend", "port": 8000, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["198.18.0.1"]}],
    }


async def test_a_prune_that_runs_while_a_listing_is_checked_breaks_neither(k8s, namespace):
    """A prune of pool a's EndpointSlices runs on a write worker while the check of a
    listing (someone else changed one of those slices) runs on the event loop: the apply
    that waited for the listing succeeds, and a slice applied again after the prune is
    stored again."""
    slices = kubernetes.client.DiscoveryV1Api(k8s)
    stall: list[Callable[[], None]] = []  # run once, at the first comparison of two readings

    class Reading(float):
        """A clock reading; the first comparison after `stall` was armed holds the event
        loop (the listing's check is underway) until the prune has gone past the slice."""

        def __lt__(self, other: float) -> bool:
            if stall:
                stall.pop()()
            return float(self) < float(other)

    now = [1000.0]
    writes = WriteQueue()
    publisher = Publisher(k8s, writes, clock=lambda: Reading(now[0]))
    changed = endpoint_slice(namespace, "a", "a-m")
    try:
        assert await publisher.apply([changed, routing(namespace, "a", "1")]) == []
        slices.patch_namespaced_endpoint_slice("a-m", namespace, {"metadata": {"labels": {"by": "someone-else"}}})
        # slices of pool a it never applied: the prune deletes them in name order, these
        # first (a prune slower than the listing), then a-m, then a-z
        for i in range(100):
            slices.create_namespaced_endpoint_slice(namespace, endpoint_slice(namespace, "a", f"a-f{i:03d}"))
        slices.create_namespaced_endpoint_slice(namespace, endpoint_slice(namespace, "a", "a-z"))

        def stored() -> set[str]:
            listed = slices.list_namespaced_endpoint_slice(namespace, label_selector=f"{POOL_LABEL}=a")
            return {s.metadata.name for s in listed.items}

        not_yet_pruned: list[bool] = []

        def until_pruned() -> None:  # on the event loop, blocking it: the prune goes on in its thread
            not_yet_pruned.append("a-m" in stored())
            wait_for(lambda: "a-z" not in stored(), 30, "the prune to delete a-z")

        now[0] += 10.0
        stall.append(until_pruned)
        listing = asyncio.ensure_future(publisher.apply([routing(namespace, "b", "1")], adopt=True))
        prune = asyncio.ensure_future(publisher.prune_slices(namespace, "a", keep=set()))
        assert await listing == []  # the listing's check did not break on what the prune removed
        await prune
        # the race was set up: the check began before the prune removed a-m, and was held
        # until the prune had gone past it
        assert not_yet_pruned == [True], "the prune removed a-m before the listing was checked"
        assert stored() == set()

        assert await publisher.apply([changed, routing(namespace, "a", "1")]) == []
        assert stored() == {"a-m"}
    finally:
        await publisher.close()
        await writes.close()
