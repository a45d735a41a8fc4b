"""`make demo`'s lifecycle (scripts/demo.py) against the real control plane: a second `up`
restarts what died (or what a pid file names wrongly) and reports Ready only from the live
operator's status; `down` with the operator gone removes the pool's finalizer itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import controlplane
from conftest import ROOT, Kubectl, wait_for


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class Demo:
    def __init__(self, state: Path, kubeconfig: str) -> None:
        self.state = state
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "CLUSTERPOOL_DEMO_DIR": str(state)}

    def __call__(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo.py"), command],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=240,
            check=False,
        )

    def pid(self, name: str) -> int:
        return int((self.state / f"{name}.pid").read_text())


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[controlplane.State]:
    """A control plane of the demo's own: the session's operator watches every namespace of
    the shared one, and would drive the demo's pool beside the demo's operator."""
    state = controlplane.up(tmp_path / "controlplane")
    yield state
    controlplane.down(tmp_path / "controlplane")


@pytest.fixture
def kubectl(own_cluster: controlplane.State) -> Kubectl:
    return Kubectl(own_cluster.kubeconfig)


@pytest.fixture
def demo(own_cluster: controlplane.State, tmp_path: Path) -> Iterator[Demo]:
    d = Demo(tmp_path / "demo", own_cluster.kubeconfig)
    yield d
    d("down")


def pool_status(kubectl: Kubectl) -> dict:
    r = kubectl("get", "clusterpool", "demo", "-n", "default", "-o", "json", check=False)
    return json.loads(r.stdout).get("status", {}) if r.returncode == 0 else {}


def test_a_second_demo_up_restarts_what_died_and_waits_for_the_live_operators_status(demo, kubectl):
    first = demo("up")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "The pool is Ready" in first.stdout
    operator, backend = demo.pid("operator"), demo.pid("backend-llm-b")
    first_identity = (demo.state / "operator.identity").read_text()
    assert pool_status(kubectl)["drivenBy"] == first_identity

    # The operator dies (its Ready status stays behind); a backend dies; and the operator's
    # pid file is made to name a live process that is not the operator.
    os.killpg(operator, signal.SIGKILL)
    os.killpg(backend, signal.SIGKILL)
    wait_for(lambda: not alive(operator) and not alive(backend), 10, "the killed processes gone")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (demo.state / "operator.pid").write_text(str(stranger.pid))
        started = time.monotonic()
        second = demo("up")
        took = time.monotonic() - started
        assert second.returncode == 0, second.stdout + second.stderr
        assert "operator: process" in second.stdout and "backend-llm-b: process" in second.stdout
        assert alive(stranger.pid)  # named by the pid file, but not the demo's: left alone
    finally:
        stranger.kill()
        stranger.wait()
    new_operator, new_identity = demo.pid("operator"), (demo.state / "operator.identity").read_text()
    assert new_operator != stranger.pid and alive(new_operator)
    assert new_identity != first_identity
    assert alive(demo.pid("backend-llm-b")) and demo.pid("backend-llm-b") != backend
    # Ready was reported from the status the live operator wrote, not from the dead one's.
    status = pool_status(kubectl)
    assert status["drivenBy"] == new_identity
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    print(f"second `up` with the operator restarted: {took:.1f}s")

    # Nothing died this time: a third `up` restarts nothing.
    third = demo("up")
    assert third.returncode == 0 and "is not running" not in third.stdout
    assert demo.pid("operator") == new_operator


def test_demo_down_with_no_operator_removes_the_finalizer_itself(demo, kubectl):
    up = demo("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert kubectl("get", "clusterpool", "demo", "-n", "default", "-o", "jsonpath={.metadata.finalizers}").stdout
    pids = {name: demo.pid(name) for name in ("operator", "redis", "backend-llm-a")}
    os.killpg(pids["operator"], signal.SIGKILL)
    wait_for(lambda: not alive(pids["operator"]), 10, "the operator gone")

    started = time.monotonic()
    down = demo("down")
    took = time.monotonic() - started
    assert down.returncode == 0, down.stdout + down.stderr
    assert "removing its finalizer" in down.stdout and "operator was not running" in down.stdout
    assert took < 15, f"`down` took {took:.1f}s"
    gone = kubectl("get", "clusterpool", "demo", "-n", "default", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert not alive(pids["redis"]) and not alive(pids["backend-llm-a"])
    assert not list(demo.state.glob("*.pid"))
    print(f"`down` with the operator gone: {took:.1f}s")
