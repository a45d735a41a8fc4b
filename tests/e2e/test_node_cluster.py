"""End to end on a real node (scripts/node.py): the chart installed with helm and the
locally built image, backends as pods behind a Service, the pool's published Service
routed by kube-proxy, the garbage collector. The tests run in order and share the release;
each one's state is checked before it acts."""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from nodekit import CHART, ROOT, Cluster, backend_objects, pool_object, wait_for

import layout

pytestmark = pytest.mark.timeout(900)

OPS = "ops"
APPS = "apps"
RELEASE = "rel"
FULLNAME = f"{RELEASE}-clusterpool-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/name=clusterpool-operator"
SA = f"system:serviceaccount:{OPS}:{FULLNAME}"
INTERVAL, UNHEALTHY = 2, 2
FLOOR = INTERVAL * UNHEALTHY
# Recorded into the repository's results by `make bench-node` (CLUSTERPOOL_RECORD=1); an
# ordinary test run leaves the tracked file alone and keeps its figures in /tmp.
RESULTS = (
    ROOT / "bench" / "results" if os.environ.get("CLUSTERPOOL_RECORD") == "1" else Path(tempfile.gettempdir())
) / "node_failover.json"


def operator_pod(cluster: Cluster) -> dict[str, Any]:
    return cluster.ready_pods(OPS, OPERATOR_SELECTOR, 1, timeout=180)[0]


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Cluster:
    cluster.kubectl("create", "namespace", OPS)
    cluster.kubectl("create", "namespace", APPS)
    cluster.helm("install", RELEASE, str(CHART), "-n", OPS, "--set", "image.pullPolicy=Never", "--wait", "--timeout=3m")
    for obj in backend_objects(APPS):
        cluster.apply(obj)
    return cluster


def test_the_chart_installs_and_the_operator_runs_as_deployed(release: Cluster) -> None:
    c = release
    pod = operator_pod(c)
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    container = spec["containers"][0]
    # the chart's default: the published name with the chart's appVersion (the image was loaded under it)
    assert container["image"] == f"{layout.IMAGE}:{layout.version()}" and container["imagePullPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # In-cluster configuration: no kubeconfig anywhere, the ServiceAccount token mounted.
    assert not any(e["name"] == "KUBECONFIG" for e in container.get("env", []))
    ident = c.kubectl(
        "exec", "-n", OPS, name, "--", "python", "-c",
        "import os;print(os.getuid(), os.getgid());"
        "print(os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token'));"
        "print(os.environ['KUBERNETES_SERVICE_HOST'])",
    ).stdout.split("\n")  # fmt: skip
    assert ident[0] == "65532 65532" and ident[1] == "True" and ident[2] == "198.18.128.1"
    ro = c.kubectl("exec", "-n", OPS, name, "--", "python", "-c", "open('/x', 'w')", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr

    # Only the chart's RBAC: what the operator needs, nothing else.
    def can(verb: str, resource: str, ns: str | None = APPS) -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={SA}"] + (["-n", ns] if ns else [])
        return c.kubectl(*args, check=False).stdout.strip() == "yes"

    assert can("watch", "clusterpools.clusterpool.dev") and can("patch", "clusterpools.clusterpool.dev")
    assert (
        c.kubectl(
            "auth", "can-i", "patch", "clusterpools.clusterpool.dev", "--subresource=status", f"--as={SA}", "-n", APPS
        ).stdout.strip()
        == "yes"
    )
    assert can("create", "endpointslices.discovery.k8s.io") and can("create", "services") and can("get", "secrets")
    assert not can("delete", "clusterpools.clusterpool.dev") and not can("list", "secrets")
    assert not can("create", "pods") and not can("delete", "deployments") and not can("delete", "nodes", None)

    # The operator works through that ServiceAccount: a pool gets its backends and status.
    c.ready_pods(APPS, "app=backend", 3)
    c.apply(pool_object(APPS, "p", INTERVAL, UNHEALTHY))
    wait_for(lambda: c.pool_status(APPS, "p").get("healthy") == 3, 60, "pool p with 3 healthy backends")

    # Liveness: answered through the kubelet (its prober counts successes), no restarts.
    def liveness_successes() -> int:
        raw = c.kubectl("get", "--raw", f"/api/v1/nodes/{c.run.node_name}/proxy/metrics/probes").stdout
        total = 0
        for line in raw.splitlines():
            wanted = ("prober_probe_total{", f'pod="{name}"', 'probe_type="Liveness"', 'result="successful"')
            if all(w in line for w in wanted):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    wait_for(lambda: liveness_successes() >= 2, 60, "two successful liveness probes by the kubelet", interval=2)
    pod = operator_pod(c)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    logs = c.kubectl("logs", "-n", OPS, name).stdout
    assert "getpwuid" not in logs and "Traceback" not in logs


def test_metrics_are_scraped_through_the_charts_service_from_another_pod(release: Cluster) -> None:
    c = release
    svc = c.get("service", f"{FULLNAME}-metrics", "-n", OPS)
    assert svc is not None, "the chart's metrics Service"
    url = f"http://{svc['spec']['clusterIP']}:9090/metrics"
    out = run_pod(
        c, "scrape", ["python", "-c", f"import urllib.request as u;print(u.urlopen('{url}').read().decode())"]
    )
    ready = re.search(r'^clusterpool_pool_ready\{[^}]*pool="p"[^}]*\} (\S+)$', out, re.M)
    assert ready and float(ready.group(1)) == 1.0, out[-2000:]
    assert re.search(r'^clusterpool_endpoint_healthy\{[^}]*pool="p"[^}]*\} 1\.0$', out, re.M), out[-2000:]


def run_pod(c: Cluster, name: str, command: list[str], timeout: float = 120) -> str:
    """Run a one-off pod of the backend image in APPS to completion; return its log."""
    c.start_pod(APPS, name, command)
    return c.finished_pod_log(APPS, name, timeout)


def pool_members(c: Cluster) -> dict[str, str]:
    return {e["name"]: e.get("health", "") for e in c.pool_status(APPS, "p").get("endpoints", [])}


def test_the_pool_follows_the_backends_service_and_its_own_checks(release: Cluster) -> None:
    c = release
    pods = c.ready_pods(APPS, "app=backend", 3)
    wait_for(lambda: c.pool_status(APPS, "p").get("healthy") == 3, 60, "pool p with 3 healthy backends")
    published = "clusterpool.dev/pool=p"
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(lambda: c.slice_addresses(APPS, published) == set(ips.values()), 30, "3 addresses published")
    assert c.get("service", "p", "-n", APPS) is not None

    # A backend pod deleted: the Deployment replaces it; the pool drops it and takes the new one.
    gone = sorted(ips)[0]
    c.kubectl("delete", "pod", gone, "-n", APPS, "--wait=false")
    wait_for(lambda: gone not in pool_members(c), 30, f"{gone} out of the pool's status")
    wait_for(lambda: ips[gone] not in c.slice_addresses(APPS, published), 30, f"{gone} unpublished")
    pods = c.ready_pods(APPS, "app=backend", 3)
    wait_for(lambda: c.pool_status(APPS, "p").get("healthy") == 3, 60, "the replacement healthy in the pool")
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(lambda: c.slice_addresses(APPS, published) == set(ips.values()), 30, "the replacement published")

    # A backend made unhealthy without deleting it: Kubernetes still lists it as ready
    # (no readinessProbe), the pool's own checks eject it from its status and its slices.
    sick = sorted(ips)[1]
    c.exec_http(APPS, sick, "POST", "/fail")
    wait_for(lambda: pool_members(c).get(sick) == "Unhealthy", 3 * FLOOR, f"{sick} Unhealthy in the pool")
    wait_for(lambda: ips[sick] not in c.slice_addresses(APPS, published), 10, f"{sick} out of the pool's slices")
    assert ips[sick] in c.slice_addresses(APPS, "kubernetes.io/service-name=backend")
    assert c.pool_status(APPS, "p").get("healthy") == 2
    c.exec_http(APPS, sick, "POST", "/recover")
    wait_for(lambda: c.slice_addresses(APPS, published) == set(ips.values()), 60, f"{sick} back")


def test_plain_client_failover_through_kube_proxy_is_measured(release: Cluster) -> None:
    """A client pod streams requests to the pool's Service ClusterIP; one backend is made to
    fail; when did requests stop reaching it, how many failed meanwhile, against the floor."""
    c = release
    cluster_ip = c.get("service", "p", "-n", APPS)["spec"]["clusterIP"]
    trials = []
    for trial in range(3):
        pods = c.ready_pods(APPS, "app=backend", 3)
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        wait_for(
            lambda ips=ips: c.slice_addresses(APPS, "clusterpool.dev/pool=p") == set(ips.values()),
            60,
            "all 3 backends published",
        )
        victim = sorted(ips)[trial % 3]
        interval, warmup, duration = 0.01, 3.0, 3.0 + FLOOR + 6.0
        out = run_pod(
            c,
            f"client-{trial}",
            [
                "python",
                "/app/client.py",
                f"http://{cluster_ip}:8080/",
                f"http://{ips[victim]}:8080/fail",
                str(warmup),
                str(duration),
                str(interval),
            ],
        )
        data = json.loads(out.strip().splitlines()[-1])
        t_fail = data["t_fail"]
        assert data["failed"] == victim
        records = data["records"]
        before = [r for r in records if r[0] < t_fail]
        after = [r for r in records if r[0] >= t_fail]
        assert {r[2] for r in before if r[1] == 200} == set(ips), "all three served before the failure"
        reached = [r[0] for r in after if r[2] == victim]
        last = max(reached) - t_fail if reached else 0.0
        failed = sum(1 for r in after if r[1] != 200)
        errors = sum(1 for r in records if r[1] == 0)
        assert any(r[1] == 200 for r in after), "the other backends kept serving"
        # After it stopped reaching the victim, nothing failed.
        late = [r for r in after if r[0] - t_fail > last + 0.5]
        assert late and all(r[1] == 200 and r[2] != victim for r in late)
        trials.append(
            {
                "victim": victim,
                "requests": len(records),
                "requests_after_failure": len(after),
                "last_reached_victim_s": round(last, 3),
                "failed_requests": failed,
                "connection_errors": errors,
            }
        )
        c.exec_http(APPS, victim, "POST", "/recover")
    lasts = [t["last_reached_victim_s"] for t in trials]
    result = {
        "what": "plain client -> pool Service ClusterIP (kube-proxy iptables) on a real node; one backend fails",
        "client": f"new connection every {interval * 1000:.0f} ms",
        "health_check": {"intervalSeconds": INTERVAL, "unhealthyThreshold": UNHEALTHY, "timeoutSeconds": 1},
        "detection_floor_s": FLOOR,
        "goal_s": FLOOR + 1,
        "trials": trials,
        "last_reached_victim_s": {"median": statistics.median(lasts), "max": max(lasts)},
        "goal_met": max(lasts) <= FLOOR + 1,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(RESULTS).parent.mkdir(parents=True, exist_ok=True)
    Path(RESULTS).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def start_sdk_app(c: Cluster, name: str, args: list[str]) -> None:
    """A pod running tests/e2e/sdk_app.py ARGS with pool p's routing ConfigMap mounted."""
    if c.get("configmap", "sdk-app", "-n", APPS) is None:
        c.kubectl("create", "configmap", "sdk-app", "-n", APPS, f"--from-file={Path(__file__).parent / 'sdk_app.py'}")
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": APPS},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "app",
                        "image": f"{layout.IMAGE}:{layout.version()}",
                        "imagePullPolicy": "Never",
                        "command": ["python", "/app/sdk_app.py", *args],
                        "volumeMounts": [
                            {"name": "routing", "mountPath": "/etc/clusterpool", "readOnly": True},
                            {"name": "app", "mountPath": "/app", "readOnly": True},
                        ],
                        "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True},
                    }
                ],
                "volumes": [
                    {"name": "routing", "configMap": {"name": "p-routing"}},
                    {"name": "app", "configMap": {"name": "sdk-app"}},
                ],
            },
        }
    )


def sdk_app_result(c: Cluster, name: str, timeout: float) -> Any:
    """The JSON line the app printed last, once its pod succeeded."""

    def done() -> str | None:
        phase = ((c.get("pod", name, "-n", APPS) or {}).get("status") or {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(done, timeout, f"the SDK app {name} to finish", interval=1)
    out = c.kubectl("logs", "-n", APPS, name).stdout
    assert phase == "Succeeded", out[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_an_sdk_app_with_the_routing_configmap_mounted_follows_a_failover(release: Cluster) -> None:
    """The app GETs through PoolTransport with FileTable on the mounted `p-routing`; a
    backend fails; the SDK's retries and breakers keep the app's requests answered until the
    kubelet updates the mounted table, which then no longer lists that backend."""
    c = release
    pods = c.ready_pods(APPS, "app=backend", 3)
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(lambda: pool_members(c).keys() == ips.keys(), 60, "the pool back to 3 backends")
    wait_for(lambda: c.slice_addresses(APPS, "clusterpool.dev/pool=p") == set(ips.values()), 60, "3 published")
    victim = sorted(ips)[0]
    name = "sdk-app"
    start_sdk_app(c, name, ["/etc/clusterpool/routing.json", f"http://{ips[victim]}:8080/fail", "5", "150", "0.02"])
    data = sdk_app_result(c, name, 200)
    assert data["failed"] == victim
    t_fail, dropped = data["t_fail"], data["table_dropped"]
    assert dropped is not None, "the mounted routing table never dropped the failed backend"
    after = [r for r in data["records"] if r[0] >= t_fail]
    failed = sum(1 for r in after if r[1] != 200)
    assert not [r for r in after if r[0] > dropped + 0.5 and r[2] == victim], "the app still reached the victim"
    assert failed <= 0.01 * len(after), f"{failed} of {len(after)} requests failed after the failure"
    c.exec_http(APPS, victim, "POST", "/recover")
    result = json.loads(Path(RESULTS).read_text()) if Path(RESULTS).exists() else {}
    result["sdk_file_table"] = {
        "what": "app pod: PoolTransport + FileTable on the mounted <pool>-routing ConfigMap; one backend fails",
        "requests_after_failure": len(after),
        "failed_requests_seen_by_app": failed,
        "table_dropped_victim_after_s": round(dropped - t_fail, 2),
        "note": "the mounted file follows the ConfigMap at the kubelet's pace (syncFrequency 1m by default); "
        "retries and client-side breakers cover the gap",
    }
    Path(RESULTS).write_text(json.dumps(result, indent=2) + "\n")
    c.kubectl("delete", "pod", name, "-n", APPS, "--wait=false")


def test_an_sdk_app_follows_a_cache_version_change_through_the_mounted_table(release: Cluster) -> None:
    """spec.cache.version bumped: the app's PoolCache (built from the mounted routing
    table) sees the new version when the kubelet updates the file, and starts empty."""
    c = release

    def pool_cache(version: int | None) -> None:
        cache = None if version is None else {"type": "Memory", "version": version}
        c.kubectl("patch", "clusterpool", "p", "-n", APPS, "--type=merge", "-p", json.dumps({"spec": {"cache": cache}}))

    def table_version() -> Any:
        data = (c.get("configmap", "p-routing", "-n", APPS) or {}).get("data") or {}
        return (json.loads(data.get("routing.json") or "{}").get("cache") or {}).get("version")

    pool_cache(1)
    wait_for(lambda: table_version() == 1, 60, "the routing table with cache version 1")
    name = "sdk-cache-app"
    start_sdk_app(c, name, ["cache", "/etc/clusterpool/routing.json", "180"])
    try:

        def ready() -> Any:
            out = c.kubectl("logs", "-n", APPS, name, check=False).stdout
            return next((json.loads(line) for line in out.splitlines() if '"ready"' in line), None)

        first = wait_for(ready, 150, "the cache app ready (the mounted table has version 1)", interval=1)
        assert first == {"ready": 1, "kept": "hello"}, first
        pool_cache(2)
        wait_for(lambda: table_version() == 2, 60, "the routing table with cache version 2")
        data = sdk_app_result(c, name, 200)
        assert data["version"] == 2, data
        assert data["old_entry"] is None, "the entry of version 1 survived the version change"
        assert data["new_entry"] == "again", data
        result = json.loads(Path(RESULTS).read_text()) if Path(RESULTS).exists() else {}
        result["sdk_cache_version"] = {
            "what": "app pod: PoolCache on the mounted <pool>-routing ConfigMap; spec.cache.version 1 -> 2",
            "app_saw_new_version_after_start_s": data["changed_after_s"],
        }
        Path(RESULTS).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        c.kubectl("delete", "pod", name, "-n", APPS, "--wait=false")
        pool_cache(None)


def test_the_garbage_collector_removes_what_the_pool_published(release: Cluster) -> None:
    c = release
    c.apply(pool_object(APPS, "gc", INTERVAL, UNHEALTHY))
    wait_for(lambda: c.pool_status(APPS, "gc").get("healthy") == 3, 60, "pool gc ready")
    wait_for(lambda: c.get("configmap", "gc-routing", "-n", APPS), 30, "gc's routing ConfigMap")
    assert c.get("service", "gc", "-n", APPS) and c.slice_addresses(APPS, "clusterpool.dev/pool=gc")
    c.kubectl("scale", "deployment", FULLNAME, "-n", OPS, "--replicas=0")
    wait_for(lambda: not c.pods(OPS, OPERATOR_SELECTOR), 60, "the operator scaled to zero")
    c.kubectl("patch", "clusterpool", "gc", "-n", APPS, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    c.kubectl("delete", "clusterpool", "gc", "-n", APPS, "--wait=true", "--timeout=30s")

    def collected() -> bool:
        return (
            c.get("service", "gc", "-n", APPS) is None
            and c.get("configmap", "gc-routing", "-n", APPS) is None
            and not (c.get("endpointslices", "-n", APPS, "-l", "clusterpool.dev/pool=gc") or {}).get("items")
        )

    wait_for(collected, 60, "the garbage collector to remove gc's Service, EndpointSlices and ConfigMap")
    c.kubectl("scale", "deployment", FULLNAME, "-n", OPS, "--replicas=1")
    operator_pod(c)


def test_two_replicas_share_the_pools_and_one_takes_over_from_a_deleted_pod(release: Cluster) -> None:
    c = release
    upgrade = ("upgrade", RELEASE, str(CHART), "-n", OPS, "--reuse-values", "--wait", "--timeout=3m")
    c.helm(*upgrade, "--set", "replicas=2", "--set", "leaseSeconds=9")
    pods = {p["metadata"]["name"] for p in c.ready_pods(OPS, OPERATOR_SELECTOR, 2, timeout=180)}
    names = [f"s{i}" for i in range(16)]  # all on one replica: 2 in 65536
    for n in names:
        c.apply(pool_object(APPS, n, INTERVAL, UNHEALTHY))

    def drivers() -> dict[str, str | None]:
        return {n: c.pool_status(APPS, n).get("drivenBy") for n in names}

    wait_for(lambda: set(drivers().values()) == pods, 120, "both replicas driving some of the pools", interval=1)
    before = drivers()
    victim = sorted(pods)[0]
    moved = [n for n, by in before.items() if by == victim]
    started = time.monotonic()
    c.kubectl("delete", "pod", victim, "-n", OPS, "--wait=false")  # as a node drain or a rollout would
    wait_for(
        lambda: all(c.pool_status(APPS, n).get("drivenBy") not in (None, victim) for n in moved),
        60,
        "the deleted pod's pools driven by the other replica",
        interval=0.5,
    )
    took = round(time.monotonic() - started, 2)
    # The Deployment's replacement pod may have joined meanwhile and taken its share; no
    # pool is left to the deleted pod.
    assert not [n for n in names if c.pool_status(APPS, n).get("drivenBy") == victim]
    now = {p["metadata"]["name"] for p in c.ready_pods(OPS, OPERATOR_SELECTOR, 2, timeout=180)}
    assert victim not in now
    wait_for(lambda: set(drivers().values()) == now, 120, "the replicas now running each driving a share", interval=1)
    for n in names:
        wait_for(lambda n=n: c.pool_status(APPS, n).get("healthy") == 3, 60, f"{n} served")
        c.kubectl("delete", "clusterpool", n, "-n", APPS, "--wait=false")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["two_replicas"] = {
        "what": "chart with replicas=2, leaseSeconds=9; the pod driving some pools deleted (graceful)",
        "pools": len(names),
        "moved": len(moved),
        "takeover_s": took,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"two replicas: {len(moved)} pools moved {took}s after their pod was deleted")
    wait_for(lambda: not any(c.pool_status(APPS, n) for n in names), 60, "the s* pools deleted")
    c.helm(*upgrade, "--set", "replicas=1", "--set", "leaseSeconds=15")
    operator_pod(c)


def test_helm_upgrade_rollback_and_uninstall(release: Cluster) -> None:
    c = release
    revisions = len(json.loads(c.helm("history", RELEASE, "-n", OPS, "-o", "json").stdout))
    first = operator_pod(c)["metadata"]["name"]
    c.helm(
        "upgrade", RELEASE, str(CHART), "-n", OPS, "--reuse-values",
        "--set", "extraArgs={--verbose}", "--wait", "--timeout=3m",
    )  # fmt: skip
    pod = operator_pod(c)
    assert pod["metadata"]["name"] != first and "--verbose" in pod["spec"]["containers"][0]["args"]
    wait_for(lambda: c.pool_status(APPS, "p").get("healthy") == 3, 60, "pool p served by the upgraded operator")

    c.helm("rollback", RELEASE, "1", "-n", OPS, "--wait", "--timeout=3m")
    pod = operator_pod(c)
    assert "--verbose" not in pod["spec"]["containers"][0]["args"]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    history = json.loads(c.helm("history", RELEASE, "-n", OPS, "-o", "json").stdout)
    assert len(history) == revisions + 2 and history[-1]["status"] == "deployed"

    # Pools go first (the operator removes its finalizer and what it published), then the chart.
    c.kubectl("delete", "clusterpool", "p", "-n", APPS, "--timeout=60s")
    wait_for(lambda: c.get("service", "p", "-n", APPS) is None, 30, "p's Service removed by the operator")
    c.helm("uninstall", RELEASE, "-n", OPS, "--wait", "--timeout=2m")
    assert c.get("deployment", FULLNAME, "-n", OPS) is None
    assert c.get("clusterrole", FULLNAME) is None and c.get("serviceaccount", FULLNAME, "-n", OPS) is None
    assert not (c.get("clusterpools", "-A") or {}).get("items"), "no ClusterPool left behind"
    c.kubectl("delete", "namespace", OPS, "--timeout=90s")
    # The chart keeps its CRD on uninstall (crds.keep); remove it so a later module installs afresh.
    assert c.get("crd", "clusterpools.clusterpool.dev") is not None
    c.kubectl("delete", "crd", "clusterpools.clusterpool.dev", "--timeout=60s")
