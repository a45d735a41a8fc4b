"""End to end on the real node: the chart archive that `make release` packages
(scripts/release.py's package_chart, called here) installed with `helm install <the .tgz>`,
watching one namespace by name, with the image the node imported.

In the watched namespace a pool whose Redis cache takes its password from a Secret becomes
Ready with its cache answering: the operator read the Secret through the Role the chart made
there. Redis is a real redis-server on the node's address, requiring that password. Outside
it, the operator's ServiceAccount, with a token of its own, is refused a Secret (403) while
the same token reads the watched namespace's Secret, and a pool there is never driven."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodekit import Cluster, backend_objects, pool_object, wait_for

import layout
import node
import release

pytestmark = pytest.mark.timeout(600)

OPS, APPS, ELSEWHERE, RELEASE = "rel-ops", "rel-apps", "rel-elsewhere", "rel"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=clusterpool-operator,app.kubernetes.io/instance={RELEASE}"
CRD = "clusterpools.clusterpool.dev"
SECRET, PASSWORD = "redis-auth", "s3cret-for-the-node-test"
REDIS_PORT = 16380


@pytest.fixture(scope="module")
def chart_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart as `make release` packages it into dist/ (here into a temporary folder)."""
    archive = release.package_chart(tmp_path_factory.mktemp("dist"))
    assert archive.name == f"clusterpool-operator-{layout.version()}.tgz" and archive.is_file()
    return archive


@pytest.fixture(scope="module")
def redis_on_the_node(cluster: Cluster) -> Iterator[str]:
    """A real redis-server in the node's network namespace, on the node's address (which
    pods reach), requiring PASSWORD."""
    args = ["--bind", node.NODE_IP, "--port", str(REDIS_PORT), "--requirepass", PASSWORD]
    args += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        ["nsenter", f"--net={cluster.run.netns_path}", "redis-server", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"{node.NODE_IP}:{REDIS_PORT}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def secret_object(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace},
        "stringData": {"password": PASSWORD},
    }


def cached_pool(namespace: str, name: str, redis: str) -> dict[str, Any]:
    pool = pool_object(namespace, name)
    pool["spec"]["cache"] = {
        "type": "Redis",
        "redis": {"address": redis, "passwordSecretRef": {"name": SECRET, "key": "password"}},
    }
    return pool


def condition(c: Cluster, namespace: str, name: str, kind: str) -> str | None:
    for cond in c.pool_status(namespace, name).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


@pytest.fixture(scope="module")
def installed(cluster: Cluster, chart_archive: Path, redis_on_the_node: str) -> Iterator[Cluster]:
    """The released archive installed watching APPS only; a pool with a Secret in APPS and
    one in ELSEWHERE (created first, so the operator would have met it first; after the chart,
    which brings the CRD)."""
    c = cluster
    for ns in (OPS, APPS, ELSEWHERE):
        c.kubectl("create", "namespace", ns)
    try:  # the cleanup runs after a failed setup too: the next module needs the CRD gone
        for ns in (APPS, ELSEWHERE):
            c.apply(secret_object(ns))
        c.helm(
            "install", RELEASE, str(chart_archive), "-n", OPS, "--set", "image.pullPolicy=Never",
            "--set", f"watchNamespaces={{{APPS}}}", "--wait", "--timeout=4m",
        )  # fmt: skip
        c.apply(cached_pool(ELSEWHERE, "unwatched", redis_on_the_node))
        for obj in backend_objects(APPS, replicas=2):
            c.apply(obj)
        c.apply(cached_pool(APPS, "cached", redis_on_the_node))
        yield c
    finally:
        c.delete_every_pool()
        c.helm("uninstall", RELEASE, "-n", OPS, "--wait", "--timeout=2m", check=False)
        c.kubectl("delete", "namespace", OPS, APPS, ELSEWHERE, "--wait=false", check=False)
        # The chart keeps its CRD on uninstall (crds.keep), still labelled as this release's:
        # another module's `helm install` would refuse to take it over.
        c.kubectl("delete", "crd", CRD, "--timeout=60s", check=False)


def api_get(c: Cluster, path: str, token: str) -> int:
    """The HTTP status the API server answers a GET of `path` with, as the bearer of `token`."""
    cluster = json.loads(Path(c.kubeconfig).read_text())["clusters"][0]["cluster"]
    ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    request = urllib.request.Request(cluster["server"] + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cadata=ca), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_released_archive_runs_the_local_image_and_drives_a_pool_with_a_secret(installed: Cluster) -> None:
    c = installed
    listed = json.loads(c.helm("list", "-n", OPS, "-o", "json").stdout)
    assert [r["chart"] for r in listed] == [f"clusterpool-operator-{layout.version()}"]
    (pod,) = c.ready_pods(OPS, OPERATOR_SELECTOR, 1)
    assert pod["spec"]["containers"][0]["image"] == f"{layout.IMAGE}:{layout.version()}"

    c.ready_pods(APPS, "app=backend", 2)
    wait_for(lambda: condition(c, APPS, "cached", "Ready") == "True", 120, "the watched pool Ready")
    # The cache answers only with the password, which only the Secret holds.
    wait_for(lambda: condition(c, APPS, "cached", "CacheReady") == "True", 60, "the pool's Redis answering")


def test_the_operator_reads_no_secret_and_drives_no_pool_outside_its_namespaces(installed: Cluster) -> None:
    c = installed
    wait_for(lambda: condition(c, APPS, "cached", "Ready") == "True", 120, "the watched pool Ready")
    sa = c.get("deployment", "-n", OPS, "-l", OPERATOR_SELECTOR)["items"][0]["spec"]["template"]["spec"]
    token = c.kubectl("create", "token", sa["serviceAccountName"], "-n", OPS, "--duration=10m").stdout.strip()

    secret_in = f"/api/v1/namespaces/{{}}/secrets/{SECRET}".format
    assert api_get(c, secret_in(APPS), token) == 200  # the token works where the Role is
    assert api_get(c, secret_in(ELSEWHERE), token) == 403
    assert api_get(c, f"/api/v1/namespaces/{ELSEWHERE}/secrets", token) == 403
    assert api_get(c, "/api/v1/secrets", token) == 403

    # Created before the watched pool, which has been driven since: never touched.
    unwatched = c.get("clusterpool", "unwatched", "-n", ELSEWHERE)
    assert not unwatched.get("status") and not unwatched["metadata"].get("finalizers"), unwatched
