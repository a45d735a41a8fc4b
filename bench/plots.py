"""The plots of docs/load-balancing.md and docs/performance.md, drawn from the recorded
benchmark JSON in bench/results/ (it runs no benchmark), next to the goals of the issues.

    .venv/bin/python bench/plots.py          # writes docs/plots/*.png

Needs matplotlib (pinned in bench/requirements.txt, which `make bench` installs). Each
figure says in its title which file and which run it comes from. docs/scale-detection.png
is drawn by bench/scale_bench.py itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "plots"

STRATEGIES = ("RoundRobin", "Weighted", "LeastConnections", "ConsistentHash", "Adaptive")
# Per-pick goals of the balancer issue, in microseconds, at 10 and at 1,000 endpoints.
PICK_GOAL_US = {"RoundRobin": 0.4, "Weighted": 1.0, "LeastConnections": 1.0, "ConsistentHash": 1.5, "Adaptive": 2.0}
LITELLM_GOAL_X = 50
# The scale issue's goals for one replica at 1,000 pools.
SCALE_FLOOR_S = 10
SCALE_READY_GOAL_S = 60
SCALE_RSS_GOAL_MIB = 300
BASELINE_COMMIT = "0c0ffaf"  # the operator before the scale work (docs/scale.md)


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def latest_selectors_file() -> Path | None:
    files = sorted(RESULTS.glob("balancer-selectors-*.json"))
    return files[-1] if files else None


def balancer_picks(plt: Any) -> Any:
    d = load("balancer.json")
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    width = 0.27
    xs = range(len(STRATEGIES))
    for k, (size, shade) in enumerate((("10_endpoints", "#4c72b0"), ("1000_endpoints", "#dd8452"))):
        values = [d[size]["clusterpool_ns"][s] / 1000 for s in STRATEGIES]
        ax.bar([x + (k - 0.5) * width for x in xs], values, width, label=size.replace("_", " "), color=shade)
    for x, s in zip(xs, STRATEGIES, strict=True):
        ax.hlines(PICK_GOAL_US[s], x - 1.5 * width, x + 1.5 * width, colors="green", linestyles="--")
    ax.plot([], [], "g--", label="goal")
    ref = d["10_endpoints"]["python_reference_ns"]["round robin with a Lock and an index"] / 1000
    ax.axhline(ref, color="grey", linestyle=":", label=f"bare Python round robin + Lock ({ref:.2f} us)")
    ax.set_xticks(list(xs), STRATEGIES, fontsize=8)
    ax.set_ylabel("us per pick (median of 5)")
    ax.set_title(f"Balancer pick time vs goal (bench/results/balancer.json, {d['date']}, 2 cores)", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def balancer_vs_litellm(plt: Any) -> Any:
    d = load("balancer.json")
    pairs = list(d["10_endpoints"]["speedup_over_litellm"])
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    width = 0.38
    for k, (size, shade) in enumerate((("10_endpoints", "#4c72b0"), ("1000_endpoints", "#dd8452"))):
        values = [d[size]["speedup_over_litellm"][p] for p in pairs]
        xs = [x + (k - 0.5) * width for x in range(len(pairs))]
        ax.bar(xs, values, width, label=size.replace("_", " "), color=shade)
    ax.axhline(LITELLM_GOAL_X, color="green", linestyle="--", label=f"goal: {LITELLM_GOAL_X}x")
    ax.set_yscale("log")
    ax.set_xticks(range(len(pairs)), [p.replace(" vs ", "\nvs ") for p in pairs], fontsize=7)
    ax.set_ylabel("times faster than LiteLLM Router (log)")
    ax.set_title(f"Same run, side by side with LiteLLM 1.108.11 (balancer.json, {d['date']})", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def adaptive_shift(plt: Any) -> Any:
    d = load("balancer.json")
    key = next(k for k in d["quality"] if k.startswith("Adaptive"))
    shares = d["quality"][key]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.step(range(len(shares)), shares, where="post", label="share of the slowed endpoint")
    ax.axhline(0.25, color="grey", linestyle=":", label="fair share (1 of 4)")
    ax.axvline(5, color="red", linestyle="--", label="made 10x slower")
    ax.set_xlabel("second (simulated clock, 200 requests/s)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 0.35)
    ax.set_title("Adaptive: one of 4 endpoints made 10x slower (balancer.json, quality)", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def balancer_selectors(plt: Any) -> Any | None:
    path = latest_selectors_file()
    if path is None:
        return None
    d = json.loads(path.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.6), sharey=True)
    width = 0.38
    for ax, size in zip(axes, ("10_endpoints", "1000_endpoints"), strict=True):
        row = d[size]["selector_and_capacity_ns"]
        plain = [row[f"PoolClient request, {s}, no selector"] / 1000 for s in STRATEGIES]
        chosen = [
            next(v for k, v in row.items() if k.startswith(f"PoolClient request, {s}, selector")) / 1000
            for s in STRATEGIES
        ]
        xs = range(len(STRATEGIES))
        ax.bar([x - width / 2 for x in xs], plain, width, label="no selector", color="#4c72b0")
        ax.bar([x + width / 2 for x in xs], chosen, width, label="selector (half the endpoints)", color="#55a868")
        ax.set_xticks(list(xs), [s.replace("Connections", "Conn.").replace("Consistent", "Cons.") for s in STRATEGIES])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(size.replace("_", " "), fontsize=9)
    axes[0].set_ylabel("us per request through PoolClient")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"A whole request through PoolClient, with and without a selector ({path.name}; loaded machine: "
        "compare within the run only)",
        fontsize=8,
    )
    return fig


def detection(plt: Any) -> Any:
    det = load("detection.json")
    node = load("node_failover.json")
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    for i, r in enumerate(det["results"]):
        ax.scatter([i] * len(r["samples"]), r["samples"], color="#4c72b0", zorder=3)
        ax.hlines(r["floor_seconds"], i - 0.3, i + 0.3, colors="grey", linestyles=":")
        ax.hlines(r["median_seconds"], i - 0.2, i + 0.2, colors="#4c72b0")
        ax.text(i + 0.32, r["floor_seconds"], "floor", fontsize=7, va="center")
    ax.set_xticks(range(len(det["results"])))
    ax.set_xticklabels([f"{x['intervalSeconds']} s x {x['unhealthyThreshold']}" for x in det["results"]])
    ax.set_xlim(-0.5, len(det["results"]) - 0.3)
    ax.set_ylabel("seconds from kill to EndpointSlice without it")
    ax.set_xlabel("intervalSeconds x unhealthyThreshold")
    ax.set_title(f"Operator detection (detection.json, {det['date']}, 5 samples)", fontsize=8)
    ax = axes[1]
    trials = [t["last_reached_victim_s"] for t in node["trials"]]
    ax.scatter(range(1, len(trials) + 1), trials, color="#dd8452", zorder=3, label="last request reaching it")
    ax.axhline(node["detection_floor_s"], color="grey", linestyle=":", label=f"floor {node['detection_floor_s']} s")
    ax.axhline(node["goal_s"], color="green", linestyle="--", label=f"goal {node['goal_s']} s")
    ax.set_xticks(range(1, len(trials) + 1))
    ax.set_xlabel("trial")
    ax.set_ylim(0, node["goal_s"] + 1)
    ax.set_title(f"Plain client (node_failover.json, {node['measured_at'][:10]})", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def scale_runs() -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], str]:
    """Per pool count, the last unprofiled one-replica run of the baseline operator and of
    the newest operator commit in scale.json."""
    runs = [
        r
        for r in load("scale.json")["runs"]
        if r["replicas"] == 1 and not r["profiled"] and not r.get("quick") and r.get("operator_commit")
    ]
    newest = runs[-1]["operator_commit"]
    baseline = {r["pools"]: r for r in runs if r["operator_commit"] == BASELINE_COMMIT}
    after = {r["pools"]: r for r in runs if r["operator_commit"] == newest}
    return baseline, after, newest


def scale_goals(plt: Any) -> Any:
    baseline, after, newest = scale_runs()
    panels: list[tuple[str, Callable[[dict[str, Any]], float], float, str]] = [
        ("detection p99 (s)", lambda r: r["detection"]["p99_seconds"], SCALE_FLOOR_S + 2, "floor + 2 s"),
        ("all Ready after the last create (s)", lambda r: r["all_ready_after_last_create_seconds"], 60, "60 s"),
        ("RSS, steady (MiB)", lambda r: sum(r["steady"]["rss_mib"].values()), SCALE_RSS_GOAL_MIB, "300 MiB"),
        ("CPU, steady (% of a core)", lambda r: sum(r["steady"]["cpu_percent_of_core"].values()), 100, "one core"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, (title, value, goal, goal_label) in zip(axes, panels, strict=True):
        for runs, label, style in ((baseline, f"baseline {BASELINE_COMMIT}", "o--"), (after, newest, "s-")):
            xs = sorted(runs)
            ax.plot(xs, [value(runs[x]) for x in xs], style, label=label)
        ax.axhline(goal, color="green", linestyle=":", label=f"goal at 1,000 pools: {goal_label}")
        ax.set_xscale("log")
        ax.set_xticks([100, 300, 1000], ["100", "300", "1,000"])
        ax.set_xlabel("pools (10 endpoints each), one operator")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6)
    fig.suptitle("Scale (bench/results/scale.json, 2026-11-28, 2 shared cores; docs/scale.md)", fontsize=9)
    fig.tight_layout()
    return fig


def caches(plt: Any) -> Any:
    mem = load("cache.json")["results"]
    red = load("redis_cache.json")
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    ax = axes[0]
    policies = ("LRU", "LFU", "TTL", "FIFO")
    series = (
        ("hit_ratio_cachetools_over_ours", "vs cachetools .get(k)"),
        ("hit_ratio_getitem_cachetools_over_ours", "vs cachetools c[k]"),
        ("insert_ratio_cachetools_over_ours", "insert + evict vs cachetools"),
    )
    width = 0.27
    for k, (key, label) in enumerate(series):
        ax.bar([x + (k - 1) * width for x in range(len(policies))], [mem[p][key] for p in policies], width, label=label)
    ax.axhline(1.0, color="green", linestyle="--", label="goal for LRU/LFU/TTL hits: >= 1 (no slower)")
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylabel("cachetools time / ours (above 1: ours faster)")
    ax.set_ylim(0, 6.5)
    ax.set_title("Memory cache (cache.json, one run of the table's range)", fontsize=8)
    ax.legend(fontsize=6)
    ax = axes[1]
    rows = [(f"{k} (single)", v["ratio"]) for k, v in red["single"].items() if "get_many(100) vs 100" not in k]
    rows += [(f"{k} (cluster)", v["ratio"]) for k, v in red["cluster"].items()]
    local = red["local"]["LayeredCache local hit vs dict.get"]["ratio"]
    names = [n.replace(" vs ", "\nvs ") for n, _ in rows] + ["LayeredCache local hit\nvs dict.get"]
    values = [v for _, v in rows] + [local]
    colors = ["#4c72b0"] * len(rows) + ["#c44e52"]
    ax.barh(range(len(values)), values, color=colors)
    ax.axvline(1.1, color="green", linestyle="--", label="goal, Redis hit: <= 1.1")
    ax.axvline(2.0, color="purple", linestyle=":", label="goal, layered local hit: <= 2")
    ax.set_yticks(range(len(values)), names, fontsize=5.5)
    ax.set_xlabel("our time / reference time (below the goal: met)")
    ax.set_title(f"Redis and layered (redis_cache.json, redis {red['redis_server'][2:]})", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


GATEWAY_PROXIES = ("direct", "gateway", "haproxy", "vllm-router", "litellm-proxy")


GATEWAY_BAR = 0.38
GATEWAY_KINDS = (("completion", "#4c72b0"), ("stream", "#dd8452"))


def not_measured(ax: Any, x: float) -> None:
    ax.text(x, 0.06, "n/a", ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())


def kind_bars(
    ax: Any,
    rows: dict[tuple[str, str], dict[str, Any]],
    proxies: list[str],
    draw: Callable[[Any, float, dict[str, Any], str, str | None], bool],
) -> None:
    """A pair of bars (completion, stream) per proxy drawn by `draw`, which returns False when
    the row has no such figure; a row not measured is marked n/a."""
    for k, (kind, shade) in enumerate(GATEWAY_KINDS):
        label: str | None = kind
        for x, proxy in enumerate(proxies):
            r = rows.get((proxy, kind))
            pos = x + (k - 0.5) * GATEWAY_BAR
            if r is None or not r["available"] or not draw(ax, pos, r, shade, label):
                not_measured(ax, pos)
            else:
                label = None
    ax.set_xticks(range(len(proxies)), proxies, fontsize=7)


def gateway(plt: Any, path: Path | None = None) -> Any | None:
    """bench/results/gateway.json: req/s per core, added latency at half capacity and RSS with
    open streams, per proxy; a proxy that did not run is marked n/a, never drawn as zero."""
    path = path or RESULTS / "gateway.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    rows = {(r["proxy"], r["kind"]): r for r in d["rows"]}
    proxies = [p for p in GATEWAY_PROXIES if any(k[0] == p for k in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))

    def capacity(ax: Any, pos: float, r: dict[str, Any], shade: str, label: str | None) -> bool:
        c = r["capacity"]
        value = c["req_per_s"] if r["proxy"] == "direct" else c["req_per_s_per_core"]
        ax.bar(pos, value, GATEWAY_BAR, color=shade, label=label)
        ax.text(pos, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        return True

    def added(ax: Any, pos: float, r: dict[str, Any], shade: str, label: str | None) -> bool:
        half = r["half_capacity"]
        if "added_p50_us" not in half:
            return False
        p50, p99 = max(half["added_p50_us"], 1) / 1000, max(half["added_p99_us"], 1) / 1000
        ax.bar(pos, p99, GATEWAY_BAR, color=shade, alpha=0.35)
        ax.bar(pos, p50, GATEWAY_BAR, color=shade, label=label and f"{label} p50 (p99 pale)")
        return True

    ax = axes[0]
    kind_bars(ax, rows, proxies, capacity)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s per proxy core (direct: req/s)")
    ax.set_title("Capacity (wrk, 32 connections)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    kind_bars(ax, rows, [p for p in proxies if p != "direct"], added)
    ax.axhline(0.3, color="green", linestyle="--", label="goal p50 0.3 ms")
    ax.axhline(1.0, color="green", linestyle=":", label="goal p99 1 ms")
    ax.set_yscale("log")
    ax.set_ylabel("added latency at half capacity (ms, log)")
    ax.set_title("Added latency vs direct, same rate", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[2]
    rss = {r["proxy"]: r for r in d["rss"]}
    names = [p for p in proxies if p in rss]
    for x, proxy in enumerate(names):
        m = rss[proxy]
        if not m["available"]:
            not_measured(ax, x)
            continue
        half = GATEWAY_BAR / 2
        ax.bar(x - half, m["idle_mib"], GATEWAY_BAR, color="#8c8c8c", label="idle" if x == 0 else None)
        ax.bar(x + half, m["open_mib"], GATEWAY_BAR, color="#55a868", label="streams open" if x == 0 else None)
        ax.text(x + half, m["open_mib"], f"{m['streams_open']}", ha="center", va="bottom", fontsize=6)
    ax.axhline(100, color="green", linestyle="--", label="goal 100 MiB (gateway)")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylabel(f"RSS (MiB) with {d['method']['open_streams']} open streams")
    ax.set_title("Memory (numbers: streams held open)", fontsize=9)
    ax.legend(fontsize=6)
    m = d["machine"]
    load = f"load average {m['load_average_before'][0]} before, {m['load_average_after'][0]} after"
    fig.suptitle(
        f"Gateway and peers ({path.name}, {d['date']}{', quick' if d['quick'] else ''}; proxy on core 0, "
        f"load and backend on core 1; {load}{': busy machine' if m.get('busy') else ''})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def draw_gateway(results: Path, out: Path) -> None:
    """Draw the gateway figure from one results file (bench/gateway_bench.py calls this)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = gateway(plt, results)
    if fig is None:
        raise FileNotFoundError(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)


def routing_runs(path: Path | None) -> dict[str, Any] | None:
    path = path or RESULTS / "routing.json"
    return json.loads(path.read_text()) if path.exists() else None


def routing_ramp(plt: Any, path: Path | None = None) -> Any | None:
    """bench/results/routing.json, healthy fleet: per workload, output tokens/s and TTFT p90
    against the offered rate, one line per router (the gateway's strategies solid)."""
    d = routing_runs(path)
    if d is None:
        return None
    workloads = list(d["method"]["workloads"])
    fig, axes = plt.subplots(2, len(workloads), figsize=(10, 6.4), squeeze=False)
    for col, w in enumerate(workloads):
        for run in (r for r in d["runs"] if r["workload"] == w and not r["slow_engine"]):
            rates = [s["rate"] for s in run["steps"]]
            style = "-" if run["router"].startswith("gateway:") else "--"
            label = run["router"].replace("gateway:", "")
            axes[0][col].plot(rates, [s["tokens_per_s"] for s in run["steps"]], style, marker="o", ms=3, label=label)
            p90 = [s["ttft_p90_ms"] / 1000 if s["ttft_p90_ms"] else None for s in run["steps"]]
            axes[1][col].plot(rates, p90, style, marker="o", ms=3, label=label)
        axes[0][col].set_title(f"{w}: output tokens/s", fontsize=9)
        axes[1][col].set_title(f"{w}: TTFT p90 (s, log)", fontsize=9)
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("offered rate (requests/s)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Routing on 8 fake engines (bench/results/routing.json, {d['date']})", fontsize=9)
    fig.tight_layout()
    return fig


def routing_slow(plt: Any, path: Path | None = None) -> Any | None:
    """bench/results/routing.json: TTFT p99 per router at the slow-engine rate, healthy fleet
    against one engine 5x slower, per workload."""
    d = routing_runs(path)
    if d is None:
        return None
    rate = d["method"]["slow_rates"][-1]
    workloads = list(d["method"]["workloads"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(10, 3.8), squeeze=False)
    for col, w in enumerate(workloads):
        routers = [r["router"] for r in d["runs"] if r["workload"] == w and not r["slow_engine"]]
        ax = axes[0][col]
        for k, (slow, shade) in enumerate(((False, "#4c72b0"), (True, "#dd8452"))):
            values = []
            for name in routers:
                step = next((s for r in d["runs"] if r["router"] == name and r["workload"] == w
                             and r["slow_engine"] == slow for s in r["steps"] if s["rate"] == rate), None)  # fmt: skip
                values.append(step["ttft_p99_ms"] / 1000 if step and step["ttft_p99_ms"] else 0.0)
            label = "one engine 5x slower" if slow else "healthy"
            ax.bar([x + (k - 0.5) * 0.4 for x in range(len(routers))], values, 0.4, label=label, color=shade)
        ax.set_xticks(range(len(routers)), [r.replace("gateway:", "") for r in routers], rotation=35, ha="right",
                      fontsize=7)  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(f"{w}: TTFT p99 (s, log) at {rate:g} requests/s", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_routing(results: Path, out: Path) -> list[Path]:
    """Draw the routing figures from one results file (bench/routing_bench.py calls this)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in (("routing-ramp.png", routing_ramp), ("routing-slow.png", routing_slow)):
        fig = draw(plt, results)
        if fig is None:
            raise FileNotFoundError(results)
        fig.savefig(out / name, dpi=100, metadata={"Software": None})
        plt.close(fig)
        written.append(out / name)
    return written


FIGURES: dict[str, Callable[[Any], Any]] = {
    "gateway.png": gateway,
    "balancer-picks.png": balancer_picks,
    "balancer-vs-litellm.png": balancer_vs_litellm,
    "balancer-selectors.png": balancer_selectors,
    "adaptive-shift.png": adaptive_shift,
    "detection.png": detection,
    "scale-goals.png": scale_goals,
    "caches.png": caches,
    "routing-ramp.png": routing_ramp,
    "routing-slow.png": routing_slow,
}


def main() -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install -r bench/requirements.txt", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        fig = draw(plt)
        if fig is None:
            print(f"skipped {name}: no input", file=sys.stderr)
            continue
        fig.tight_layout()
        fig.savefig(OUT / name, dpi=100, metadata={"Software": None})
        plt.close(fig)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
