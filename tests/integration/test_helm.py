"""The Helm chart with the real helm binary: lint, render, and install, upgrade and
uninstall against the real apiserver. There is no kubelet here, so the operator's pod never
starts; the objects the chart creates, and their permissions, are what is checked."""

import json
import uuid

import pytest
import yaml

import layout
from conftest import CHART, ROOT, helm_rendered, helm_run


def test_the_chart_lints_clean(helm_bin):
    r = helm_run(helm_bin, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


def test_the_chart_grants_exactly_the_install_manifests_rules(helm_bin):
    objs = helm_rendered(helm_bin)
    manifests = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests/install/10-rbac.yaml").read_text())}
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
    objs = helm_rendered(helm_bin)
    dep = objs[("Deployment", "rel-clusterpool-operator")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the identity kopf needs
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["CLUSTERPOOL_LEASE_SECONDS"]["value"] == "15"
    scaled = helm_rendered(helm_bin, "--set", "replicas=3", "--set", "leaseSeconds=30")
    dep3 = scaled[("Deployment", "rel-clusterpool-operator")]
    assert dep3["spec"]["replicas"] == 3
    assert {e["name"]: e for e in dep3["spec"]["template"]["spec"]["containers"][0]["env"]}[
        "CLUSTERPOOL_LEASE_SECONDS"
    ]["value"] == "30"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{layout.IMAGE}:{layout.version()}"  # where the project publishes; appVersion
    assert container["args"] == [
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--metrics",
        "http://0.0.0.0:9090/metrics",
    ]
    assert objs[("Service", "rel-clusterpool-operator-metrics")]["spec"]["ports"][0]["port"] == 9090
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    objs = helm_rendered(
        helm_bin, "--set", "watchNamespaces={team-a,team-b}", "--set", "image.tag=9.9", "--set", "rbac.create=false"
    )
    container = objs[("Deployment", "rel-clusterpool-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert container["image"].endswith(":9.9")
    assert not any(kind == "ClusterRole" for kind, _ in objs)

    objs = helm_rendered(helm_bin, "--set", "metrics.serviceMonitor.enabled=true")
    monitor = objs[("ServiceMonitor", "rel-clusterpool-operator")]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s", "honorLabels": True}]
    objs = helm_rendered(helm_bin, "--set", "metrics.enabled=false")
    container = objs[("Deployment", "rel-clusterpool-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics" not in container["args"] and not any(kind == "Service" for kind, _ in objs)


def test_install_upgrade_uninstall_on_the_apiserver(helm_bin, cluster, kubectl, crd):
    ns, release = f"ops-{uuid.uuid4().hex[:6]}", f"cp{uuid.uuid4().hex[:4]}"
    kc = cluster.kubeconfig
    helm_run(helm_bin, "install", release, str(CHART), "-n", ns, "--create-namespace", "--wait=false", kubeconfig=kc)
    try:
        name = f"{release}-clusterpool-operator"
        status = json.loads(helm_run(helm_bin, "status", release, "-n", ns, "-o", "json", kubeconfig=kc).stdout)
        assert status["info"]["status"] == "deployed"
        for kind in ("serviceaccount", "deployment"):
            kubectl("get", kind, name, "-n", ns)
        kubectl("get", "clusterrole", name)
        # the chart's service account may do what the operator needs, and no more
        sa = f"--as=system:serviceaccount:{ns}:{name}"
        can = lambda *a: kubectl("auth", "can-i", *a, sa, check=False).stdout.strip() == "yes"  # noqa: E731
        assert can("patch", "clusterpools.clusterpool.dev/status", "-A")
        assert can("get", "secrets", "-n", "default") and not can("list", "secrets", "-n", "default")

        helm_run(helm_bin, "upgrade", release, str(CHART), "-n", ns, "--set", "watchNamespaces={team-a}", kubeconfig=kc)
        args = json.loads(kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)["spec"]["template"]
        assert args["spec"]["containers"][0]["args"][-2:] == ["--namespace", "team-a"]
    finally:
        helm_run(helm_bin, "uninstall", release, "-n", ns, kubeconfig=kc)
    assert kubectl("get", "clusterrole", f"{release}-clusterpool-operator", check=False).returncode != 0
    kubectl("get", "crd", "clusterpools.clusterpool.dev")  # Helm never deletes CRDs
    kubectl("delete", "namespace", ns, "--wait=false")


FULL_VALUES = ROOT / "tests" / "chart" / "values-full.yaml"


def key_paths(values, prefix=()):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from key_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def test_the_schema_accepts_the_defaults_and_a_file_setting_every_value(helm_bin):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    full = yaml.safe_load(FULL_VALUES.read_text())

    def has(values, path):
        return not path or (isinstance(values, dict) and path[0] in values and has(values[path[0]], path[1:]))

    missed = [".".join(p) for p in key_paths(defaults) if not has(full, p)]
    assert not missed, f"values-full.yaml misses {missed}"
    for args in ([], ["-f", str(FULL_VALUES)]):
        helm_run(helm_bin, "lint", "--strict", str(CHART), *args)
    objs = helm_rendered(helm_bin, "-f", str(FULL_VALUES))
    dep = objs[("Deployment", "rel-clusterpool-operator")]
    assert dep["spec"]["replicas"] == 3
    assert {kind for kind, _ in objs} >= {"PodDisruptionBudget", "PrometheusRule", "ServiceMonitor", "ConfigMap"}


BAD_VALUES = [
    # (--set arguments, what helm must name in its error)
    (["replica=3"], "additional properties 'replica' not allowed"),  # a typo of replicas
    (["metrics.serviceMonitor.enable=true"], "additional properties 'enable' not allowed"),
    (["securityContext.readOnlyRootFS=true"], "additional properties 'readOnlyRootFS' not allowed"),
    (["replicas=-1"], "/replicas"),
    (["replicas=three"], "got string, want integer"),
    (["leaseSeconds=1"], "/leaseSeconds"),
    (["metrics.port=70000"], "/metrics/port"),
    (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["prometheusRule.panicFor=5 minutes"], "/prometheusRule/panicFor"),
    (["podDisruptionBudget.maxUnavailable=0"], "/podDisruptionBudget/maxUnavailable"),
    (["watchNamespaces=team-a"], "/watchNamespaces"),  # a string, not a list
]


@pytest.mark.parametrize(("sets", "named"), BAD_VALUES, ids=[s[0] for s, _ in BAD_VALUES])
def test_the_schema_refuses_a_bad_value_in_template_lint_and_install(helm_bin, cluster, sets, named):
    args = [a for s in sets for a in ("--set", s)]
    for command in (["template", "rel"], ["lint", "--strict"]):
        r = helm_run(helm_bin, *command, str(CHART), *args, check=False)
        assert r.returncode != 0, f"helm {command[0]} accepted {sets}"
        assert named in r.stderr + r.stdout, r.stderr + r.stdout
    r = helm_run(
        helm_bin, "install", "bad", str(CHART), "-n", "default", *args, kubeconfig=cluster.kubeconfig, check=False
    )
    assert r.returncode != 0 and "values don't meet the specifications of the schema" in r.stderr, r.stderr
    assert "bad" not in helm_run(helm_bin, "list", "-n", "default", "-q", kubeconfig=cluster.kubeconfig).stdout


def test_a_pod_disruption_budget_only_with_more_than_one_replica(helm_bin):
    assert not any(kind == "PodDisruptionBudget" for kind, _ in helm_rendered(helm_bin))
    objs = helm_rendered(helm_bin, "--set", "replicas=3")
    pdb = objs[("PodDisruptionBudget", "rel-clusterpool-operator")]
    dep = objs[("Deployment", "rel-clusterpool-operator")]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}
    assert pdb["metadata"]["namespace"] == "ops"
    objs = helm_rendered(helm_bin, "--set", "replicas=3", "--set", "podDisruptionBudget.enabled=false")
    assert not any(kind == "PodDisruptionBudget" for kind, _ in objs)


def test_alerts_and_dashboard_are_off_by_default_and_labelled_when_on(helm_bin):
    assert not {"PrometheusRule", "ConfigMap"} & {kind for kind, _ in helm_rendered(helm_bin)}
    objs = helm_rendered(
        helm_bin,
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=prom",
    )
    board = objs[("ConfigMap", "rel-clusterpool-operator-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["clusterpool.json"])["uid"] == "clusterpool-operator"
    rule = objs[("PrometheusRule", "rel-clusterpool-operator")]
    assert rule["metadata"]["labels"]["release"] == "prom"
