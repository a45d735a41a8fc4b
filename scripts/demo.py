#!/usr/bin/env python3
"""`make demo`: a ClusterPool working end to end on this machine.

up     a control plane (a local etcd + kube-apiserver unless $KUBECONFIG is set),
       the CRD, three demo backends on 127.0.0.2-4:18080, a redis-server on
       127.0.0.1:16379 for the pool's cache, the operator, and the sample pool; waits
       until the pool is Ready and shows it
down   stops all of it

A second `up` keeps what still runs and starts again what does not: a pid file counts only
while the process it names is alive and is the one started under that name (its command
line, as recorded beside the pid file in <name>.cmdline), so a dead process or a pid taken
by another program is restarted, never trusted or killed. `up` reports the pool Ready only
from a status written by the operator that runs now (status.drivenBy is its identity), not
from one a dead operator left behind. `down` with no operator running removes the pool's
finalizer itself instead of waiting for an operator that will not come.

$CLUSTERPOOL_DEMO_DIR moves the state (pid files, logs) from .demo/ elsewhere.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controlplane
from clusterpool.k8s.shards import lease_name

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CLUSTERPOOL_DEMO_DIR") or ROOT / ".demo")
SAMPLE = ROOT / "manifests" / "samples" / "static-pool.yaml"
BACKENDS = {"llm-a": "127.0.0.2", "llm-b": "127.0.0.3", "llm-c": "127.0.0.4"}
PORT = 18080
REDIS_PORT = 16379
# The demo operator's shard Leases live in a namespace of their own, so an operator already
# running on the same cluster (a real install, or another test's) never shares its pools.
LEASE_NAMESPACE = "clusterpool-demo"


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def kubectl(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(controlplane.kubectl_path()), *args], env=env, text=True, check=check, capture_output=False
    )


def wait_established(crd: str, env: dict[str, str], timeout: float = 60) -> None:
    """`kubectl wait` fails at once while a new CRD has no conditions yet: ask until it has."""
    wanted = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = subprocess.run(
            [str(controlplane.kubectl_path()), "get", crd, "-o", wanted], env=env, text=True, capture_output=True
        )
        if got.stdout == "True":
            return
        time.sleep(0.3)
    raise SystemExit(f"{crd} was not Established after {timeout:g}s")


def spawn(name: str, cmd: list[str], env: dict[str, str]) -> int:
    log = (STATE / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
    )
    (STATE / f"{name}.cmdline").write_text("\0".join(cmd))
    (STATE / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def named_pid(name: str) -> int | None:
    try:
        return int((STATE / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def is_the_process(pid: int, cmd: list[str]) -> bool:
    """Whether `pid` is alive and runs `cmd`: the same command line, or (for a program that
    rewrites its title, as redis-server does) the same executable under the same name."""
    try:
        seen = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X") or not cmd:  # a zombie is not running
        return False
    if seen == cmd:
        return True
    program = shutil.which(cmd[0])
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    title = seen[0].split()[0] if seen and seen[0] else ""
    return program is not None and exe == os.path.realpath(program) and Path(title).name == Path(cmd[0]).name


def running(name: str) -> int | None:
    """The pid in <name>.pid when that process is alive and is the one started as `name`."""
    pid = named_pid(name)
    try:
        cmd = (STATE / f"{name}.cmdline").read_text().split("\0")
    except OSError:
        return None
    return pid if pid is not None and is_the_process(pid, cmd) else None


def forget(name: str) -> None:
    for suffix in ("pid", "cmdline", "identity"):
        (STATE / f"{name}.{suffix}").unlink(missing_ok=True)


def still_running(name: str) -> bool:
    """True when `name` runs; otherwise its stale files are gone (and it says so)."""
    if running(name) is not None:
        return True
    pid = named_pid(name)
    if pid is not None:
        say(f"{name}: process {pid} of its pid file is not running (or is another program): starting it again")
    forget(name)
    return False


def port_free(host: str, port: int) -> bool:
    """Whether a server can listen there now. With SO_REUSEADDR, as the backends and
    redis-server set it: connections a killed server left in TIME_WAIT do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def up() -> int:
    STATE.mkdir(exist_ok=True)
    env = dict(os.environ)
    if os.environ.get("KUBECONFIG"):
        say(f"using the cluster of KUBECONFIG={os.environ['KUBECONFIG']}")
    else:
        say("no KUBECONFIG set: starting a local control plane (etcd + kube-apiserver, RBAC on)")
        state = controlplane.up(STATE / "controlplane")
        env["KUBECONFIG"] = state.kubeconfig
    say("installing the ClusterPool CRD")
    kubectl("apply", "-f", str(ROOT / "crds"), env=env)
    wait_established("crd/clusterpools.clusterpool.dev", env)
    if subprocess.run(
        [str(controlplane.kubectl_path()), "get", "namespace", LEASE_NAMESPACE], env=env, capture_output=True
    ).returncode:
        kubectl("create", "namespace", LEASE_NAMESPACE, env=env)

    for name, host in BACKENDS.items():
        if still_running(f"backend-{name}"):
            continue
        if not port_free(host, PORT):
            print(f"error: {host}:{PORT} is in use; run `make demo-down` or free the port", file=sys.stderr)
            return 1
        spawn(
            f"backend-{name}",
            [
                sys.executable,
                "scripts/backends.py",
                "--count",
                "1",
                "--first",
                host.rsplit(".", 1)[1],
                "--port",
                str(PORT),
            ],
            env,
        )
    say(f"demo backends on {', '.join(f'{h}:{PORT}' for h in BACKENDS.values())}")

    if not still_running("redis"):
        if not port_free("127.0.0.1", REDIS_PORT):
            print(f"error: 127.0.0.1:{REDIS_PORT} is in use; run `make demo-down` or free the port", file=sys.stderr)
            return 1
        redis_args = ["--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        spawn("redis", ["redis-server", *redis_args, "--dir", str(STATE)], env)
        say(f"redis-server on 127.0.0.1:{REDIS_PORT} (the pool's cache)")

    dead_identity = (STATE / "operator.identity").read_text() if (STATE / "operator.identity").exists() else None
    if not still_running("operator"):
        if dead_identity:
            # Its shard Lease would hold the pool until it expires: the process is gone, so
            # the Lease goes now and the new operator takes the pool at once.
            lease = ["lease", lease_name(dead_identity), "-n", LEASE_NAMESPACE, "--ignore-not-found"]
            subprocess.run(
                [str(controlplane.kubectl_path()), "delete", *lease],
                env=env,
                check=False,
                capture_output=True,
            )
        liveness = f"http://127.0.0.1:{controlplane.free_port()}/healthz"
        metrics = f"http://127.0.0.1:{controlplane.free_port()}/metrics"
        identity = f"demo-{secrets.token_hex(4)}"
        op_env = {**env, "PYTHONPATH": str(ROOT / "operator")}
        cmd = [
            sys.executable,
            "-m",
            "clusterpool",
            "--liveness",
            liveness,
            "--metrics",
            metrics,
            "--identity",
            identity,
            "--lease-namespace",
            LEASE_NAMESPACE,
        ]
        spawn("operator", cmd, op_env)
        (STATE / "operator.identity").write_text(identity)
        (STATE / "metrics.url").write_text(metrics)
        say(f"operator {identity} started (log: {STATE / 'operator.log'}, liveness: {liveness}, metrics: {metrics})")
    identity = (STATE / "operator.identity").read_text()

    say("applying manifests/samples/static-pool.yaml")
    kubectl("apply", "-f", str(SAMPLE), env=env)
    say(f"waiting for the pool to be Ready in a status written by operator {identity}")
    if not wait_ready_by(identity, env, timeout=90):
        print(f"error: the pool did not become Ready; see {STATE / 'operator.log'}", file=sys.stderr)
        return 1
    print()
    kubectl("get", "clusterpools", env=env)
    print(f"""
The pool is Ready. Try:
  export KUBECONFIG={env["KUBECONFIG"]}
  kubectl describe clusterpool demo                  # per-endpoint health, conditions, Events
  kubectl get clusterpools -o wide                   # CACHE: the layered cache's Redis answers
  kill $(cat {STATE}/backend-llm-b.pid)              # llm-b turns Unhealthy within ~4s
  kubectl get clusterpools -w
  kill $(cat {STATE}/redis.pid)                      # CacheReady turns False (the pool stays Ready)
  curl -s $(cat {STATE}/metrics.url) | grep ^clusterpool_   # the operator's Prometheus metrics
(kubectl is also at {controlplane.kubectl_path()})
Stop everything with: make demo-down""")
    return 0


def wait_ready_by(identity: str, env: dict[str, str], timeout: float) -> bool:
    """Wait until the pool is Ready in a status that operator `identity` wrote: a Ready
    left by an operator that died says nothing about now."""
    wanted = '{.status.drivenBy} {.status.conditions[?(@.type=="Ready")].status}'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = subprocess.run(
            [str(controlplane.kubectl_path()), "get", "-f", str(SAMPLE), "-o", f"jsonpath={wanted}"],
            env=env,
            text=True,
            capture_output=True,
            check=False,
        )
        if got.stdout.strip() == f"{identity} True":
            return True
        time.sleep(0.5)
    return False


def delete_pool(env: dict[str, str], operator_runs: bool) -> None:
    kubectl_bin = str(controlplane.kubectl_path())
    if operator_runs:
        # Deleted while the operator runs, which cleans up and releases its finalizer.
        subprocess.run([kubectl_bin, "delete", "-f", str(SAMPLE), "--ignore-not-found", "--timeout=30s"], env=env)
        return
    # No operator will release the finalizer: remove it here (what the operator published
    # is owned by the pool, so a cluster's garbage collector removes it with the pool).
    say("no operator runs: deleting the pool and removing its finalizer")
    subprocess.run([kubectl_bin, "delete", "-f", str(SAMPLE), "--ignore-not-found", "--wait=false"], env=env)
    subprocess.run(
        [kubectl_bin, "patch", "-f", str(SAMPLE), "--type=merge", "-p", '{"metadata":{"finalizers":null}}'],
        env=env,
        capture_output=True,
        check=False,
    )
    subprocess.run([kubectl_bin, "wait", "--for=delete", "-f", str(SAMPLE), "--timeout=10s"], env=env, check=False)


def down() -> int:
    env = dict(os.environ)
    state = controlplane.load_state(STATE / "controlplane")
    if state is not None:
        env["KUBECONFIG"] = state.kubeconfig
    if env.get("KUBECONFIG"):
        delete_pool(env, operator_runs=running("operator") is not None)
    for pidfile in sorted(STATE.glob("*.pid")):
        name = pidfile.stem
        pid = running(name)
        if pid is not None:
            controlplane.stop_pid(pid)
            say(f"stopped {name}")
        else:
            say(f"{name} was not running")
        forget(name)
    if state is not None:
        controlplane.down(STATE / "controlplane")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down"])
    args = p.parse_args()
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    raise SystemExit(main())
