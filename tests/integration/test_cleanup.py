"""Cleanup always runs: what a pool published (its Service, EndpointSlices, routing
ConfigMap and Consul registrations) is removed by the finalizer-bound delete handler,
whether the pool's loop stopped gracefully, was busy, or the operator was killed."""

import asyncio
import logging
import uuid

import httpx
import kopf
import kubernetes
from test_consul import consul_agent  # noqa: F401  (the fixture)

from clusterpool.handlers import remove_pool_objects
from clusterpool.k8s.client import SecretsClient
from clusterpool.k8s.events import EventRecorder
from clusterpool.k8s.publish import Publisher
from clusterpool.k8s.shards import Shards
from clusterpool.k8s.writes import WriteQueue
from clusterpool.memory import FreedMemory
from conftest import endpoints_of, wait_for

POOL_LABEL = "clusterpool.dev/pool"


def pool_spec(backends, agent, service):
    return {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}},
        "publish": {"consul": {"address": agent.http, "service": service}},
    }


def consul_registrations(agent, namespace):
    expr = f'Meta["clusterpool-namespace"] == "{namespace}"'
    r = httpx.get(f"{agent.http}/v1/agent/services", params={"filter": expr})
    r.raise_for_status()
    return sorted(r.json())


def published_objects(k8s, namespace):
    core, disc = kubernetes.client.CoreV1Api(k8s), kubernetes.client.DiscoveryV1Api(k8s)
    sel = POOL_LABEL
    return (
        [f"Service/{o.metadata.name}" for o in core.list_namespaced_service(namespace, label_selector=sel).items]
        + [f"ConfigMap/{o.metadata.name}" for o in core.list_namespaced_config_map(namespace, label_selector=sel).items]
        + [
            f"EndpointSlice/{o.metadata.name}"
            for o in disc.list_namespaced_endpoint_slice(namespace, label_selector=sel).items
        ]
    )


def create_published(pools, backends, agent, names):
    for name in names:
        pools.create(name, pool_spec(backends, agent, f"svc-{name}"))
    for name in names:
        wait_for(
            lambda n=name: (
                pools.condition(n, "PublishedToConsul").get("status") == "True"
                and pools.condition(n, "Published").get("status") == "True"
            ),
            60,
            f"pool {name} published",
        )


def test_deleting_many_busy_pools_at_once_leaves_nothing_behind(pools, net_backends, consul_agent, k8s):  # noqa: F811
    backends = net_backends(2)
    names = [f"p{i}" for i in range(30)]
    create_published(pools, backends, consul_agent, names)
    assert len(consul_registrations(consul_agent, pools.namespace)) == 60
    assert len(published_objects(k8s, pools.namespace)) >= 90
    for name in names:
        pools.delete(name)
    wait_for(lambda: not pools.names(), 60, "every pool gone (finalizers released)")
    assert published_objects(k8s, pools.namespace) == []
    assert consul_registrations(consul_agent, pools.namespace) == []


def test_pools_deleted_while_the_operator_is_dead_are_cleaned_after_it_restarts(
    pools,
    net_backends,
    consul_agent,  # noqa: F811
    k8s,
    operator,
):
    backends = net_backends(1)
    names = ["a", "b", "c"]
    create_published(pools, backends, consul_agent, names)
    operator.stop(kill=True)  # no loop stops gracefully, no cleanup can run now
    try:
        for name in names:
            pools.delete(name)
        assert sorted(pools.names()) == names  # held by the finalizer
        assert len(consul_registrations(consul_agent, pools.namespace)) == 3
    finally:
        operator.start()
    wait_for(lambda: not pools.names(), 60, "every pool gone after the restart")
    assert published_objects(k8s, pools.namespace) == []
    assert consul_registrations(consul_agent, pools.namespace) == []


def test_a_pool_deleted_in_the_middle_of_a_long_round_ends_its_loop_cleanly(pools, http_backends, operator):
    """A round still waiting for a probe when the pool goes is cut short after a grace
    period; the pool's loop (kopf's daemon) then ends as it does after a short round, not
    as a daemon kopf had to cancel (at 1,000 pools deleted at once that was nearly every
    one of them, each a warning in the log)."""
    mark = operator.log_mark()
    backend = http_backends(1)[0]
    backend.mode = "hang"  # answers nothing: the round waits for the probe's timeout
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of([backend])}},
        "healthCheck": {"intervalSeconds": 60, "timeoutSeconds": 30, "http": {}},
    }
    pools.create("long", spec)
    wait_for(lambda: backend.requests >= 1, 30, "the first probe waiting for its answer")
    pools.delete("long")
    wait_for(lambda: pools.get("long") is None, 30, "the pool gone (finalizer released)")
    log = operator.log_since(mark)
    ended = [line for line in log.splitlines() if f"[{pools.namespace}/long] Daemon 'pool'" in line]
    assert ended and all("succeeded" in line for line in ended), ended


def published_by(namespace, pool, uid):
    """A Service, an EndpointSlice and a routing ConfigMap as a pool publishes them."""
    owner = {"apiVersion": "clusterpool.dev/v1alpha1", "kind": "ClusterPool", "name": pool, "uid": uid}
    meta = {"namespace": namespace, "labels": {POOL_LABEL: pool}, "ownerReferences": [owner]}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**meta, "name": pool},
            "spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"name": "backend", "port": 8000}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {**meta, "name": f"{pool}-0"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.18.0.5"]}],
            "ports": [{"name": "backend", "port": 8000, "protocol": "TCP"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**meta, "name": f"{pool}-routing"}, "data": {}},
    ]


async def test_a_removal_the_shard_fence_refused_is_made_once_the_pool_is_certainly_ours_again(k8s, pools):
    """Under a delete storm a replica's Lease renewals can time out between the delete
    handler's check that the pool is its own and the removal's send: the shard fence then
    refuses the removal. The handler waits until the pool is certainly its own again and
    removes it within the same call, instead of failing into a kopf retry (two PATCHes of
    the pool each, which at 1,000 pools starved the renewals further)."""
    namespace, uid = pools.namespace, str(uuid.uuid4())
    # a replica of its own, its Lease in the test's namespace: the only member there
    shards = Shards(k8s, "rep-remover", namespace, lease_seconds=9, renew_seconds=1.8)
    renewing = asyncio.create_task(shards.run())
    writes = WriteQueue(fence=lambda pool: shards.may_drive(*pool))
    publisher = Publisher(k8s, writes)
    refused: list[object] = []

    def uncertain_once(pool):  # the Lease turns uncertain right after the handler's check
        if not refused:
            refused.append(pool)
            return False
        return shards.may_drive(*pool)

    memo = kopf.Memo(
        shards=shards,
        runners={},
        writes=writes,
        publisher=publisher,
        secrets=SecretsClient(k8s),
        events=EventRecorder(k8s, writes, "rep-remover"),
        freed_memory=FreedMemory(),
    )
    body = kopf.Body({"metadata": {"namespace": namespace, "name": "d", "uid": uid}, "spec": {}})
    try:
        async with asyncio.timeout(30):
            while not shards.may_drive(namespace, "d"):
                await shards.changed()
        assert await publisher.apply(published_by(namespace, "d", uid)) == []
        assert sorted(published_objects(k8s, namespace)) == ["ConfigMap/d-routing", "EndpointSlice/d-0", "Service/d"]
        writes.fence = uncertain_once
        await remove_pool_objects(body=body, memo=memo, logger=logging.getLogger("test"))
        assert refused == [(namespace, "d")]
        assert published_objects(k8s, namespace) == []
    finally:
        renewing.cancel()
        await asyncio.wait({renewing})
        await publisher.close()
        await writes.close()
