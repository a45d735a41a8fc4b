"""Events as Kubernetes' own components post them, against the real API server: repeats
counted on one Event, every Event write bounded per pool (a refused count update is
written later, not lost), the reporting component named."""

import asyncio
import uuid

import kopf
import kubernetes

from clusterpool.handlers import configure_settings
from clusterpool.k8s.events import BURST, COMPONENT, EventRecorder
from clusterpool.k8s.writes import WriteQueue
from conftest import endpoints_of, wait_for


def events_of(core, ns, name):
    return core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items


async def test_repeats_are_counted_and_new_events_are_bounded_per_pool(k8s):
    core = kubernetes.client.CoreV1Api(k8s)
    ns = f"ev-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    writes = WriteQueue()
    recorder = EventRecorder(k8s, writes, "replica-1")
    flapping = {"namespace": ns, "name": "flapping", "uid": str(uuid.uuid4())}
    calm = {"namespace": ns, "name": "calm", "uid": str(uuid.uuid4())}
    try:
        for _ in range(7):
            assert recorder.post(flapping, "Warning", "EndpointUnhealthy", "ep-0 failed its probes")
        posted = [recorder.post(flapping, "Normal", "Step", f"step {i}") for i in range(BURST + 10)]
        assert recorder.post(calm, "Normal", "PoolReady", "1 of 1 endpoints healthy")  # another pool's budget
        loop = asyncio.get_running_loop()

        def settled():
            evs = events_of(core, ns, "flapping")
            repeat = [e for e in evs if e.reason == "EndpointUnhealthy"]
            return repeat and repeat[0].count == 7 and len(evs) == BURST - 6

        # the writes run in the queue's threads; wait for them without blocking the loop
        await loop.run_in_executor(None, lambda: wait_for(settled, 20, "the Events written"))
        evs = events_of(core, ns, "flapping")
        assert len([e for e in evs if e.reason == "EndpointUnhealthy"]) == 1  # one object, count 7
        assert posted.count(True) == BURST - 7  # every write took a token, the 6 count updates too
        assert recorder.suppressed == len(posted) - posted.count(True)
        # with the bucket empty, repeats are still counted: the count is written with the next token
        for _ in range(3):
            assert recorder.post(flapping, "Warning", "EndpointUnhealthy", "ep-0 failed its probes")

        def counted():
            return [e.count for e in events_of(core, ns, "flapping") if e.reason == "EndpointUnhealthy"] == [10]

        await loop.run_in_executor(None, lambda: wait_for(counted, 30, "the count written once a token came"))
        assert all(e.reporting_component == COMPONENT and e.reporting_instance == "replica-1" for e in evs)
        assert wait_for(lambda: events_of(core, ns, "calm"), 10, "the calm pool's Event")
    finally:
        await writes.close()
        core.delete_namespace(ns)


def test_every_event_of_a_running_operator_names_the_operator_as_reporter(pools, http_backends, operator):
    """All Events in the pool's namespace, whoever posted them (the EventRecorder, or kopf
    should it post any of its own), name the operator and the replica, never "kopf"."""
    backends = http_backends(2)
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
    }
    pools.create("who", spec)
    pools.wait_ready("who", 2)
    backends[0].stop()

    def posted():  # the operator's Events of both kinds: the pool's and an endpoint's
        events = pools.core.list_namespaced_event(pools.namespace).items
        return events if {"PoolReady", "EndpointUnhealthy"} <= {e.reason for e in events} else None

    events = wait_for(posted, 20, "the PoolReady and EndpointUnhealthy Events")
    unhealthy = [e for e in events if e.reason == "EndpointUnhealthy"]
    assert [(e.involved_object.kind, e.involved_object.name) for e in unhealthy] == [("ClusterPool", "who")]
    assert "endpoint ep-0 " in unhealthy[0].message, unhealthy[0].message
    reporters = {(e.reporting_component, e.source.component, e.reporting_instance) for e in events}
    assert reporters == {(COMPONENT, COMPONENT, operator.identity)}


def test_kopf_would_post_its_own_events_in_the_operators_name():
    settings = kopf.OperatorSettings()
    assert settings.posting.reporting_component == "kopf"  # kopf's default, which the operator replaces
    configure_settings(settings)
    assert settings.posting.reporting_component == COMPONENT
