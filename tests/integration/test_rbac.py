"""The operator works under exactly the ClusterRole in manifests/install/10-rbac.yaml, on an
apiserver with RBAC on, authenticated with a real ServiceAccount token."""

import asyncio
import contextlib
import json
import time
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from clusterpool.k8s.shards import Shards
from conftest import ROOT, OperatorProcess, endpoints_of, wait_for

SA, NS = "clusterpool-operator", "clusterpool-system"
AS_SA = f"--as=system:serviceaccount:{NS}:{SA}"


@pytest.fixture
def sa_kubeconfig(cluster, kubectl, k8s, tmp_path):
    kubectl("apply", "-f", str(ROOT / "manifests/install/00-namespace.yaml"))
    kubectl("apply", "-f", str(ROOT / "manifests/install/10-rbac.yaml"))
    token = (
        kubernetes.client.CoreV1Api(k8s)
        .create_namespaced_service_account_token(SA, NS, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    admin = json.loads(Path(cluster.kubeconfig).read_text())
    cfg = {
        **admin,
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": SA}}],
        "current-context": "sa",
    }
    path = tmp_path / "sa-kubeconfig"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_the_role_grants_what_the_operator_needs_and_no_more(kubectl, crd, sa_kubeconfig):
    def can(*args):
        return kubectl("auth", "can-i", *args, AS_SA, check=False).stdout.strip() == "yes"

    assert can("watch", "clusterpools.clusterpool.dev", "-A")
    assert can("patch", "clusterpools.clusterpool.dev", "--subresource=status", "-n", "default")
    assert can("create", "events", "-n", "default")
    for verb in ("get", "list", "create", "update", "delete"):  # the shard Leases, own namespace only
        assert can(verb, "leases.coordination.k8s.io", "-n", NS)
        assert not can(verb, "leases.coordination.k8s.io", "-n", "default")
    assert not can("watch", "leases.coordination.k8s.io", "-n", NS)
    assert not can("patch", "leases.coordination.k8s.io", "-n", NS)
    for verb, what in [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("delete", "clusterpools.clusterpool.dev"),
        ("create", "clusterpools.clusterpool.dev"),
        ("update", "clusterpools.clusterpool.dev"),
        ("list", "pods"),
        ("create", "customresourcedefinitions"),
    ]:
        assert not can(verb, what, "-A"), f"the operator's role should not allow {verb} {what}"


def test_the_operator_runs_a_pool_under_its_own_service_account(
    operator, pools, net_backends, sa_kubeconfig, tmp_path, k8s
):
    operator.stop()  # one operator at a time handles a pool
    restricted = OperatorProcess(sa_kubeconfig, tmp_path, args=("--lease-namespace", NS))
    try:
        restricted.start()
        backends = net_backends(2)
        pools.create(
            "p",
            {
                "discovery": {"static": {"endpoints": endpoints_of(backends)}},
                "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
            },
        )
        pools.wait_ready("p", healthy=2)
        wait_for(lambda: pools.condition("p", "Published").get("reason") == "UpToDate", 10, "published")
        backends[0].stop()
        wait_for(lambda: pools.events("p", "EndpointUnhealthy"), 15, "an EndpointUnhealthy Event")
        pools.delete("p")
        wait_for(lambda: pools.get("p") is None, 15, "the pool deleted (finalizer released)")
        disc, core = kubernetes.client.DiscoveryV1Api(k8s), kubernetes.client.CoreV1Api(k8s)
        assert disc.list_namespaced_endpoint_slice(pools.namespace).items == []
        assert [c.metadata.name for c in core.list_namespaced_config_map(pools.namespace).items] == [
            "kube-root-ca.crt"
        ] or core.list_namespaced_config_map(pools.namespace).items == []
        assert [s.metadata.name for s in core.list_namespaced_service(pools.namespace).items] == []
        log = restricted.log.read_text()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    finally:
        restricted.stop()
        operator.start()


async def test_shard_leases_work_under_the_service_account(sa_kubeconfig, k8s):
    client = kubernetes.config.new_client_from_config(config_file=sa_kubeconfig)
    shards = Shards(client, "rbac-check", NS, lease_seconds=4, renew_seconds=0.5, request_timeout=0.3)
    task = asyncio.create_task(shards.run())
    try:
        deadline = time.monotonic() + 5
        while not shards.may_drive("default", "p"):  # created and listed
            assert time.monotonic() < deadline, "the shard never held its Lease under the operator's role"
            await asyncio.sleep(0.05)
        leases = kubernetes.client.CoordinationV1Api(k8s)
        created = leases.read_namespaced_lease(shards.lease_name, NS).metadata.resource_version
        while leases.read_namespaced_lease(shards.lease_name, NS).metadata.resource_version == created:
            assert time.monotonic() < deadline, "the shard never renewed (replaced) its Lease under the role"
            await asyncio.sleep(0.05)
        assert shards.holds_lease()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with pytest.raises(ApiException) as gone:  # deleted on the way out
        kubernetes.client.CoordinationV1Api(k8s).read_namespaced_lease(shards.lease_name, NS)
    assert gone.value.status == 404
