"""The gateway end to end on a real node (scripts/node.py): `python -m clusterpool.gateway`
from the operator image as a Deployment of 2 replicas behind a Service, with a ServiceAccount
that may only read the apps namespace's ConfigMaps; a pool of OpenAI-compatible backend pods
(scripts/openai_backend.py); a client pod streaming chat completions through the gateway
and, for comparison, through the pool's own Service (kube-proxy) while one backend pod is
killed and another answers 503; then a rolling update of the gateway under that load.

The objects are built here rather than taken from the chart, so that the test states what
the gateway needs; the figures go to bench/results/node_gateway.json with
CLUSTERPOOL_RECORD=1 (`make bench-node`), else to the temporary directory."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from nodekit import CHART, ROOT, Cluster, backend_objects, pool_object, wait_for

import layout

pytestmark = pytest.mark.timeout(900)

OPS = "gw-ops"
APPS = "gw-apps"
RELEASE = "gw"
POOL = "chat"
BACKENDS = 4  # two may fail at once and stay within the ejection cap (50%) without panic
GATEWAY = "gateway"
GATEWAY_SELECTOR = "app=gateway"
IMAGE = f"{layout.IMAGE}:{layout.version()}"  # the operator image the node has (scripts/images.py)
# On SIGTERM the gateway turns unready and keeps accepting for DRAIN_S, so that the
# EndpointSlice and kube-proxy stop sending new connections before its listener closes;
# requests in flight then get GRACE_S. The pod's own grace period covers both.
DRAIN_S, GRACE_S = 5, 10
INTERVAL_S = 0.025  # one request per path every 25 ms
RESULTS = (
    ROOT / "bench" / "results" if os.environ.get("CLUSTERPOOL_RECORD") == "1" else Path(tempfile.gettempdir())
) / "node_gateway.json"


def gateway_objects() -> list[dict[str, Any]]:
    """ServiceAccount, the Role to read the apps namespace's routing ConfigMaps and its
    binding, the Deployment (2 replicas, drained on SIGTERM) and its Service."""
    labels = {"app": GATEWAY}
    admin = {"port": "admin"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY, "namespace": OPS}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": GATEWAY, "namespace": APPS},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": GATEWAY, "namespace": APPS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY},
            "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": OPS}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": GATEWAY, "namespace": OPS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": GATEWAY,
                        "terminationGracePeriodSeconds": DRAIN_S + GRACE_S + 5,
                        "containers": [
                            {
                                "name": GATEWAY,
                                "image": IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-m", "clusterpool.gateway"],
                                "args": [
                                    f"--namespace={APPS}",
                                    "--connect-timeout=0.5",
                                    f"--drain-delay={DRAIN_S}",
                                    f"--grace-period={GRACE_S}",
                                ],
                                "ports": [
                                    {"name": "http", "containerPort": 8080},
                                    {"name": "admin", "containerPort": 9091},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/readyz", **admin},
                                    "periodSeconds": 1,
                                    "failureThreshold": 1,
                                },
                                "livenessProbe": {"httpGet": {"path": "/healthz", **admin}, "periodSeconds": 10},
                                "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": GATEWAY, "namespace": OPS},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


def openai_backend_objects() -> list[dict[str, Any]]:
    """nodekit's backend Deployment and Service, the pods running scripts/openai_backend.py
    (mounted from the ConfigMap `chat-app`) with a control port to switch their answers."""
    objs = backend_objects(APPS, BACKENDS)
    pod = objs[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["command"] = ["python", "/files/openai_pod.py"]
    container["ports"].append({"name": "control", "containerPort": 8081})
    container["volumeMounts"] = [{"name": "files", "mountPath": "/files", "readOnly": True}]
    pod["volumes"] = [{"name": "files", "configMap": {"name": "chat-app"}}]
    return objs


def pool_ready(c: Cluster) -> None:
    pods = c.ready_pods(APPS, "app=backend", BACKENDS)
    ips = {p["status"]["podIP"] for p in pods}
    wait_for(lambda: c.pool_status(APPS, POOL).get("healthy") == BACKENDS, 90, f"pool {POOL} with all backends")
    wait_for(lambda: c.slice_addresses(APPS, f"clusterpool.dev/pool={POOL}") == ips, 60, "all backends published")


@pytest.fixture(scope="module")
def gw(cluster: Cluster) -> Iterator[Cluster]:
    c = cluster
    c.kubectl("create", "namespace", OPS)
    c.kubectl("create", "namespace", APPS)
    try:  # the cleanup runs after a failed setup too: the next module needs the CRD gone
        c.helm(
            "install", RELEASE, str(CHART), "-n", OPS, "--set", "image.pullPolicy=Never",
            "--set", f"watchNamespaces={{{APPS}}}", "--wait", "--timeout=3m",
        )  # fmt: skip
        files = [
            ROOT / "scripts" / "openai_backend.py",
            *(Path(__file__).parent / f for f in ("openai_pod.py", "chat_client.py")),
        ]
        c.kubectl("create", "configmap", "chat-app", "-n", APPS, *(f"--from-file={f}" for f in files))
        for obj in openai_backend_objects():
            c.apply(obj)
        c.apply(pool_object(APPS, POOL))
        pool_ready(c)
        for obj in gateway_objects():
            c.apply(obj)
        c.ready_pods(OPS, GATEWAY_SELECTOR, 2, timeout=180)
        yield c
    finally:
        c.kubectl("delete", "clusterpool", POOL, "-n", APPS, "--timeout=60s", check=False)
        c.helm("uninstall", RELEASE, "-n", OPS, "--wait", "--timeout=2m", check=False)
        c.kubectl("delete", "namespace", OPS, APPS, "--wait=false", check=False)
        # The chart keeps its CRD on uninstall (crds.keep), still labelled as this release's:
        # another module's `helm install` would refuse to take it over.
        c.kubectl("delete", "crd", "clusterpools.clusterpool.dev", "--timeout=60s", check=False)


def start_client(c: Cluster, name: str, args: list[str]) -> None:
    """A pod of the backend image running tests/e2e/chat_client.py ARGS."""
    c.start_pod(APPS, name, ["python", "/files/chat_client.py", *args], files="chat-app")


def client_line(c: Cluster, name: str, key: str, timeout: float) -> Any:
    """The value of `key` in the first JSON line of the client's log that has it."""

    def found() -> Any:
        for line in c.kubectl("logs", "-n", APPS, name, check=False).stdout.splitlines():
            if line.startswith("{") and key in (doc := json.loads(line)):
                return doc
        return None

    return wait_for(found, timeout, f"{key!r} from the client {name}", interval=0.3)[key]


def client_records(c: Cluster, name: str, timeout: float) -> list[tuple[str, float, int, str, float]]:
    out = c.finished_pod_log(APPS, name, timeout)
    return [tuple(r) for r in json.loads(out.strip().splitlines()[-1])["records"]]  # type: ignore[misc]


def gateway_access_log(c: Cluster) -> list[dict[str, Any]]:
    out = c.kubectl("logs", "-n", OPS, "-l", GATEWAY_SELECTOR, "--tail=-1", "--max-log-requests=10").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"time"')]


def set_mode(c: Cluster, pod: str, mode: str) -> None:
    code = f"import urllib.request as u;u.urlopen(u.Request('http://127.0.0.1:8081/mode/{mode}', method='POST'))"
    c.kubectl("exec", "-n", APPS, pod, "--", "python", "-c", code)


def record(section: str, figures: dict[str, Any]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[section] = {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({section: results[section]}, indent=2))


def cluster_ip(c: Cluster, namespace: str, name: str) -> str:
    svc = c.get("service", name, "-n", namespace)
    assert svc is not None, f"Service {namespace}/{name}"
    return str(svc["spec"]["clusterIP"])


def test_the_gateway_answers_every_chat_completion_while_backends_die_and_kube_proxy_does_not(gw: Cluster) -> None:
    c = gw
    pool_ready(c)
    names = sorted(p["metadata"]["name"] for p in c.ready_pods(APPS, "app=backend", BACKENDS))
    killed, sick = names[0], names[1]
    via_gateway = f"http://{cluster_ip(c, OPS, GATEWAY)}:80/pools/{APPS}/{POOL}/v1/chat/completions"
    via_service = f"http://{cluster_ip(c, APPS, POOL)}:8080/v1/chat/completions"
    warmup, after_fault = 3.0, 18.0
    timing = [str(warmup), str(warmup + after_fault), str(INTERVAL_S)]
    start_client(c, "chat-client", [*timing, f"gateway={via_gateway}", f"kube-proxy={via_service}"])
    client_line(c, "chat-client", "warm", 120)
    t_fault = time.time()
    with ThreadPoolExecutor(2) as faults:
        kill = faults.submit(c.kubectl, "delete", "pod", killed, "-n", APPS, "--grace-period=0", "--force")
        fail = faults.submit(set_mode, c, sick, "unavailable")
        kill.result(), fail.result()
    records = client_records(c, "chat-client", 120)
    access = [a for a in gateway_access_log(c) if a["time"] >= t_fault]
    set_mode(c, sick, "ok")

    figures: dict[str, Any] = {}
    for path in ("gateway", "kube-proxy"):
        mine = [r for r in records if r[0] == path]
        before = [r for r in mine if r[1] < t_fault]
        after = [r for r in mine if r[1] >= t_fault]
        assert {r[3] for r in before if r[2] == 200} == set(names), f"all {BACKENDS} served {path} before the faults"
        failed = [r for r in after if r[2] != 200]
        # A request that met a bad backend: through kube-proxy it failed; through the gateway
        # it failed or was retried on another endpoint (its access log counts the attempts).
        met_bad = (
            [a["time"] for a in access if a["attempts"] > 1 or a["status"] != 200]
            if path == "gateway"
            else [r[1] for r in failed]
        )
        figures[path] = {
            "requests": len(mine),
            "requests_after_faults": len(after),
            "failed_requests": len(failed),
            "failed_by_status": {str(s): sum(1 for r in failed if r[2] == s) for s in sorted({r[2] for r in failed})},
            "requests_that_met_a_bad_backend": len(met_bad),
            "traffic_left_bad_backends_after_s": round(max(met_bad) - t_fault, 2) if met_bad else 0.0,
            "latency_ms_max_after_faults": max((r[4] for r in after), default=0.0),
        }
    record(
        "backend_faults",
        {
            "what": f"client pod: a chat-completion POST every {INTERVAL_S * 1000:.0f} ms on each path, a new "
            f"connection each; of {BACKENDS} backend pods one killed (deleted, grace 0) and one switched to 503",
            "gateway_settings": "2 replicas, --connect-timeout=0.5, defaults otherwise (retries 2, budget 20% + 10)",
            "health_check": {"intervalSeconds": 2, "unhealthyThreshold": 2, "timeoutSeconds": 1},
            **figures,
        },
    )
    assert figures["gateway"]["requests_that_met_a_bad_backend"] > 0, "the faults never reached the gateway"
    assert figures["gateway"]["failed_requests"] == 0, figures["gateway"]


def test_a_rolling_update_of_the_gateway_under_load_loses_no_request(gw: Cluster) -> None:
    c = gw
    pool_ready(c)
    old = {p["metadata"]["name"] for p in c.ready_pods(OPS, GATEWAY_SELECTOR, 2)}
    via_gateway = f"http://{cluster_ip(c, OPS, GATEWAY)}:80/pools/{APPS}/{POOL}/v1/chat/completions"
    start_client(c, "roll-client", ["2", "180", str(INTERVAL_S), f"gateway={via_gateway}"])
    client_line(c, "roll-client", "warm", 120)
    started = time.monotonic()
    patch = {"spec": {"template": {"metadata": {"annotations": {"clusterpool.dev/rolled": str(time.time())}}}}}
    c.kubectl("patch", "deployment", GATEWAY, "-n", OPS, "--type=merge", "-p", json.dumps(patch))

    def two_new() -> set[str] | None:  # both Ready pods new (midway one old and one new pod are Ready)
        ready = {p["metadata"]["name"] for p in c.ready_pods(OPS, GATEWAY_SELECTOR, 2, timeout=180)}
        return ready if not ready & old else None

    new = wait_for(two_new, 180, "two new gateway pods")
    wait_for(lambda: all(c.get("pod", n, "-n", OPS) is None for n in old), 120, "the old gateway pods gone")
    rolled = round(time.monotonic() - started, 1)
    c.kubectl("exec", "-n", APPS, "roll-client", "--", "python", "-c", "open('/tmp/stop', 'w')")
    records = client_records(c, "roll-client", 60)
    failed = [r for r in records if r[2] != 200]
    record(
        "rolling_update",
        {
            "what": f"annotation change on the gateway Deployment (2 replicas, maxSurge 1, maxUnavailable 0) "
            f"under a chat-completion POST every {INTERVAL_S * 1000:.0f} ms, a new connection each",
            "drain": f"--drain-delay={DRAIN_S} --grace-period={GRACE_S}, readinessProbe every 1 s",
            "rollout_s": rolled,
            "requests": len(records),
            "failed_requests": len(failed),
            "new_pods": sorted(new),
        },
    )
    assert len(new) == 2
    assert not failed, failed[:20]
