"""Cleanup always runs: what a pool published (its Service, EndpointSlices, routing
ConfigMap and Consul registrations) is removed by the finalizer-bound delete handler,
whether the pool's loop stopped gracefully, was busy, or the operator was killed."""

import httpx
import kubernetes
from test_consul import consul_agent  # noqa: F401  (the fixture)

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
    log_before = len(operator.log.read_text())
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
    log = operator.log.read_text()[log_before:]
    ended = [line for line in log.splitlines() if f"[{pools.namespace}/long] Daemon 'pool'" in line]
    assert ended and all("succeeded" in line for line in ended), ended
