"""What one ClusterPool status write costs the API server, per CRD variant, side by side.

At 1,000 pools the API server (on the same 2 cores as the operator) is what detection
waits for, and half of its CPU goes into status updates of ClusterPools (docs/scale.md).
The apiserver validates every status update against the whole object, spec included: its
OpenAPI schema and its CEL rules. This measures that cost directly, without the operator:

  for each variant: a fresh local control plane (scripts/controlplane.py), the CRD of the
  variant, --pools pools of 10 static endpoints (never probed: no operator runs), then
  --writes JSON merge patches of their status from --threads threads (as the operator
  sends them: the kubernetes client, `_preload_content=False`, the change only), alternating two statuses
  the operator's own code renders (every endpoint Healthy; ep-0 Unhealthy and ejected).
  Recorded: the kube-apiserver's CPU seconds (/proc/<pid>/stat) and the wall time over
  the writes: CPU ms per write and writes per second.

Variants: `git:REV` (crds/ of that commit), `current` (crds/ of the working tree), `none`
(the current CRD without any CEL rule: the bound of what CEL costs), `atomic-endpoints`
(the current CRD with status.endpoints an atomic list instead of a map keyed by name: the
API server then tracks the list as one field in managedFields, not every field of every
endpoint).

    python bench/status_write_cost.py --variants git:HEAD~1,current,none
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "operator"))

from clusterpool import api  # noqa: E402
from clusterpool.core.failover import BreakerConfig, FailoverConfig  # noqa: E402
from clusterpool.core.health import Endpoint, ProbeResult, Thresholds  # noqa: E402
from clusterpool.core.pool import PoolState, step  # noqa: E402
from clusterpool.core.status import merge_patch, render_status  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CRD_PATH = "crds/clusterpool.dev_clusterpools.yaml"
ENDPOINTS = 10


def crd_of(variant: str) -> dict[str, Any]:
    if variant.startswith("git:"):
        text = subprocess.run(
            ["git", "show", f"{variant[4:]}:{CRD_PATH}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    else:
        text = (ROOT / CRD_PATH).read_text()
    crd = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "CustomResourceDefinition")
    if variant == "none":
        _drop_cel(crd)
    if variant == "atomic-endpoints":
        for version in crd["spec"]["versions"]:
            endpoints = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["endpoints"]
            endpoints.pop("x-kubernetes-list-map-keys", None)
            endpoints["x-kubernetes-list-type"] = "atomic"
    return dict(crd)


def _drop_cel(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        for v in node.values():
            _drop_cel(v)
    elif isinstance(node, list):
        for v in node:
            _drop_cel(v)


def count_rules(node: Any) -> int:
    if isinstance(node, dict):
        return len(node.get("x-kubernetes-validations") or []) + sum(count_rules(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_rules(v) for v in node)
    return 0


def address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 2}"


def statuses(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two statuses of an n-endpoint pool, rendered by the operator's own code."""
    members = tuple(Endpoint(f"ep-{i}", address(i), 8000) for i in range(n))
    thresholds = Thresholds(2, 2, None)
    cfg = FailoverConfig(
        breaker=BreakerConfig(failure_threshold=2, open_seconds=30, max_open_seconds=300),
        max_ejection_percent=100,
        panic_threshold_percent=0,
    )
    now = datetime(2026, 11, 29, tzinfo=UTC)
    ok = {
        ep.name: ProbeResult(True, "ProbeSucceeded", f"GET /health on {ep.address}:8000: HTTP 200", 0.002)
        for ep in members
    }
    healthy, _ = step(PoolState().with_members(members), ok, thresholds, cfg, now)
    down = {**ok, "ep-0": ProbeResult(False, "ConnectionRefused", "GET /health on 198.18.0.2:8000: connection refused")}
    failing = healthy
    for k in range(2):
        failing, _ = step(failing, down, thresholds, cfg, now + timedelta(seconds=5 * (k + 1)))

    def render(state: PoolState, at: datetime) -> dict[str, Any]:
        return render_status(state, source="Static", generation=1, prev_conditions=[], now=at)

    return render(healthy, now), render(failing, now + timedelta(seconds=10))


def pool_body(name: str, n: int) -> dict[str, Any]:
    eps = [{"name": f"ep-{i}", "address": address(i), "port": 8000} for i in range(n)]
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": "ClusterPool",
        "metadata": {"name": name},
        "spec": {
            "discovery": {"static": {"endpoints": eps}},
            "healthCheck": {"intervalSeconds": 5, "timeoutSeconds": 1, "unhealthyThreshold": 2, "http": {}},
        },
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import kubernetes

    import controlplane

    crd = crd_of(variant)
    with tempfile.TemporaryDirectory(prefix="cp-swc-") as tmp:
        state = controlplane.up(Path(tmp))
        try:
            client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
            ext = kubernetes.client.ApiextensionsV1Api(client)
            ext.create_custom_resource_definition(crd)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                conds = (ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions) or []
                if any(c.type == "Established" and c.status == "True" for c in conds):
                    break
                time.sleep(0.2)
            time.sleep(2)  # the CRD handler picks up the new schema
            core = kubernetes.client.CoreV1Api(client)
            core.create_namespace({"metadata": {"name": "swc"}})
            objs = kubernetes.client.CustomObjectsApi(client)
            names = [f"pool-{i:04d}" for i in range(args.pools)]
            for n in names:
                objs.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, "swc", api.PLURAL, pool_body(n, args.endpoints)
                )
            a, b = statuses(args.endpoints)

            patches = {0: merge_patch(b, a), 1: merge_patch(a, b)}  # what the operator sends: the change

            def write(i: int) -> None:
                k = i // args.pools  # pass k: every pool once; pass 0 writes the whole status
                status = a if k == 0 else patches[k % 2]
                objs.patch_namespaced_custom_object_status(
                    api.GROUP,
                    api.VERSION,
                    "swc",
                    api.PLURAL,
                    names[i % args.pools],
                    {"status": status},
                    field_manager="clusterpool-operator",
                    _preload_content=False,
                ).read()

            with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(write, range(args.pools)))  # warm: every object has a status
                cpu0, t0 = cpu_seconds(state.apiserver_pid), time.monotonic()
                list(pool.map(write, range(args.pools, args.pools + args.writes)))
                cpu1, t1 = cpu_seconds(state.apiserver_pid), time.monotonic()
            size = len(
                json.dumps(objs.get_namespaced_custom_object(api.GROUP, api.VERSION, "swc", api.PLURAL, names[0]))
            )
        finally:
            controlplane.down(Path(tmp))
    return {
        "variant": variant,
        "endpoints_per_pool": args.endpoints,
        "cel_rules": count_rules(crd),
        "writes": args.writes,
        "apiserver_cpu_seconds": round(cpu1 - cpu0, 2),
        "apiserver_cpu_ms_per_write": round(1000 * (cpu1 - cpu0) / args.writes, 2),
        "wall_seconds": round(t1 - t0, 2),
        "writes_per_second": round(args.writes / (t1 - t0), 1),
        "object_bytes": size,
        "loadavg": list(os.getloadavg()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="git:HEAD,current,none")
    p.add_argument("--pools", type=int, default=100)
    p.add_argument("--endpoints", type=int, default=ENDPOINTS, help="endpoints per pool")
    p.add_argument("--writes", type=int, default=3000)
    p.add_argument("--threads", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2, help="each variant this many times, interleaved")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    runs = []
    for r in range(args.rounds):
        for v in args.variants.split(","):
            res = measure(v, args)
            res["round"] = r + 1
            print(json.dumps(res), flush=True)
            runs.append(res)
    if not args.no_save:
        path = RESULTS / f"status_write_cost-{args.endpoints}ep.json"
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        out = {
            "benchmark": "status_write_cost",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": head.stdout.strip(),
            "pools": args.pools,
            "threads": args.threads,
            "endpoints_per_pool": args.endpoints,
            "runs": runs,
        }
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
