"""scripts/node.py itself: a second node runs alongside the session's without colliding,
and `down` cleans up after a hard kill (containerd shims and containers outlive their
parents; the namespace, cgroups, mounts and folder must all go)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from nodekit import BACKEND_IMAGE, Cluster, wait_for

import controlplane
import node

pytestmark = pytest.mark.timeout(600)


def test_a_second_node_runs_alongside_and_down_cleans_up_after_a_hard_kill(cluster: Cluster) -> None:
    run = node.Run(f"e2e{os.getpid()}b")
    kubectl = [str(controlplane.assets_dir() / "kubectl"), f"--kubeconfig={run.dir / 'kubeconfig'}"]

    def k(*args: str) -> str:
        return subprocess.run([*kubectl, *args], capture_output=True, text=True, check=True, timeout=60).stdout

    net_ino: int | None = None
    mnt_ino: int | None = None
    try:
        node.up(run)
        assert k("get", "nodes", "-o", "name").split() == [f"node/{run.node_name}"]
        k("run", "sleeper", f"--image={BACKEND_IMAGE}", "--image-pull-policy=Never")
        wait_for(
            lambda: json.loads(k("get", "pod", "sleeper", "-o", "json"))["status"].get("phase") == "Running",
            90,
            "a pod running on the second node",
        )
        st = run.state()
        net_ino, mnt_ino = int(st["net_ino"]), int(st["mnt_ino"])  # type: ignore[call-overload]
        # Hard kill: every component and the namespace holder, no chance to clean up.
        for pid in [*st["pids"].values(), st["holder_pid"]]:  # type: ignore[union-attr]
            os.kill(int(pid), signal.SIGKILL)
        time.sleep(1)
        assert node.cgroup_pids(run), "the pod's processes outlive the kubelet and containerd"
    finally:
        node.down(run)
    assert not node.ns_pids(net_ino, mnt_ino), "processes left in the node's namespaces"
    assert not node.cgroup_pids(run), "processes left in the node's cgroups"
    assert not [h for h in node.cgroup_hierarchies() if (h / run.cgroup_root.lstrip("/")).exists()]
    assert not run.netns_path.exists() and not run.dir.exists()
    assert str(run.dir) not in Path("/proc/self/mounts").read_text()
    # The session's node never noticed.
    assert cluster.kubectl("get", "--raw=/readyz").stdout == "ok"
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [cluster.run.node_name]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in nodes[0]["status"]["conditions"])
