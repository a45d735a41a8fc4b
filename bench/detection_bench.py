"""Detection latency: a backend dies -> the pool's EndpointSlice no longer lists it.

Real components: the local control plane, the operator as a process, HTTP backends on the
test hosts 198.18.0.x (run through scripts/netns-run, as `make bench` does). For each
health-check setting, the benchmark kills one of three backends at a random point of
the probe cycle, polls the EndpointSlices every 20 ms, and compares the time taken with
the floor intervalSeconds x unhealthyThreshold. Results: bench/results/detection.json.

    scripts/netns-run python bench/detection_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import kubernetes  # noqa: E402

import controlplane  # noqa: E402
from backends import HTTPBackend, free_port  # noqa: E402

SETTINGS = [(2, 1), (2, 3)]  # (intervalSeconds, unhealthyThreshold)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if os.environ.get("CLUSTERPOOL_NETNS") != "1":
        print("run through scripts/netns-run (make bench does): backends need the test hosts 198.18.0.0/24")
        return 2
    state_dir = Path(tempfile.mkdtemp(prefix="cp-bench-"))
    state = controlplane.up(state_dir)
    kubectl = [str(controlplane.kubectl_path()), "--kubeconfig", state.kubeconfig]
    subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds")], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd/clusterpools.clusterpool.dev"],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "KUBECONFIG": state.kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
    log = (state_dir / "operator.log").open("wb")
    op = subprocess.Popen(
        [sys.executable, "-m", "clusterpool", "--liveness", "none"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
    custom = kubernetes.client.CustomObjectsApi(client)
    disc = kubernetes.client.DiscoveryV1Api(client)

    def listed(name: str) -> set[str]:
        items = disc.list_namespaced_endpoint_slice("default", label_selector=f"kubernetes.io/service-name={name}")
        return {a for s in items.items for e in (s.endpoints or []) for a in e.addresses}

    results = []
    host = iter(range(10, 250))
    try:
        for interval, threshold in SETTINGS:
            samples = []
            for r in range(args.repeats):
                port = free_port()
                bs = [HTTPBackend(f"198.18.0.{next(host)}", port).start() for _ in range(3)]
                name = f"bench-{interval}-{threshold}-{r}"
                spec = {
                    "discovery": {
                        "static": {
                            "endpoints": [
                                {"name": f"ep-{i}", "address": b.host, "port": b.port} for i, b in enumerate(bs)
                            ]
                        }
                    },
                    "healthCheck": {
                        "intervalSeconds": interval,
                        "timeoutSeconds": 1,
                        "unhealthyThreshold": threshold,
                        "intervalJitterPercent": 10,
                        "http": {},
                    },
                    "failover": {"maxEjectionPercent": 100, "panicThresholdPercent": 0},
                }
                custom.create_namespaced_custom_object(
                    "clusterpool.dev",
                    "v1alpha1",
                    "default",
                    "clusterpools",
                    {
                        "apiVersion": "clusterpool.dev/v1alpha1",
                        "kind": "ClusterPool",
                        "metadata": {"name": name},
                        "spec": spec,
                    },
                )
                deadline = time.monotonic() + 30
                while listed(name) != {b.host for b in bs}:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} never published its 3 endpoints; see {state_dir}/operator.log")
                    time.sleep(0.05)
                time.sleep(random.uniform(0, interval))  # a random point of the probe cycle
                bs[0].stop()
                killed = time.monotonic()
                while bs[0].host in listed(name):
                    if time.monotonic() - killed > 60:
                        raise SystemExit(f"{name}: the dead endpoint stayed listed for 60s")
                    time.sleep(0.02)
                samples.append(time.monotonic() - killed)
                print(f"  interval {interval}s x threshold {threshold}: {samples[-1]:.2f}s", flush=True)
                custom.delete_namespaced_custom_object("clusterpool.dev", "v1alpha1", "default", "clusterpools", name)
                for b in bs:
                    b.stop()
            floor = interval * threshold
            results.append(
                {
                    "intervalSeconds": interval,
                    "unhealthyThreshold": threshold,
                    "floor_seconds": floor,
                    "median_seconds": round(statistics.median(samples), 2),
                    "min_seconds": round(min(samples), 2),
                    "max_seconds": round(max(samples), 2),
                    "median_over_floor": round(statistics.median(samples) / floor, 2),
                    "samples": [round(x, 2) for x in samples],
                }
            )
    finally:
        op.terminate()
        op.wait(timeout=20)
        controlplane.down(state_dir)
    out = {
        "benchmark": "detection latency: backend killed -> EndpointSlice no longer lists it",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "jitter_percent": 10,
        "note": "floor = intervalSeconds x unhealthyThreshold; the kill lands at a random point of the cycle, "
        "so the expected value is about floor - interval/2 + probe, write and watch time",
        "results": results,
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "detection.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
