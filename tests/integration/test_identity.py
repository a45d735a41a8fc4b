"""The operator runs as a uid with no passwd entry, as the image and the chart run it
(runAsUser 65532 in an image that has no such user): kopf must not ask for a login name,
and the operator drives a pool as that uid."""

import os
import subprocess
import sys
import uuid

import kubernetes

from conftest import OperatorProcess, Pools, as_uid_without_passwd_entry, endpoints_of, wait_for

UID = 65532


def test_the_operator_runs_as_a_uid_without_a_passwd_entry(operator, cluster, k8s, http_backends, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    probe = subprocess.run(
        [*as_uid_without_passwd_entry(UID), sys.executable, "-c", "import getpass; getpass.getuser()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0 and "uid not found: 65532" in probe.stderr  # the condition that crashed it
    operator.stop()  # the session's operator: the pool below is this one's alone
    op = OperatorProcess(cluster.kubeconfig, tmp_path, uid=UID, identity="")
    try:
        op.start()  # fails with the operator's log if it exits
        namespace = f"t-{uuid.uuid4().hex[:8]}"
        kubernetes.client.CoreV1Api(k8s).create_namespace({"metadata": {"name": namespace}})
        pools = Pools(k8s, namespace)
        backends = http_backends(1)
        check = {"intervalSeconds": 2, "timeoutSeconds": 1, "healthyThreshold": 1, "http": {}}
        pools.create("p", {"discovery": {"static": {"endpoints": endpoints_of(backends)}}, "healthCheck": check})
        pools.wait_ready("p", healthy=1)  # kopf watches, runs its handlers and the pool's loop
        pools.delete("p")
        wait_for(lambda: pools.get("p") is None, 30, "the pool deleted (its finalizer released)")
        assert op.alive(), "the liveness endpoint stopped answering"
    finally:
        op.stop()
        operator.start()
    assert "getpwuid" not in op.log.read_text()
