"""The Helm chart with the real helm binary: lint, render, and install, upgrade and
uninstall against the real apiserver. There is no kubelet here, so the operator's pod never
starts; the objects the chart creates, and their permissions, are what is checked."""

import json
import os
import subprocess
import uuid

import pytest
import yaml

import helm
from conftest import ROOT

CHART = ROOT / "charts" / "clusterpool-operator"


@pytest.fixture(scope="module")
def helm_bin():
    return str(helm.build())


def run(helm_bin, *args, kubeconfig=None, check=True):
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/clusterpool-helm/cache", "HELM_CONFIG_HOME": "/tmp/clusterpool-helm"}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    r = subprocess.run([helm_bin, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r


def rendered(helm_bin, *sets):
    out = run(helm_bin, "template", "rel", str(CHART), "--namespace", "ops", *sets).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}


def test_the_chart_lints_clean(helm_bin):
    r = run(helm_bin, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


def test_the_chart_grants_exactly_the_install_manifests_rules(helm_bin):
    objs = rendered(helm_bin)
    manifests = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests/install/rbac.yaml").read_text())}
    role = objs[("ClusterRole", "rel-clusterpool-operator")]
    assert role["rules"] == manifests["ClusterRole"]["rules"]
    binding = objs[("ClusterRoleBinding", "rel-clusterpool-operator")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-clusterpool-operator", "namespace": "ops"}]
    shards = objs[("Role", "rel-clusterpool-operator-shards")]
    assert shards["metadata"]["namespace"] == "ops" and shards["rules"] == manifests["Role"]["rules"]
    shards_binding = objs[("RoleBinding", "rel-clusterpool-operator-shards")]
    assert shards_binding["roleRef"]["name"] == "rel-clusterpool-operator-shards"
    assert shards_binding["subjects"] == binding["subjects"]


def test_the_deployment_is_one_replica_by_default_with_values_applied(helm_bin):
    objs = rendered(helm_bin)
    dep = objs[("Deployment", "rel-clusterpool-operator")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the identity kopf needs
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["CLUSTERPOOL_LEASE_SECONDS"]["value"] == "15"
    scaled = rendered(helm_bin, "--set", "replicas=3", "--set", "leaseSeconds=30")
    dep3 = scaled[("Deployment", "rel-clusterpool-operator")]
    assert dep3["spec"]["replicas"] == 3
    assert {e["name"]: e for e in dep3["spec"]["template"]["spec"]["containers"][0]["env"]}[
        "CLUSTERPOOL_LEASE_SECONDS"
    ]["value"] == "30"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "clusterpool-operator:0.1.0"  # the chart's appVersion
    assert container["args"] == [
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--metrics",
        "http://0.0.0.0:9090/metrics",
    ]
    assert objs[("Service", "rel-clusterpool-operator-metrics")]["spec"]["ports"][0]["port"] == 9090
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    objs = rendered(
        helm_bin, "--set", "watchNamespaces={team-a,team-b}", "--set", "image.tag=9.9", "--set", "rbac.create=false"
    )
    container = objs[("Deployment", "rel-clusterpool-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert container["image"].endswith(":9.9")
    assert not any(kind == "ClusterRole" for kind, _ in objs)

    objs = rendered(helm_bin, "--set", "metrics.serviceMonitor.enabled=true")
    monitor = objs[("ServiceMonitor", "rel-clusterpool-operator")]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]
    objs = rendered(helm_bin, "--set", "metrics.enabled=false")
    container = objs[("Deployment", "rel-clusterpool-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics" not in container["args"] and not any(kind == "Service" for kind, _ in objs)


def test_install_upgrade_uninstall_on_the_apiserver(helm_bin, cluster, kubectl, crd):
    ns, release = f"ops-{uuid.uuid4().hex[:6]}", f"cp{uuid.uuid4().hex[:4]}"
    kc = cluster.kubeconfig
    run(helm_bin, "install", release, str(CHART), "-n", ns, "--create-namespace", "--wait=false", kubeconfig=kc)
    try:
        name = f"{release}-clusterpool-operator"
        status = json.loads(run(helm_bin, "status", release, "-n", ns, "-o", "json", kubeconfig=kc).stdout)
        assert status["info"]["status"] == "deployed"
        for kind in ("serviceaccount", "deployment"):
            kubectl("get", kind, name, "-n", ns)
        kubectl("get", "clusterrole", name)
        # the chart's service account may do what the operator needs, and no more
        sa = f"--as=system:serviceaccount:{ns}:{name}"
        can = lambda *a: kubectl("auth", "can-i", *a, sa, check=False).stdout.strip() == "yes"  # noqa: E731
        assert can("patch", "clusterpools.clusterpool.dev/status", "-A")
        assert can("get", "secrets", "-n", "default") and not can("list", "secrets", "-n", "default")

        run(helm_bin, "upgrade", release, str(CHART), "-n", ns, "--set", "watchNamespaces={team-a}", kubeconfig=kc)
        args = json.loads(kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)["spec"]["template"]
        assert args["spec"]["containers"][0]["args"][-2:] == ["--namespace", "team-a"]
    finally:
        run(helm_bin, "uninstall", release, "-n", ns, kubeconfig=kc)
    assert kubectl("get", "clusterrole", f"{release}-clusterpool-operator", check=False).returncode != 0
    kubectl("get", "crd", "clusterpools.clusterpool.dev")  # Helm never deletes CRDs
    kubectl("delete", "namespace", ns, "--wait=false")
