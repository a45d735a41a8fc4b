"""spec.models against the real apiserver and the operator: admission refuses names a
client could not send and lists with a name twice; two pools of a namespace claiming one
model leave it with the older one, the later one reports ModelsConflict (condition and
Event naming the other pool) until the older one goes; the routing ConfigMaps carry what
each pool serves."""

import json
import time

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from conftest import Pools, endpoints_of, wait_for

CHECK = {"intervalSeconds": 30, "timeoutSeconds": 1, "tcp": {}}  # slow rounds: a wake, not the interval, must act


def pool_spec(backends, models):
    return {"discovery": {"static": {"endpoints": endpoints_of(backends)}}, "healthCheck": CHECK, "models": models}


def routing_models(pools, name):
    try:
        cm = pools.core.read_namespaced_config_map(f"{name}-routing", pools.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(cm.data["routing.json"]).get("models")


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["llama 3"], "must be a model name as clients send it"),
        (["llama-3-8b", "llama-3-8b"], "each model may appear only once in spec.models"),
        (["m" * 254], "Too long"),
    ],
)
def test_admission_refuses_model_names_clients_cannot_send_and_repeats(pools, tcp_backends, models, message):
    with pytest.raises(ApiException) as exc:
        pools.create("bad", pool_spec(tcp_backends(1), models))
    assert exc.value.status == 422 and message in exc.value.body and "spec.models" in exc.value.body


def test_a_model_claimed_twice_stays_with_the_older_pool_until_it_goes(pools, tcp_backends):
    pools.create("first", pool_spec(tcp_backends(1), ["llama-3-8b", "qwen"]))
    wait_for(lambda: pools.status("first").get("models") == ["llama-3-8b", "qwen"], 30, "first serving its models")
    time.sleep(1.1)  # creationTimestamp has seconds: the second pool is certainly the later one
    pools.create("second", pool_spec(tcp_backends(1), ["qwen", "mistral"]))

    conflict = wait_for(
        lambda: (c := pools.condition("second", "ModelsConflict")).get("status") == "True" and c,
        30,
        "ModelsConflict=True on the later pool",
    )
    assert conflict["reason"] == "ModelServedElsewhere"
    assert "qwen already served by pool first" in conflict["message"]
    assert "remove them from spec.models here, or from the other pool" in conflict["message"]
    warning = wait_for(lambda: pools.events("second", "ModelsConflict"), 10, "a ModelsConflict Event")
    assert warning[0].type == "Warning" and "pool first" in warning[0].message
    assert pools.condition("first", "ModelsConflict")["status"] == "False"  # the older pool keeps it
    assert pools.status("second")["models"] == ["mistral"]
    wait_for(lambda: routing_models(pools, "second") == ["mistral"], 20, "the later pool's table without qwen")
    assert routing_models(pools, "first") == ["llama-3-8b", "qwen"]

    pools.delete("first")
    cleared = wait_for(
        lambda: (c := pools.condition("second", "ModelsConflict")).get("status") == "False" and c,
        15,  # well under the 30 s interval: the deletion wakes the pool
        "the conflict to clear once the older pool is gone",
    )
    assert cleared["message"] == "serves qwen, mistral"
    assert pools.status("second")["models"] == ["qwen", "mistral"]
    wait_for(lambda: routing_models(pools, "second") == ["qwen", "mistral"], 20, "qwen in the later pool's table")
    assert wait_for(lambda: pools.events("second", "ModelsConflictResolved"), 10, "a ModelsConflictResolved Event")


def test_pools_of_other_namespaces_do_not_conflict_and_a_pool_without_models_has_no_condition(pools, tcp_backends, k8s):
    pools.create("a", pool_spec(tcp_backends(1), ["shared"]))
    plain = pool_spec(tcp_backends(1), None)
    del plain["models"]
    pools.create("plain", plain)
    other_ns = f"{pools.namespace}-b"
    kubernetes.client.CoreV1Api(k8s).create_namespace({"metadata": {"name": other_ns}})
    elsewhere = Pools(k8s, other_ns)
    try:
        elsewhere.create("b", pool_spec(tcp_backends(1), ["shared"]))
        wait_for(lambda: elsewhere.status("b").get("models") == ["shared"], 30, "the other namespace's pool serving")
        wait_for(lambda: pools.status("a").get("models") == ["shared"], 30, "this namespace's pool serving")
        assert elsewhere.condition("b", "ModelsConflict")["status"] == "False"
        wait_for(lambda: routing_models(pools, "plain") == [], 30, "the plain pool's table")
        assert pools.condition("plain", "ModelsConflict") == {} and "models" not in pools.status("plain")
    finally:
        for name in elsewhere.names():
            elsewhere.delete(name)
        wait_for(lambda: not elsewhere.names(), 30, f"pools in {other_ns} deleted")
