"""The cost of the operator's pool series: memory, one scrape of /metrics, one update.

For each N in --pools, a fresh process builds the operator's metrics (clusterpool.metrics)
for N pools of 10 endpoints each, as a running operator does every round (a status
rendered, a round timed, an Event counted), serves them on a loopback port with the
operator's own `serve()`, and measures:

  - RSS taken by the series (after a full collection, /proc/self/statm, against the same
    process before any pool);
  - one scrape over HTTP (the median of --scrapes, each after a status update of every
    pool that moved every probe latency, as the rounds between two scrapes do): seconds,
    bytes, lines; the scrape runs in the server's thread, holding the GIL the event
    loop needs;
  - one pool's status update (the call every round makes), microseconds, median over
    all pools.

With --against REV the same measurements run, interleaved, against the operator code
of commit REV too (a git worktree, removed afterwards): a side-by-side comparison on one
machine in one run. Results are appended to bench/results/metrics.json;
docs/performance.md quotes them.

    python bench/metrics_bench.py [--pools 100,300,1000] [--scrapes 5] [--against REV]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENDPOINTS = 10


def status_of(pool: int, round_: int) -> dict[str, object]:
    """A pool's rendered status; the probe latencies move from round to round."""
    endpoints = [
        {
            "name": f"ep-{i}",
            "health": "Healthy",
            "eligible": True,
            "breaker": "Closed",
            "lastProbeLatencyMilliseconds": 1 + (pool + i + round_) % 7,
        }
        for i in range(ENDPOINTS)
    ]
    return {
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiscoveryDegraded", "status": "False"}],
        "total": ENDPOINTS,
        "healthy": ENDPOINTS,
        "eligible": ENDPOINTS,
        "ejected": 0,
        "activeTier": 0,
        "panic": False,
        "endpoints": endpoints,
    }


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(pools: int, scrapes: int) -> dict[str, object]:
    """Runs in a process of its own (see main)."""
    from prometheus_client import CollectorRegistry

    from clusterpool.metrics import Metrics, serve

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    port = free_port()
    # before the pool series had their own exposition, serve() took the registry
    serve(f"http://127.0.0.1:{port}/metrics", metrics if hasattr(metrics, "exposition") else registry)
    gc.collect()
    before = rss_mib()
    series = [metrics.pool("bench", f"pool-{p}") for p in range(pools)]
    for round_ in range(3):
        for p, m in enumerate(series):
            m.status(status_of(p, round_))
            m.round(0.01 * (1 + p % 40))
        for m in series:
            m.event("Normal", "PoolReady")
    gc.collect()
    taken = rss_mib() - before

    updates = []
    for p, m in enumerate(series):
        s = status_of(p, 3)
        t = time.perf_counter()
        m.status(s)
        updates.append(time.perf_counter() - t)

    times, size, lines = [], 0, 0
    for scrape in range(scrapes):
        for p, m in enumerate(series):  # the rounds between two scrapes: every latency moved
            m.status(status_of(p, 4 + scrape))
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            body = r.read()
        times.append(time.perf_counter() - t)
        size, lines = len(body), body.count(b"\n")
    return {
        "pools": pools,
        "endpoints_per_pool": ENDPOINTS,
        "series_rss_mib": round(taken, 1),
        "scrape_seconds_median": round(statistics.median(times), 4),
        "scrape_bytes": size,
        "scrape_lines": lines,
        "status_update_microseconds_median": round(statistics.median(updates) * 1e6, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="100,300,1000")
    p.add_argument("--scrapes", type=int, default=5)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the measuring child
    p.add_argument("--against", help="also measure the operator code of this commit, side by side")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.scrapes)))
        return
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "operator"], capture_output=True, text=True).stdout.strip()
    trees = {commit + ("+dirty" if dirty else ""): ROOT / "operator"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            subprocess.run([*git, "worktree", "add", "--detach", "-q", tmp, args.against], check=True)
            trees[args.against] = Path(tmp) / "operator"
        try:
            runs: dict[str, list[dict[str, object]]] = {rev: [] for rev in trees}
            for n in (int(x) for x in args.pools.split(",")):
                for rev, tree in trees.items():
                    child = [sys.executable, __file__, "--one", str(n), "--scrapes", str(args.scrapes)]
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    out = subprocess.run(child, capture_output=True, text=True, check=True, env=env).stdout
                    run = json.loads(out.strip().splitlines()[-1])
                    print(rev, json.dumps(run))
                    runs[rev].append(run)
        finally:
            if args.against:
                subprocess.run([*git, "worktree", "remove", "--force", tmp], check=True)
    if args.no_save:
        return
    entry = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "runs_by_commit": runs,
    }
    path = HERE / "results" / "metrics.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append(entry)
    path.write_text(json.dumps(history, indent=2) + "\n")
    print(f"appended to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
