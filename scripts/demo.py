#!/usr/bin/env python3
"""`make demo`: a ClusterPool working end to end on this machine.

up     a control plane (a local etcd + kube-apiserver unless $KUBECONFIG is set),
       the CRD, three demo backends on 127.0.0.2-4:18080, a redis-server on
       127.0.0.1:16379 for the pool's cache, the operator, and the sample pool; waits
       until the pool is Ready and shows it
down   stops all of it
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controlplane

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
SAMPLE = ROOT / "manifests" / "samples" / "static-pool.yaml"
BACKENDS = {"llm-a": "127.0.0.2", "llm-b": "127.0.0.3", "llm-c": "127.0.0.4"}
PORT = 18080
REDIS_PORT = 16379


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


def spawn(name: str, cmd: list[str], env: dict[str, str]) -> None:
    log = (STATE / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
    )
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
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

    for name, host in BACKENDS.items():
        if (STATE / f"backend-{name}.pid").exists():
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

    if not (STATE / "redis.pid").exists():
        if not port_free("127.0.0.1", REDIS_PORT):
            print(f"error: 127.0.0.1:{REDIS_PORT} is in use; run `make demo-down` or free the port", file=sys.stderr)
            return 1
        redis_args = ["--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        spawn("redis", ["redis-server", *redis_args, "--dir", str(STATE)], env)
        say(f"redis-server on 127.0.0.1:{REDIS_PORT} (the pool's cache)")

    if not (STATE / "operator.pid").exists():
        liveness = f"http://127.0.0.1:{controlplane.free_port()}/healthz"
        metrics = f"http://127.0.0.1:{controlplane.free_port()}/metrics"
        op_env = {**env, "PYTHONPATH": str(ROOT / "operator")}
        spawn("operator", [sys.executable, "-m", "clusterpool", "--liveness", liveness, "--metrics", metrics], op_env)
        (STATE / "metrics.url").write_text(metrics)
        say(f"operator started (log: {STATE / 'operator.log'}, liveness: {liveness}, metrics: {metrics})")

    say("applying manifests/samples/static-pool.yaml")
    kubectl("apply", "-f", str(SAMPLE), env=env)
    say("waiting for the pool to be Ready")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = subprocess.run(
            [str(controlplane.kubectl_path()), "wait", "--for=condition=Ready", "clusterpool/demo", "--timeout=10s"],
            env=env,
            text=True,
            capture_output=True,
        )
        if r.returncode == 0:
            break
    else:
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


def down() -> int:
    env = dict(os.environ)
    state = controlplane.load_state(STATE / "controlplane")
    if state is not None:
        env["KUBECONFIG"] = state.kubeconfig
    if env.get("KUBECONFIG") and (STATE / "operator.pid").exists():
        # Delete the pool while the operator still runs, so its finalizer is released.
        subprocess.run(
            [str(controlplane.kubectl_path()), "delete", "-f", str(SAMPLE), "--ignore-not-found", "--timeout=30s"],
            env=env,
            check=False,
        )
    for pidfile in sorted(STATE.glob("*.pid")):
        controlplane.stop_pid(int(pidfile.read_text()))
        pidfile.unlink()
        say(f"stopped {pidfile.stem}")
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
