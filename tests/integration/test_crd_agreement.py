"""The CRD (checked by the real apiserver, OpenAPI and CEL) and the pydantic models
accept and reject the same specs, and default them the same way."""

import json

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from clusterpool import api
from conftest import ROOT
from samples import INVALID, INVALID_NAMES, VALID

MANIFEST_SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml")) + sorted((ROOT / "examples").rglob("*.yaml"))


def server_dry_run(pools, spec, name="dry"):
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    return pools.api.create_namespaced_custom_object(
        api.GROUP, api.VERSION, pools.namespace, api.PLURAL, body, dry_run="All"
    )


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_samples_are_accepted_and_defaulted_alike(pools, name):
    stored = server_dry_run(pools, VALID[name])["spec"]
    model = api.parse_spec(VALID[name]).model_dump(by_alias=True, exclude_none=True)
    assert stored == model
    assert api.parse_spec(stored).model_dump(by_alias=True, exclude_none=True) == model


@pytest.mark.parametrize("path", MANIFEST_SAMPLES, ids=lambda p: p.name)
def test_shipped_sample_manifests_are_valid(pools, path):
    pool_docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == api.KIND]
    assert pool_docs, f"{path} has no ClusterPool"
    for doc in pool_docs:
        api.parse_spec(doc["spec"])
        server_dry_run(pools, doc["spec"])


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_samples_are_rejected_by_both(pools, name):
    with pytest.raises(ValidationError):
        api.parse_spec(INVALID[name])
    with pytest.raises(ApiException) as exc:
        server_dry_run(pools, INVALID[name])
    assert exc.value.status == 422, exc.value.body


@pytest.mark.parametrize("name", sorted(INVALID_NAMES))
def test_pool_names_that_cannot_name_a_service_are_rejected_by_both(pools, name):
    assert api.pool_name_error(INVALID_NAMES[name]) is not None
    with pytest.raises(ApiException) as exc:
        server_dry_run(pools, VALID["minimal"], INVALID_NAMES[name])
    assert exc.value.status == 422, exc.value.body
    assert "metadata.name must be a DNS-1035 label" in exc.value.body


def test_the_longest_service_name_is_a_valid_pool_name(pools):
    name = "p" * 63
    assert api.pool_name_error(name) is None
    assert server_dry_run(pools, VALID["minimal"], name)["metadata"]["name"] == name


@pytest.mark.parametrize(
    ("sample", "field"),
    [
        ("address-url", "spec.discovery.static.endpoints[0].address"),
        ("redis-address-port-too-big", "spec.cache.redis.address"),
        ("consul-address-with-path", "spec.discovery.consul.address"),
        ("probe-header-value-crlf", "spec.healthCheck.http.headers[0].value"),
        ("probe-header-host", "spec.healthCheck.http.headers[0].name"),
        ("probe-path-with-crlf", "spec.healthCheck.http.path"),
        ("redis-password-secret-bad-name", "spec.cache.redis.passwordSecretRef.name"),
        ("kubernetes-port-zero", "spec.discovery.kubernetes.port"),
        ("model-with-space", "spec.models[0]"),
        ("model-twice", "spec.models"),
    ],
)
def test_the_apiserver_and_the_models_give_the_same_message(pools, sample, field):
    """The apiserver names the field; both name the rule and the fix in the same words."""
    with pytest.raises(ValidationError) as model_exc:
        api.parse_spec(INVALID[sample])
    model_message = api.spec_errors(model_exc.value).split(": ", 1)[1].split(" (got ")[0]
    with pytest.raises(ApiException) as exc:
        server_dry_run(pools, INVALID[sample])
    causes = json.loads(exc.value.body)["details"]["causes"]
    assert any(c["field"] == field and model_message in c["message"] for c in causes), causes


def test_cel_messages_reach_the_user(kubectl, pools):
    manifest = """
apiVersion: clusterpool.dev/v1alpha1
kind: ClusterPool
metadata: {name: bad}
spec:
  discovery: {static: {endpoints: [{name: a, address: 127.0.0.2, port: 80}]}}
  healthCheck: {intervalSeconds: 2, timeoutSeconds: 5, tcp: {}}
"""
    r = kubectl("apply", "-n", pools.namespace, "-f", "-", stdin=manifest, check=False)
    assert r.returncode != 0
    assert "spec.healthCheck.timeoutSeconds must be less than intervalSeconds" in r.stderr


def test_kubectl_explain_documents_the_fields(kubectl, crd):
    out = kubectl("explain", "clusterpool.spec.healthCheck.unhealthyThreshold").stdout
    assert "Consecutive failures that turn a healthy endpoint unhealthy" in out


def test_rules_checked_on_change_still_refuse_a_spec_changed_to_break_them(pools):
    """Some CEL rules run only when their value is new or changed (so status writes do not
    pay for them): an update that introduces the problem is refused all the same."""
    eps = [{"name": "a", "address": "127.0.0.1", "port": 9}, {"name": "b", "address": "127.0.0.1", "port": 19}]
    spec = {"discovery": {"static": {"endpoints": eps}}, "healthCheck": {"http": {}}}
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "on-change"}, "spec": spec}
    pools.api.create_namespaced_custom_object(api.GROUP, api.VERSION, pools.namespace, api.PLURAL, body)
    changes = {
        "each address:port may appear only once": {
            "discovery": {"static": {"endpoints": [eps[0], {**eps[1], "port": 9}]}}
        },
        "header names must be unique": {
            "healthCheck": {"http": {"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}}
        },
        "a label key is": {"discovery": {"static": {"endpoints": [{**eps[0], "labels": {"-bad": "x"}}, eps[1]]}}},
    }
    for message, change in changes.items():
        with pytest.raises(ApiException) as exc:
            pools.api.patch_namespaced_custom_object(
                api.GROUP, api.VERSION, pools.namespace, api.PLURAL, "on-change", {"spec": change}
            )
        assert exc.value.status == 422 and message in exc.value.body, exc.value.body
    stored = pools.api.get_namespaced_custom_object(api.GROUP, api.VERSION, pools.namespace, api.PLURAL, "on-change")
    kept = stored["spec"]["discovery"]["static"]["endpoints"]
    assert [(e["name"], e["address"], e["port"], e.get("labels")) for e in kept] == [
        (e["name"], e["address"], e["port"], None) for e in eps
    ]
