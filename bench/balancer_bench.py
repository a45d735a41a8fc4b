"""Balancer benchmark: time per pick of each strategy at 10 and 1,000 endpoints, side by
side with LiteLLM's Router (its comparable routing strategies, same run) and bare-Python
references; plus distribution quality, and the cost of a label selector: a request through
the SDK's PoolClient without and with a selector, and picks weighed against capacity.
Results: bench/results/balancer.json.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/balancer_bench.py   # make bench does this

Timing: each figure is the median of 5 repeats of a loop of picks (time.perf_counter),
including the loop's own overhead, for ours and for the references alike.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clusterpool.balancer import STRATEGIES, Adaptive, ConsistentHash, LeastConnections, RoundRobin, Target, Weighted
from clusterpool.client import PoolClient, RoutingTable, StaticTable
from clusterpool.core.failover import BreakerConfig

HERE = Path(__file__).resolve().parent
REPEATS = 5


def per_pick_ns(fn: Callable[[], object], n: int) -> float:
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(runs)


def paired_ns(a: Callable[[], object], b: Callable[[], object], n: int) -> tuple[float, float]:
    """per_pick_ns of two loops, their repeats alternating, so load that comes and goes on
    a shared machine hits both alike."""
    runs: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for fn, out in ((a, runs[0]), (b, runs[1])):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(runs[0]), statistics.median(runs[1])


def targets(n: int, weighted: bool = False) -> list[Target]:
    rng = random.Random(n)
    return [
        Target(f"t{i}", f"10.{i // 250}.{i % 250}.1", 8000, rng.randint(1, 10) if weighted else 1) for i in range(n)
    ]


def ours(n: int) -> dict[str, float]:
    out = {}
    rr = RoundRobin()
    rr.update(targets(n))
    out["RoundRobin"] = per_pick_ns(rr.pick, 200_000)
    w = Weighted()
    w.update(targets(n, weighted=True))
    out["Weighted"] = per_pick_ns(w.pick, 200_000)
    lc = LeastConnections()
    lc.update(targets(n))
    out["LeastConnections"] = per_pick_ns(lc.pick, 100_000 if n <= 32 else 200_000)
    ch = ConsistentHash()
    ch.update(targets(n))
    keys = [f"session-{i}" for i in range(4096)]
    kit = itertools.cycle(keys)
    out["ConsistentHash"] = per_pick_ns(lambda: ch.pick(next(kit)), 200_000)
    ad = Adaptive()
    ad.update(targets(n))
    for t in ad.targets:
        ad.started(t)
        ad.finished(t, random.uniform(0.01, 0.05))
    out["Adaptive"] = per_pick_ns(ad.pick, 200_000)

    # a full lease (pick + in-flight + latency report), what a request really costs
    def lease() -> None:
        with ad.lease():
            pass

    out["Adaptive lease (pick+report)"] = per_pick_ns(lease, 100_000)
    return out


def labelled(n: int, capacity: int | None = None) -> list[Target]:
    """Targets of two models, alternating: a selector on one matches half of them."""
    return [
        Target(t.name, t.address, t.port, labels=(("model", f"m{i % 2}"),), capacity=capacity)
        for i, t in enumerate(targets(n))
    ]


def filtered(n: int) -> dict[str, float]:
    """One request through PoolClient (acquire: select, pick, breaker, in flight; then
    finished), without a selector and with one matching half the endpoints; and a bare
    pick of LeastConnections and Adaptive when every endpoint declares a capacity."""
    out = {}
    keys = itertools.cycle([f"session-{i}" for i in range(4096)])
    for strategy in STRATEGIES:
        loops = []
        for selector in (None, {"model": "m0"}):
            pool = PoolClient(StaticTable(RoutingTable("r", strategy, tuple(labelled(n)), BreakerConfig())))

            def request(pool: PoolClient = pool, selector: dict[str, str] | None = selector) -> None:
                t = pool.acquire(next(keys), selector=selector)
                pool.finished(t, 0.001, True)

            loops.append(request)
        plain, selected = paired_ns(loops[0], loops[1], 20_000)
        out[f"PoolClient request, {strategy}, no selector"] = plain
        out[f"PoolClient request, {strategy}, selector model=m0 (half the endpoints)"] = selected
    lc = LeastConnections()
    lc.update(labelled(n, capacity=100))
    out["LeastConnections pick, every endpoint with a capacity"] = per_pick_ns(lc.pick, 100_000)
    ad = Adaptive()
    ad.update(labelled(n, capacity=100))
    for t in ad.targets:
        ad.started(t)
        ad.finished(t, random.uniform(0.01, 0.05))
    out["Adaptive pick, every endpoint with a capacity"] = per_pick_ns(ad.pick, 100_000)
    return out


def references(n: int) -> dict[str, float]:
    out = {}
    ts = targets(n)
    cyc = itertools.cycle(ts)
    out["itertools.cycle next()"] = per_pick_ns(lambda: next(cyc), 500_000)
    lock = threading.Lock()
    idx = [0]

    def locked_rr() -> Target:
        with lock:
            i = idx[0]
            idx[0] = (i + 1) % n
        return ts[i]

    out["round robin with a Lock and an index"] = per_pick_ns(locked_rr, 500_000)
    return out


LITELLM_STRATEGIES = {
    "simple-shuffle": "Weighted / RoundRobin",
    "least-busy": "LeastConnections",
    "latency-based-routing": "Adaptive",
}


def litellm_router(n: int) -> dict[str, float]:
    try:
        from litellm import Router
    except ImportError:
        return {}
    out = {}
    model_list = [
        {
            "model_name": "m",
            "litellm_params": {
                "model": "openai/stub",
                "api_base": f"http://10.0.0.{i % 250}:8000/v1",
                "api_key": "x",
                "rpm": 1000,
            },
        }
        for i in range(n)
    ]
    for strategy in LITELLM_STRATEGIES:
        router = Router(model_list=model_list, routing_strategy=strategy)
        router.get_available_deployment(model="m")
        out[strategy] = per_pick_ns(lambda r=router: r.get_available_deployment(model="m"), 2000 if n <= 10 else 200)
    return out


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[k] - e) ** 2 / e for k, e in expected.items())


def quality() -> dict[str, object]:
    out: dict[str, object] = {}
    n_picks = 1_000_000
    rr = RoundRobin()
    rr.update(targets(10))
    c = Counter(rr.pick().name for _ in range(n_picks))
    out["RoundRobin chi-square (10 targets, 1e6 picks, 9 dof; 16.9 is the 5% critical value)"] = chi_square(
        c, {t.name: n_picks / 10 for t in rr.targets}
    )
    w = Weighted()
    ws = targets(10, weighted=True)
    w.update(ws)
    c = Counter(w.pick().name for _ in range(n_picks))
    total = sum(t.weight for t in ws)
    out["Weighted chi-square (10 targets, weights 1-10, 1e6 picks)"] = round(
        chi_square(c, {t.name: n_picks * t.weight / total for t in ws}), 3
    )
    for n in (10, 100):
        ch = ConsistentHash()
        ch.update(targets(n))
        keys = [f"k{i}" for i in range(100_000)]
        before = {k: ch.pick(k).name for k in keys}
        ch.update(ch.targets[1:])
        moved = sum(before[k] != ch.pick(k).name for k in keys)
        out[f"ConsistentHash keys moved when 1 of {n} leaves (ideal {1 / n:.3f})"] = round(moved / len(keys), 4)
    # Adaptive: one of 4 endpoints becomes 10x slower at t=0 (simulated clock, 200 req/s)
    clock = [0.0]
    ad = Adaptive(decay_s=10.0, rng=random.Random(3), clock=lambda: clock[0])
    ad.update(targets(4))
    shares = []
    for second in range(20):
        picks = Counter()
        for _ in range(200):
            clock[0] += 1 / 200
            t = ad.pick()
            picks[t.name] += 1
            ad.started(t)
            ad.finished(t, 0.2 if (t.name == "t0" and second >= 5) else 0.02)
        shares.append(round(picks["t0"] / 200, 3))
    out["Adaptive: share of the endpoint made 10x slower at second 5, per second (fair share 0.25)"] = shares
    return out


def main() -> int:
    result: dict[str, object] = {
        "benchmark": "balancer pick time, side by side with LiteLLM's Router; distribution quality",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "method": f"median of {REPEATS} repeats of a loop of picks; ns per pick incl. loop overhead",
    }
    for n in (10, 1000):
        print(f"{n} endpoints", flush=True)
        o, r, ll, f = ours(n), references(n), litellm_router(n), filtered(n)
        result[f"{n}_endpoints"] = {
            "clusterpool_ns": {k: round(v) for k, v in o.items()},
            "selector_and_capacity_ns": {k: round(v) for k, v in f.items()},
            "python_reference_ns": {k: round(v) for k, v in r.items()},
            "litellm_router_ns": {k: round(v) for k, v in ll.items()},
            "speedup_over_litellm": {
                f"{ours_name} vs {ll_name}": round(ll[ll_name] / o[ours_name.split(" / ")[0]], 1)
                for ll_name, ours_name in LITELLM_STRATEGIES.items()
                if ll_name in ll
                for ours_name in ours_name.split(" / ")
            },
        }
        print(json.dumps(result[f"{n}_endpoints"], indent=2), flush=True)
    result["quality"] = quality()
    print(json.dumps(result["quality"], indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "balancer.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
