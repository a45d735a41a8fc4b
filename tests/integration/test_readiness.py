"""The operator's readiness endpoint (`--readiness`), which the chart's readinessProbe asks:
a replica is ready once it holds its shard Lease and its hand-over wait is over, so a
rolling update stops an old replica only after the new one drives its share."""

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from backends import free_port
from conftest import ROOT, OperatorProcess, wait_for

LEASE = 6.0


def readiness(url):
    """The HTTP status of the readiness endpoint, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def replica(cluster, kubectl, crd, tmp_path):
    """Starts operator processes that watch an empty namespace of their own and keep their
    shard Leases there (apart from the session's operator)."""
    ns = f"ready-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    started = []

    def start(identity):
        url = f"http://127.0.0.1:{free_port()}/readyz"
        args = ("--namespace", ns, "--lease-namespace", ns, "--lease-seconds", str(LEASE), "--readiness", url)
        op = OperatorProcess(cluster.kubeconfig, tmp_path, identity=identity, args=args)
        op.start()
        started.append(op)
        return op, url

    yield start
    for op in started:
        op.stop()
    kubectl("delete", "namespace", ns, "--wait=false")


def test_a_replica_is_ready_once_it_drives_its_share(replica):
    first, first_url = replica("ready-a")
    wait_for(lambda: readiness(first_url) == 200, 3 * LEASE, "the only replica ready")

    started = time.monotonic()
    _, second_url = replica("ready-b")
    assert readiness(second_url) == 503  # alive, but waiting for the hand-over
    wait_for(lambda: readiness(second_url) == 200, 4 * LEASE, "the joining replica ready", interval=0.2)
    waited = time.monotonic() - started
    assert waited >= LEASE * 0.9, f"ready after {waited:.1f}s, before its hand-over wait of {LEASE}s"
    assert readiness(first_url) == 200  # the first keeps its share meanwhile

    first.stop()
    assert readiness(first_url) is None
    assert readiness(second_url) == 200


def test_a_bad_readiness_url_is_refused_at_start():
    r = subprocess.run(
        [sys.executable, "-m", "clusterpool", "--readiness", "ftp://0.0.0.0/readyz"],
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--readiness must be http://HOST:PORT/PATH" in r.stderr, r.stderr
