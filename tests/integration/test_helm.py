"""The Helm chart with the real helm binary: lint, render, and install, upgrade and
uninstall against the real apiserver, which also checks every rendered variant
(`kubectl apply --dry-run=server --validate=strict`). There is no kubelet here, so the
pods never start; the objects the chart creates, and their permissions, are what is
checked, and the operator itself runs as a process under the chart's ServiceAccount."""

import json
import re
import subprocess
import uuid

import pytest
import yaml

import layout
from conftest import (
    CHART,
    KUBE_VERSION,
    ROOT,
    OperatorProcess,
    endpoints_of,
    helm_rendered,
    helm_run,
    service_account_kubeconfig,
    wait_for,
)

CRD_FILE = ROOT / "crds" / "clusterpool.dev_clusterpools.yaml"
FULL_VALUES = ROOT / "tests" / "chart" / "values-full.yaml"
NAME = "rel-clusterpool-operator"
GATEWAY = f"{NAME}-gateway"
# The Prometheus Operator's kinds: this apiserver has not their CRDs; promtool checks the
# rules (test_alerts.py), and the tests below check the ServiceMonitor's fields.
NOT_ON_THIS_APISERVER = {"ServiceMonitor", "PrometheusRule"}


def rendered_list(helm_bin, *sets, namespace="ops"):
    """`helm template` as release "rel": every object, in order (Roles of the same name in
    several namespaces included)."""
    out = helm_run(helm_bin, "template", "rel", str(CHART), "--namespace", namespace, *KUBE_VERSION, *sets).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def container_of(objs, name=NAME):
    return objs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def install_rules():
    return {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((ROOT / "manifests/install/10-rbac.yaml").read_text())
    }


CRD_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}


def test_the_chart_lints_clean(helm_bin):
    r = helm_run(helm_bin, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


# -- the CRD ---------------------------------------------------------------------------


def test_the_chart_renders_the_crd_of_the_crds_directory(helm_bin):
    """The chart manages the CRD as a template (helm upgrade upgrades it), read from its
    copy of crds/: the two agree, and the chart has no crds/ directory Helm would skip."""
    source = yaml.safe_load(CRD_FILE.read_text())
    crd = helm_rendered(helm_bin)[("CustomResourceDefinition", source["metadata"]["name"])]
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert not (CHART / "crds").exists()
    unkept = helm_rendered(helm_bin, "--set", "crds.keep=false")[
        ("CustomResourceDefinition", source["metadata"]["name"])
    ]
    assert "annotations" not in unkept["metadata"]
    assert not any(
        kind == "CustomResourceDefinition" for kind, _ in helm_rendered(helm_bin, "--set", "crds.enabled=false")
    )


def old_crd_with_endpoints_as_a_map():
    """The CRD before commit 5758458 (status.endpoints a list-map by name), from git."""
    return subprocess.run(
        ["git", "show", "5758458^:crds/clusterpool.dev_clusterpools.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def endpoints_list_type(kubectl):
    crd = json.loads(kubectl("get", "crd", "clusterpools.clusterpool.dev", "-o", "json").stdout)
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return status["properties"]["endpoints"].get("x-kubernetes-list-type")


def test_install_upgrades_the_crd_and_uninstall_keeps_it(helm_bin, cluster, kubectl, crd):
    """A CRD applied by hand before (here the one before status.endpoints turned atomic) is
    taken over by `helm install --take-ownership`, brought to the chart's version, and left
    in place by `helm uninstall` (crds.keep)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=old_crd_with_endpoints_as_a_map())
    assert endpoints_list_type(kubectl) == "map"
    ns, release = f"ops-{uuid.uuid4().hex[:6]}", f"cp{uuid.uuid4().hex[:4]}"
    kc = cluster.kubeconfig
    try:
        refused = helm_run(
            helm_bin, "install", release, str(CHART), "-n", ns, "--create-namespace", kubeconfig=kc, check=False
        )
        assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr
        again = ("install", f"{release}b", str(CHART), "-n", ns, "--create-namespace", "--take-ownership")
        helm_run(helm_bin, *again, kubeconfig=kc)
        assert endpoints_list_type(kubectl) == "atomic"
    finally:
        helm_run(helm_bin, "uninstall", f"{release}b", "-n", ns, kubeconfig=kc, check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kept = json.loads(kubectl("get", "crd", "clusterpools.clusterpool.dev", "-o", "json").stdout)
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kubectl("apply", "-f", str(CRD_FILE))  # as the session's other tests expect it


# -- RBAC -------------------------------------------------------------------------------


def test_the_chart_grants_exactly_the_install_manifests_rules(helm_bin):
    objs = helm_rendered(helm_bin)
    manifests = install_rules()
    role = objs[("ClusterRole", NAME)]
    assert role["rules"] == manifests[("ClusterRole", "clusterpool-operator")]["rules"]
    binding = objs[("ClusterRoleBinding", NAME)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "ops"}]
    shards = objs[("Role", f"{NAME}-shards")]
    assert shards["metadata"]["namespace"] == "ops"
    assert shards["rules"] == manifests[("Role", "clusterpool-operator-shards")]["rules"]
    shards_binding = objs[("RoleBinding", f"{NAME}-shards")]
    assert shards_binding["roleRef"]["name"] == f"{NAME}-shards"
    assert shards_binding["subjects"] == binding["subjects"]
    aggregate = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((ROOT / "manifests/install/11-rbac-aggregate.yaml").read_text())
    }
    for suffix in ("edit", "view"):
        chart, plain = (
            objs[("ClusterRole", f"{NAME}-{suffix}")],
            aggregate[("ClusterRole", f"clusterpool-operator-{suffix}")],
        )
        assert chart["rules"] == plain["rules"]
        assert {k: v for k, v in chart["metadata"]["labels"].items() if k.startswith("rbac.")} == {
            k: v for k, v in plain["metadata"]["labels"].items() if k.startswith("rbac.")
        }


def test_watched_namespaces_by_name_get_roles_and_no_cluster_wide_secret_access(helm_bin):
    objs = rendered_list(helm_bin, "--set", "watchNamespaces={team-a,team-b}")
    namespaced = [r for r in install_rules()[("ClusterRole", "clusterpool-operator")]["rules"] if r != CRD_RULE]
    cluster_role = next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == NAME)
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        CRD_RULE,
    ]
    roles = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == NAME}
    assert set(roles) == {"team-a", "team-b"}
    assert all(r["rules"] == namespaced for r in roles.values())
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == NAME]
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "ops"}] for b in bindings)
    # a glob names no namespace a Role could go in: the cluster-wide role, as without watchNamespaces
    globbed = helm_rendered(helm_bin, "--set", "watchNamespaces={team-*}")
    assert globbed[("ClusterRole", NAME)]["rules"] == install_rules()[("ClusterRole", "clusterpool-operator")]["rules"]
    assert not any(kind == "Role" and name == NAME for kind, name in globbed)


def can_i(kubectl, user, verb, resource, namespace, *extra):
    where = ["-A"] if namespace is None else ["-n", namespace]
    return kubectl("auth", "can-i", verb, resource, *where, f"--as={user}", *extra, check=False).stdout.strip() == "yes"


@pytest.fixture
def watched_release(helm_bin, cluster, kubectl, crd):
    """The chart installed with watchNamespaces (two of them, and a third not watched) and
    the gateway; yields (release namespace, watched, not watched, full name)."""
    suffix = uuid.uuid4().hex[:6]
    ns, watched, other = f"ops-{suffix}", [f"team-a-{suffix}", f"team-b-{suffix}"], f"other-{suffix}"
    for n in (*watched, other):
        kubectl("create", "namespace", n)
    release = f"w{suffix}"
    sets = ["--set", f"watchNamespaces={{{','.join(watched)}}}", "--set", "crds.enabled=false"]
    sets += ["--set", "gateway.enabled=true", "--set", "gateway.apiKeysSecret=gateway-keys"]
    helm_run(
        helm_bin, "install", release, str(CHART), "-n", ns, "--create-namespace", *sets, kubeconfig=cluster.kubeconfig
    )
    yield ns, watched, other, f"{release}-clusterpool-operator"
    helm_run(helm_bin, "uninstall", release, "-n", ns, kubeconfig=cluster.kubeconfig, check=False)
    for n in (ns, *watched, other):
        kubectl("delete", "namespace", n, "--wait=false", check=False)


def test_with_watch_namespaces_the_service_account_reads_secrets_there_only(kubectl, watched_release):
    ns, watched, other, name = watched_release
    sa = f"system:serviceaccount:{ns}:{name}"
    for n in watched:
        assert can_i(kubectl, sa, "get", "secrets", n)
        assert can_i(kubectl, sa, "patch", "clusterpools.clusterpool.dev", n, "--subresource=status")
        assert can_i(kubectl, sa, "create", "endpointslices.discovery.k8s.io", n)
        assert not can_i(kubectl, sa, "list", "secrets", n)
    for n in (other, "default", "kube-system"):
        assert not can_i(kubectl, sa, "get", "secrets", n)
        assert not can_i(kubectl, sa, "list", "configmaps", n)
        assert not can_i(kubectl, sa, "watch", "clusterpools.clusterpool.dev", n)
    assert not can_i(kubectl, sa, "get", "secrets", None)
    assert can_i(kubectl, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert can_i(kubectl, sa, "update", "leases.coordination.k8s.io", ns)

    # the gateway: the routing ConfigMaps of the served namespaces, its API-key Secret, nothing else
    gw = f"system:serviceaccount:{ns}:{name}-gateway"
    for verb in ("get", "list", "watch"):
        assert all(can_i(kubectl, gw, verb, "configmaps", n) for n in watched)
        assert not can_i(kubectl, gw, verb, "configmaps", other)
    assert not can_i(kubectl, gw, "create", "configmaps", watched[0])
    assert can_i(kubectl, gw, "get", "secrets/gateway-keys", ns)
    assert not can_i(kubectl, gw, "get", "secrets/another", ns) and not can_i(kubectl, gw, "list", "secrets", ns)
    assert not any(can_i(kubectl, gw, "get", "secrets", n) for n in watched)
    assert not can_i(kubectl, gw, "list", "clusterpools.clusterpool.dev", watched[0])


def test_the_operator_runs_a_pool_under_the_charts_namespaced_roles(
    cluster, k8s, kubectl, operator, net_backends, tmp_path, watched_release
):
    """The operator, authenticated as the chart's ServiceAccount with a real token, drives a
    pool in a watched namespace with the per-namespace Roles alone: nothing it calls is
    forbidden (it lists what it published in the watched namespaces, not across all)."""
    ns, watched, _, name = watched_release
    kc = service_account_kubeconfig(cluster.kubeconfig, k8s, ns, name, tmp_path / "sa-kubeconfig")
    operator.stop()  # one operator at a time handles a pool
    args = ("--lease-namespace", ns, *(a for n in watched for a in ("--namespace", n)))
    restricted = OperatorProcess(kc, tmp_path, args=args)
    pool = {
        "apiVersion": "clusterpool.dev/v1alpha1",
        "kind": "ClusterPool",
        "metadata": {"name": "p", "namespace": watched[0]},
        "spec": {
            "discovery": {"static": {"endpoints": endpoints_of(net_backends(2))}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}},
        },
    }
    try:
        restricted.start()
        kubectl("apply", "-f", "-", stdin=json.dumps(pool))

        def status():
            got = json.loads(kubectl("get", "clusterpool", "p", "-n", watched[0], "-o", "json").stdout)
            return got.get("status") or {}

        wait_for(lambda: status().get("healthy") == 2, 30, "the pool Ready with 2 healthy endpoints", describe=status)
        wait_for(
            lambda: kubectl("get", "configmap", "p-routing", "-n", watched[0], check=False).returncode == 0,
            10,
            "the routing ConfigMap",
        )
        kubectl("delete", "clusterpool", "p", "-n", watched[0], "--timeout=30s")
        log = restricted.log.read_text()
        assert "Forbidden" not in log and " 403" not in log and "could not list" not in log, log[-3000:]
    finally:
        restricted.stop()
        operator.start()


def test_a_namespace_editor_may_create_clusterpools_through_the_aggregated_role(helm_bin, cluster, kubectl, crd):
    """The chart's aggregate-to-edit ClusterRole grants what the edit role then carries (the
    aggregation itself is the controller manager's, which runs on the real node: tests/e2e);
    a user bound to it in a namespace creates a pool there and nowhere else."""
    suffix = uuid.uuid4().hex[:6]
    ns, team, release = f"ops-{suffix}", f"team-{suffix}", f"a{suffix}"
    kubectl("create", "namespace", team)
    helm_run(
        helm_bin,
        "install",
        release,
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--set",
        "crds.enabled=false",
        kubeconfig=cluster.kubeconfig,
    )
    try:
        role = json.loads(kubectl("get", "clusterrole", f"{release}-clusterpool-operator-edit", "-o", "json").stdout)
        assert role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
        kubectl(
            "create",
            "rolebinding",
            "alice-edit",
            "-n",
            team,
            f"--clusterrole={release}-clusterpool-operator-edit",
            "--user=alice",
        )
        pool = {
            "apiVersion": "clusterpool.dev/v1alpha1",
            "kind": "ClusterPool",
            "metadata": {"name": "mine", "namespace": team},
            "spec": {"discovery": {"static": {"endpoints": [{"name": "a", "address": "198.18.0.9", "port": 80}]}}},
        }
        kubectl("create", "--dry-run=server", "-f", "-", "--as=alice", stdin=json.dumps(pool))
        elsewhere = {**pool, "metadata": {"name": "mine", "namespace": "default"}}
        r = kubectl("create", "--dry-run=server", "-f", "-", "--as=alice", stdin=json.dumps(elsewhere), check=False)
        assert r.returncode != 0 and "forbidden" in r.stderr
        assert not can_i(kubectl, "alice", "patch", "clusterpools.clusterpool.dev", team, "--subresource=status")
        assert not can_i(kubectl, "bob", "list", "clusterpools.clusterpool.dev", team)
    finally:
        helm_run(helm_bin, "uninstall", release, "-n", ns, kubeconfig=cluster.kubeconfig, check=False)
        for n in (ns, team):
            kubectl("delete", "namespace", n, "--wait=false", check=False)


# -- the operator's Deployment ------------------------------------------------------------


def test_the_deployment_is_one_replica_by_default_with_values_applied(helm_bin):
    objs = helm_rendered(helm_bin)
    dep = objs[("Deployment", NAME)]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the identity kopf needs
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["CLUSTERPOOL_LEASE_SECONDS"]["value"] == "15"
    scaled = helm_rendered(helm_bin, "--set", "replicas=3", "--set", "leaseSeconds=30")
    dep3 = scaled[("Deployment", NAME)]
    assert dep3["spec"]["replicas"] == 3
    assert {e["name"]: e for e in container_of(scaled)["env"]}["CLUSTERPOOL_LEASE_SECONDS"]["value"] == "30"
    container = container_of(objs)
    assert container["image"] == f"{layout.IMAGE}:{layout.version()}"  # where the project publishes; appVersion
    assert container["args"] == [
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--readiness",
        "http://0.0.0.0:8081/readyz",
        "--metrics",
        "http://0.0.0.0:9090/metrics",
    ]
    assert objs[("Service", f"{NAME}-metrics")]["spec"]["ports"][0]["port"] == 9090
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    objs = helm_rendered(
        helm_bin, "--set", "watchNamespaces={team-a,team-b}", "--set", "image.tag=9.9", "--set", "rbac.create=false"
    )
    container = container_of(objs)
    assert container["args"][6:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert container["image"].endswith(":9.9")
    assert not any(kind in ("ClusterRole", "Role") for kind, _ in objs)

    objs = helm_rendered(helm_bin, "--set", "metrics.enabled=false")
    assert "--metrics" not in container_of(objs)["args"] and not any(kind == "Service" for kind, _ in objs)


def test_rollouts_wait_until_a_replica_drives_its_share(helm_bin):
    """readinessProbe on the operator's /readyz (ready once it holds its Lease and the
    hand-over wait is over), a startupProbe before liveness counts, minReadySeconds."""
    objs = helm_rendered(helm_bin)
    dep = objs[("Deployment", NAME)]
    container = container_of(objs)
    assert dep["spec"]["minReadySeconds"] == 5
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "ready": 8081, "metrics": 9090}
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "ready"},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 120
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    tuned = helm_rendered(
        helm_bin,
        "--set", "readinessProbe.periodSeconds=5", "--set", "livenessProbe.initialDelaySeconds=7",
        "--set", "startupProbe.enabled=false", "--set", "minReadySeconds=0",
    )  # fmt: skip
    container = container_of(tuned)
    assert container["readinessProbe"]["periodSeconds"] == 5 and container["livenessProbe"]["initialDelaySeconds"] == 7
    assert "startupProbe" not in container and tuned[("Deployment", NAME)]["spec"]["minReadySeconds"] == 0
    unready = container_of(helm_rendered(helm_bin, "--set", "readinessProbe.enabled=false"))
    assert "readinessProbe" not in unready and "--readiness" not in unready["args"]


def test_the_standard_settings(helm_bin):
    digest = "sha256:" + "ab" * 32
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
    objs = rendered_list(
        helm_bin,
        "--set", f"image.digest={digest}",
        "--set", "fullnameOverride=cpo",
        "--set", "commonLabels.team=platform",
        "--set-json", 'extraEnv=[{"name":"HTTPS_PROXY","value":"http://127.0.0.1:3128"}]',
        "--set-json", 'envFrom=[{"configMapRef":{"name":"operator-env"}}]',
        "--set-json", 'extraVolumes=[{"name":"ca","configMap":{"name":"ca-bundle"}}]',
        "--set-json", 'extraVolumeMounts=[{"name":"ca","mountPath":"/etc/ca","readOnly":true}]',
        "--set-json", f"topologySpreadConstraints={json.dumps([spread])}",
    )  # fmt: skip
    assert all(o["metadata"]["labels"]["team"] == "platform" for o in objs)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    dep = by_key[("Deployment", "cpo")]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith(f"@{digest}") and ":" not in container["image"].split("@")[0]
    assert {"name": "HTTPS_PROXY", "value": "http://127.0.0.1:3128"} in container["env"]
    assert container["envFrom"] == [{"configMapRef": {"name": "operator-env"}}]
    assert pod["volumes"] == [{"name": "ca", "configMap": {"name": "ca-bundle"}}]
    assert container["volumeMounts"] == [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}]
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
        }
    ]
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    renamed = helm_rendered(helm_bin, "--set", "nameOverride=pools")
    assert ("Deployment", "rel-pools") in renamed
    assert renamed[("Deployment", "rel-pools")]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "pools"


def test_the_chart_works_as_a_subchart(helm_bin):
    """An umbrella chart passes `global` to every subchart: the schema takes it."""
    helm_run(helm_bin, "lint", "--strict", str(CHART), "--set", "global.imageRegistry=registry.example")
    assert ("Deployment", NAME) in helm_rendered(helm_bin, "--set", "global.storageClass=fast")


def test_chart_metadata(helm_bin):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.31.0-0"  # the CRD's CEL rules use isIP() (the IP library, 1.31)
    assert "optionalOldSelf: true" in CRD_FILE.read_text()
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert "artifacthub.io/crds" in chart["annotations"]
    r = helm_run(helm_bin, "template", "rel", str(CHART), "--kube-version", "1.29.9", check=False)
    assert r.returncode != 0 and "kubeVersion" in r.stderr


# -- monitoring ------------------------------------------------------------------------


def test_the_service_monitor_and_the_dashboard_settings(helm_bin):
    objs = helm_rendered(helm_bin, "--set", "metrics.serviceMonitor.enabled=true")
    assert objs[("ServiceMonitor", NAME)]["spec"]["endpoints"] == [
        {"port": "metrics", "interval": "30s", "honorLabels": True}
    ]
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "clusterpool_gc_.*", "action": "drop"}]
    objs = helm_rendered(
        helm_bin,
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.scrapeTimeout=20s",
        "--set-json", f"metrics.serviceMonitor.relabelings={json.dumps(relabel)}",
        "--set-json", f"metrics.serviceMonitor.metricRelabelings={json.dumps(drop)}",
        "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring",
    )  # fmt: skip
    endpoint = objs[("ServiceMonitor", NAME)]["spec"]["endpoints"][0]
    assert endpoint["scrapeTimeout"] == "20s" and endpoint["relabelings"] == relabel
    assert endpoint["metricRelabelings"] == drop
    assert objs[("ConfigMap", f"{NAME}-dashboard")]["metadata"]["namespace"] == "monitoring"


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
    board = objs[("ConfigMap", f"{NAME}-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["clusterpool.json"])["uid"] == "clusterpool-operator"
    assert "clusterpool-gateway.json" not in board["data"]
    rule = objs[("PrometheusRule", NAME)]
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert [g["name"] for g in rule["spec"]["groups"]] == ["clusterpool"]


# The gateway's metrics (the contract between the chart and python -m clusterpool.gateway).
GATEWAY_METRICS = {
    "clusterpool_gateway_requests_total": {"namespace", "pool", "endpoint", "code"},
    "clusterpool_gateway_time_to_first_byte_seconds_bucket": {"namespace", "pool", "le"},
    "clusterpool_gateway_request_duration_seconds_bucket": {"namespace", "pool", "le"},
    "clusterpool_gateway_retries_total": {"namespace", "pool", "reason"},
    "clusterpool_gateway_ejections_total": {"namespace", "pool", "endpoint"},
    "clusterpool_gateway_in_flight": {"namespace", "pool"},
    "clusterpool_gateway_rejected_total": {"reason"},
}


def test_the_gateway_dashboard_reads_every_gateway_metric_and_only_those(helm_bin):
    objs = helm_rendered(helm_bin, "--set", "grafanaDashboard.enabled=true", "--set", "gateway.enabled=true")
    board = json.loads(objs[("ConfigMap", f"{NAME}-dashboard")]["data"]["clusterpool-gateway.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(clusterpool_gateway_\w+)", e)}
    assert used == set(GATEWAY_METRICS), used ^ set(GATEWAY_METRICS)
    for expr in exprs:  # every label a panel groups by is one its metric has
        for metric, labels in GATEWAY_METRICS.items():
            if metric in expr:
                for by in re.findall(r"by \(([^)]*)\)", expr):
                    assert {x.strip() for x in by.split(",")} <= labels, (metric, by)


# -- the gateway -------------------------------------------------------------------------


def test_the_gateway_is_off_by_default(helm_bin):
    assert not any("gateway" in name for _, name in helm_rendered(helm_bin))


def test_the_gateway_deployment_follows_the_cli_contract(helm_bin):
    objs = helm_rendered(
        helm_bin,
        "--set", "gateway.enabled=true", "--set", "watchNamespaces={team-a,team-b}",
        "--set", "gateway.apiKeysSecret=gateway-keys",
    )  # fmt: skip
    dep = objs[("Deployment", GATEWAY)]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "clusterpool.gateway"]
    assert container["args"] == [
        "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9091",
        "--namespace", "team-a", "--namespace", "team-b",
        "--api-keys-secret", "ops/gateway-keys",
    ]  # fmt: skip
    assert container["image"] == container_of(objs)["image"]  # the same image, another entry point
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 60 and dep["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == GATEWAY
    assert container["resources"]["requests"]["cpu"] == "250m"
    # the operator's Deployment, PDB and metrics Service do not select the gateway's pods
    gateway_labels = dep["spec"]["template"]["metadata"]["labels"]
    operator_selector = objs[("Deployment", NAME)]["spec"]["selector"]["matchLabels"]
    assert not operator_selector.items() <= gateway_labels.items()
    assert objs[("Service", GATEWAY)]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert objs[("Service", f"{GATEWAY}-metrics")]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pdb = objs[("PodDisruptionBudget", GATEWAY)]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}
    assert ("HorizontalPodAutoscaler", GATEWAY) not in objs
    # namespaces of its own win over watchNamespaces; none at all: every namespace
    own = container_of(
        helm_rendered(helm_bin, "--set", "gateway.enabled=true", "--set", "gateway.namespaces={x}"), GATEWAY
    )
    assert own["args"][4:] == ["--namespace", "x"]
    everywhere = helm_rendered(helm_bin, "--set", "gateway.enabled=true")
    assert container_of(everywhere, GATEWAY)["args"] == ["--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9091"]
    assert everywhere[("ClusterRole", GATEWAY)]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
    ]


def test_the_gateway_autoscales_and_its_network_policy_admits_clients_and_monitoring(helm_bin):
    clients = [{"namespaceSelector": {"matchLabels": {"gateway-access": "true"}}}]
    objs = helm_rendered(
        helm_bin,
        "--set", "gateway.enabled=true", "--set", "gateway.autoscaling.enabled=true",
        "--set", "gateway.autoscaling.maxReplicas=6",
        "--set-json", f"gateway.networkPolicy.clientPeers={json.dumps(clients)}",
        "--set", "metrics.serviceMonitor.enabled=true",
    )  # fmt: skip
    assert "replicas" not in objs[("Deployment", GATEWAY)]["spec"]
    hpa = objs[("HorizontalPodAutoscaler", GATEWAY)]["spec"]
    assert hpa["scaleTargetRef"]["name"] == GATEWAY and (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    policy = objs[("NetworkPolicy", GATEWAY)]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": "http"}], "from": clients},
        {
            "ports": [{"protocol": "TCP", "port": "admin"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    ]
    monitor = objs[("ServiceMonitor", GATEWAY)]["spec"]["endpoints"]
    assert monitor == [{"port": "admin", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    assert not any(
        kind == "NetworkPolicy"
        for kind, _ in helm_rendered(
            helm_bin, "--set", "gateway.enabled=true", "--set", "gateway.networkPolicy.enabled=false"
        )
    )


# -- every variant, checked by the API server ----------------------------------------------

VARIANTS = {
    "defaults": [],
    "every-value": ["-f", str(FULL_VALUES)],
    "namespaced": ["--set", "watchNamespaces={NS-a,NS-b}", "--set", "replicas=3"],
    "gateway": [
        "--set", "gateway.enabled=true", "--set", "gateway.autoscaling.enabled=true",
        "--set", "gateway.apiKeysSecret=keys", "--set", "watchNamespaces={NS-a}",
        "--set", "grafanaDashboard.enabled=true",
    ],
    "no-crd-no-rbac": [
        "--set", "crds.enabled=false", "--set", "rbac.create=false",
        "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=x",
    ],
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_accepted_by_the_api_server(helm_bin, kubectl, crd, variant):
    """`kubectl apply --dry-run=server --validate=strict`: the API server validates every
    rendered object against its schema (an unknown or misplaced field is refused)."""
    suffix = uuid.uuid4().hex[:6]
    ns = f"dry-{suffix}"
    sets = [a.replace("NS-", f"{ns}-") for a in VARIANTS[variant]]
    objs = rendered_list(helm_bin, *sets, "--set", f"grafanaDashboard.namespace={ns}", namespace=ns)
    checked = [o for o in objs if o["kind"] not in NOT_ON_THIS_APISERVER]
    namespaces = {o["metadata"].get("namespace") for o in checked} - {None}
    for n in namespaces:
        kubectl("create", "namespace", n, check=False)
    try:
        r = kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-",
            stdin="\n---\n".join(yaml.safe_dump(o) for o in checked), check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("(server dry run)") == len(checked), r.stdout
    finally:
        for n in namespaces:
            if n.startswith("dry-"):
                kubectl("delete", "namespace", n, "--wait=false", check=False)


def test_the_api_server_refuses_a_misplaced_field(kubectl, crd, helm_bin):
    """The dry run above can fail: a field the schema does not have is refused."""
    ns = f"dry-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    try:
        dep = helm_rendered(helm_bin)[("Deployment", NAME)]
        dep["metadata"]["namespace"] = ns
        dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
        r = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=json.dumps(dep), check=False)
        assert r.returncode != 0 and "readinesProbe" in r.stderr, r.stderr
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


# -- install, upgrade, uninstall ----------------------------------------------------------


def test_install_upgrade_uninstall_on_the_apiserver(helm_bin, cluster, kubectl, crd):
    ns, release, team = f"ops-{uuid.uuid4().hex[:6]}", f"cp{uuid.uuid4().hex[:4]}", f"team-{uuid.uuid4().hex[:6]}"
    kc = cluster.kubeconfig
    kubectl("create", "namespace", team)
    helm_run(
        helm_bin, "install", release, str(CHART), "-n", ns, "--create-namespace", "--wait=false",
        "--set", "crds.enabled=false", kubeconfig=kc,
    )  # fmt: skip
    try:
        name = f"{release}-clusterpool-operator"
        status = json.loads(helm_run(helm_bin, "status", release, "-n", ns, "-o", "json", kubeconfig=kc).stdout)
        assert status["info"]["status"] == "deployed"
        for kind in ("serviceaccount", "deployment"):
            kubectl("get", kind, name, "-n", ns)
        kubectl("get", "clusterrole", name)
        # the chart's service account may do what the operator needs, and no more
        sa = f"system:serviceaccount:{ns}:{name}"
        assert can_i(kubectl, sa, "patch", "clusterpools.clusterpool.dev/status", None)
        assert can_i(kubectl, sa, "get", "secrets", "default") and not can_i(kubectl, sa, "list", "secrets", "default")

        upgrade = ("upgrade", release, str(CHART), "-n", ns, "--reuse-values", "--set", f"watchNamespaces={{{team}}}")
        helm_run(helm_bin, *upgrade, kubeconfig=kc)
        args = json.loads(kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)["spec"]["template"]
        assert args["spec"]["containers"][0]["args"][-2:] == ["--namespace", team]
        assert not can_i(kubectl, sa, "get", "secrets", "default")  # the upgrade took the cluster-wide grant back
    finally:
        helm_run(helm_bin, "uninstall", release, "-n", ns, kubeconfig=kc)
    assert kubectl("get", "clusterrole", f"{release}-clusterpool-operator", check=False).returncode != 0
    kubectl("get", "crd", "clusterpools.clusterpool.dev")
    for n in (ns, team):
        kubectl("delete", "namespace", n, "--wait=false")


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
    dep = objs[("Deployment", "cpo")]
    assert dep["spec"]["replicas"] == 3
    kinds = {kind for kind, _ in objs}
    assert kinds >= {"PodDisruptionBudget", "PrometheusRule", "ServiceMonitor", "ConfigMap", "NetworkPolicy"}
    assert "HorizontalPodAutoscaler" in kinds and "CustomResourceDefinition" not in kinds  # crds.enabled: false


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
    (["image.digest=latest"], "/image/digest"),
    (["prometheusRule.panicFor=5 minutes"], "/prometheusRule/panicFor"),
    (["prometheusRule.runbookBaseUrl=docs/operations.md"], "/prometheusRule/runbookBaseUrl"),  # not absolute
    (["podDisruptionBudget.maxUnavailable=0"], "/podDisruptionBudget/maxUnavailable"),
    (["watchNamespaces=team-a"], "/watchNamespaces"),  # a string, not a list
    (["readinessProbe.periodSecond=3"], "additional properties 'periodSecond' not allowed"),
    (["gateway.enable=true"], "additional properties 'enable' not allowed"),
    (["gateway.autoscaling.maxReplicas=0"], "/gateway/autoscaling/maxReplicas"),
    (["gateway.apiKeysSecret=ns/keys"], "/gateway/apiKeysSecret"),  # a name in the release's namespace
]


@pytest.mark.parametrize(("sets", "named"), BAD_VALUES, ids=[s[0] for s, _ in BAD_VALUES])
def test_the_schema_refuses_a_bad_value_in_template_lint_and_install(helm_bin, cluster, sets, named):
    args = [a for s in sets for a in ("--set", s)]
    for command in (["template", "rel", *KUBE_VERSION], ["lint", "--strict"]):
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
    pdb = objs[("PodDisruptionBudget", NAME)]
    dep = objs[("Deployment", NAME)]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}
    assert pdb["metadata"]["namespace"] == "ops"
    objs = helm_rendered(helm_bin, "--set", "replicas=3", "--set", "podDisruptionBudget.enabled=false")
    assert not any(kind == "PodDisruptionBudget" for kind, _ in objs)
