"""The Publisher against the real API server: an object it refuses is not sent again
unchanged on every round, only after a backoff; the other objects go on being applied."""

import uuid

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from clusterpool.core.publish import POOL_LABEL
from clusterpool.k8s.publish import Publisher
from clusterpool.k8s.writes import Lane, WriteQueue


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
        now[0] += 4.9
        assert await apply(invalid) == 0
        now[0] += 0.2  # 5 s after the refusal
        assert await apply(invalid) == 1
        now[0] += 9.0  # the wait doubled: 10 s
        assert await apply(invalid) == 0
        now[0] += 1.1
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
