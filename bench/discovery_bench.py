"""Discovery latency: a change at the source -> the pool's status shows it.

Real components: the local control plane, the operator as a process, a consul agent -dev,
HTTP backends on the test hosts 198.18.0.x (run through scripts/netns-run, as `make bench`
does). The pools probe every 30 s, so only the discovery path can make a change appear
sooner. Measured: an address added to an EndpointSlice, and an instance registered in
Consul, until status.total counts it (polled every 20 ms). Results:
bench/results/discovery.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
import kubernetes  # noqa: E402

import consul as consul_script  # noqa: E402
import controlplane  # noqa: E402
from backends import HTTPBackend, free_port  # noqa: E402

REPEATS = 10
GROUP, VERSION, PLURAL = "clusterpool.dev", "v1alpha1", "clusterpools"
CHECK = {"intervalSeconds": 30, "timeoutSeconds": 1, "http": {}}


def main() -> int:
    if os.environ.get("CLUSTERPOOL_NETNS") != "1":
        print("run through scripts/netns-run (make bench does): backends need the test hosts 198.18.0.0/24")
        return 2
    state_dir = Path(tempfile.mkdtemp(prefix="cp-bench-"))
    state = controlplane.up(state_dir)
    agent = consul_script.up(state_dir / "consul")
    kubectl = [str(controlplane.kubectl_path()), "--kubeconfig", state.kubeconfig]
    subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds")], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}"], check=True, capture_output=True
    )
    env = {**os.environ, "KUBECONFIG": state.kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
    op = subprocess.Popen(
        [sys.executable, "-m", "clusterpool", "--liveness", "none"],
        env=env,
        stdout=(state_dir / "operator.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
    custom = kubernetes.client.CustomObjectsApi(client)
    disc = kubernetes.client.DiscoveryV1Api(client)
    port = free_port()
    backends = [HTTPBackend(f"198.18.0.{10 + i}", port).start() for i in range(REPEATS + 1)]

    def total(name: str) -> int:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
        return int((obj.get("status") or {}).get("total", 0))

    def wait_total(name: str, n: int, since: float) -> float:
        while total(name) != n:
            if time.monotonic() - since > 60:
                raise SystemExit(f"{name} never reached {n} endpoints; see {state_dir}/operator.log")
            time.sleep(0.02)
        return time.monotonic() - since

    def slice_body(n: int) -> dict[str, object]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "vllm-a", "labels": {"kubernetes.io/service-name": "vllm"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [b.host], "conditions": {"ready": True}} for b in backends[:n]],
        }

    results = {}
    try:
        disc.create_namespaced_endpoint_slice("default", slice_body(1))
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterPool",
                "metadata": {"name": "k8s"},
                "spec": {"discovery": {"kubernetes": {"service": "vllm", "port": "http"}}, "healthCheck": CHECK},
            },
        )
        wait_total("k8s", 1, time.monotonic())
        samples = []
        for n in range(2, REPEATS + 2):
            time.sleep(0.5)
            start = time.monotonic()
            disc.replace_namespaced_endpoint_slice("vllm-a", "default", slice_body(n))
            samples.append(wait_total("k8s", n, start))
            print(f"  EndpointSlice +1 -> status: {samples[-1]:.3f}s", flush=True)
        results["endpointslice_change_to_status"] = samples

        def register(i: int) -> None:
            httpx.put(
                f"{agent.http}/v1/agent/service/register",
                json={"ID": f"vllm-{i}", "Name": "vllm", "Address": backends[i].host, "Port": port},
            ).raise_for_status()

        register(0)
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterPool",
                "metadata": {"name": "consul"},
                "spec": {"discovery": {"consul": {"address": agent.http, "service": "vllm"}}, "healthCheck": CHECK},
            },
        )
        wait_total("consul", 1, time.monotonic())
        samples = []
        for i in range(1, REPEATS + 1):
            time.sleep(0.5)
            start = time.monotonic()
            register(i)
            samples.append(wait_total("consul", i + 1, start))
            print(f"  Consul register -> status: {samples[-1]:.3f}s", flush=True)
        results["consul_register_to_status"] = samples
    finally:
        op.terminate()
        op.wait(timeout=20)
        consul_script.down(agent)
        controlplane.down(state_dir)
        for b in backends:
            b.stop()
    out = {
        "benchmark": "discovery latency: a change at the source until the pool's status counts it",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": REPEATS,
        "probe_interval_seconds": 30,
        "includes": "operator reaction + one probe of the new endpoint + status write + our poll (20 ms)",
        "results": {
            k: {
                "median_seconds": round(statistics.median(v), 3),
                "max_seconds": round(max(v), 3),
                "samples": [round(x, 3) for x in v],
            }
            for k, v in results.items()
        },
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "discovery.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["results"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
