"""The SDK's own cost per request: plain httpx against the pool transport, same backend,
same run, optionally against the transport of an earlier revision in the same process.
Results: bench/results/sdk_overhead.json (or --out).

    python bench/sdk_overhead_bench.py [--baseline e3aaaa1] [--profile] [--out PATH]

Three measurements, each sync and async; the sides' rounds alternate so that load that
comes and goes on a shared machine hits all of them alike:

- `loopback`: GETs over keep-alive to one backend on 127.0.0.1 (bench/http_target.py in a
  process of its own): what an application sees, the backend's and the kernel's time
  included.
- `own_cost`: the same clients over an in-process transport that answers at once (no
  socket), so the difference is the SDK's routing and bookkeeping alone: the pick, the
  breaker, the in-flight count, the rewritten request and the tracked response.
- `transport_call`: that in-process transport called directly, alone and inside the pool
  transport, with a chat-completion POST (no httpx.Client around either): the same
  difference without the client's own work in the figures.

`--baseline REV` adds the pool transport of git revision REV as a third side: its
`clusterpool` package is extracted (git archive) under the name `clusterpool_baseline`.
Each figure is reported as the median and the best of its rounds (other load only adds
time, so the best round is the closest to a side's own cost). Bounded: REQUESTS per round,
ROUNDS rounds, and each measurement stops early after TIME_LIMIT seconds.
--profile writes the top of a cProfile of the pool transport's path (own_cost, sync) to
bench/results/profiles/sdk_overhead.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import importlib
import io
import json
import os
import platform
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from clusterpool.client import AsyncPoolTransport, PoolClient, PoolTransport, RoutingTable, StaticTable

HERE = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("SDK_BENCH_ROUNDS", "9"))
REQUESTS = {"loopback": 1_000, "own_cost": 5_000, "transport_call": 5_000}
TIME_LIMIT = 90.0  # seconds per measurement (all sides, all rounds)
BODY = b"ok"

Sync = Callable[[], float]
Async = Callable[[], Awaitable[float]]


def table(port: int) -> RoutingTable:
    return RoutingTable.parse(json.dumps(_raw_table(port)))


class Answer(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers every request at once with 200 "ok", without a socket."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)


def load_baseline(rev: str) -> Any:
    """The `clusterpool.client` package of git revision `rev`, importable beside this one."""
    folder = Path(tempfile.mkdtemp(prefix="sdk-baseline-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    archive = subprocess.run(
        ["git", "archive", rev, "operator/clusterpool"], cwd=HERE.parent, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "clusterpool_baseline"
    (folder / "operator" / "clusterpool").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\b(from|import) clusterpool\b", r"\1 clusterpool_baseline", text))
    sys.path.insert(0, str(folder))
    return importlib.import_module("clusterpool_baseline.client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backend(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "http_target.py"), str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the benchmark backend did not start")


def per_request(n: int, send: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        send()
    return (time.perf_counter() - start) / n * 1e6


async def per_request_async(n: int, send: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await send()
    return (time.perf_counter() - start) / n * 1e6


def rounds(sides: dict[str, Sync]) -> dict[str, Any]:
    runs: dict[str, list[float]] = {name: [] for name in sides}
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(ROUNDS):
        for name, run in sides.items():
            runs[name].append(run())
        if time.monotonic() > deadline:
            break
    return summary(runs)


async def rounds_async(sides: dict[str, Async]) -> dict[str, Any]:
    runs: dict[str, list[float]] = {name: [] for name in sides}
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(ROUNDS):
        for name, run in sides.items():
            runs[name].append(await run())
        if time.monotonic() > deadline:
            break
    return summary(runs)


def summary(runs: dict[str, list[float]]) -> dict[str, Any]:
    """Per side: median and best round (us per request), and what it adds to plain httpx."""
    median = {name: statistics.median(r) for name, r in runs.items()}
    best = {name: min(r) for name, r in runs.items()}
    out: dict[str, Any] = {"rounds": len(runs["plain"])}
    for name in runs:
        out[name] = {"median_us": round(median[name], 2), "best_us": round(best[name], 2)}
        if name != "plain":
            out[name]["added_median_us"] = round(median[name] - median["plain"], 2)
            out[name]["added_best_us"] = round(best[name] - best["plain"], 2)
    return out


def through_clients(
    kind: str,
    base_url: str,
    inner: Callable[[], httpx.BaseTransport],
    async_inner: Callable[[], httpx.AsyncBaseTransport],
    pools: dict[str, tuple[Any, Any, Any]],
) -> dict[str, Any]:
    """`pools`: side name -> (its PoolTransport class, its AsyncPoolTransport class, its PoolClient)."""
    n = REQUESTS[kind]
    clients = {"plain": httpx.Client(base_url=base_url, transport=inner())}
    for name, (transport, _, pool) in pools.items():
        clients[name] = httpx.Client(base_url="http://pool", transport=transport(pool, inner()))
    for c in clients.values():
        per_request(50, lambda c=c: c.get("/v1/models").read())  # connections open, code warm
    sync = rounds(
        {name: (lambda c=c: per_request(n, lambda: c.get("/v1/models").read())) for name, c in clients.items()}
    )
    for c in clients.values():
        c.close()

    async def run_async() -> dict[str, Any]:
        aclients = {"plain": httpx.AsyncClient(base_url=base_url, transport=async_inner())}
        for name, (_, atransport, pool) in pools.items():
            aclients[name] = httpx.AsyncClient(base_url="http://pool", transport=atransport(pool, async_inner()))

        async def get(c: httpx.AsyncClient) -> None:
            await (await c.get("/v1/models")).aread()

        for c in aclients.values():
            await per_request_async(50, lambda c=c: get(c))
        out = await rounds_async(
            {name: (lambda c=c: per_request_async(n, lambda: get(c))) for name, c in aclients.items()}
        )
        for c in aclients.values():
            await c.aclose()
        return out

    return {"requests_per_round": n, "sync": sync, "async": asyncio.run(run_async())}


def transport_call(pools: dict[str, tuple[Any, Any, Any]]) -> dict[str, Any]:
    """The transports called directly (no httpx.Client around them) with a chat-completion
    POST: the in-process transport alone, and inside each pool transport."""
    n = REQUESTS["transport_call"]
    request = httpx.Client(base_url="http://pool").build_request(
        "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    sync_sides: dict[str, httpx.BaseTransport] = {"plain": Answer()}
    async_sides: dict[str, httpx.AsyncBaseTransport] = {"plain": Answer()}
    for name, (transport, atransport, pool) in pools.items():
        sync_sides[name], async_sides[name] = transport(pool, Answer()), atransport(pool, Answer())
    sync = rounds(
        {
            name: (lambda t=t: per_request(n, lambda: t.handle_request(request).close()))
            for name, t in sync_sides.items()
        }
    )

    async def call(t: httpx.AsyncBaseTransport) -> None:
        await (await t.handle_async_request(request)).aclose()

    async def run_async() -> dict[str, Any]:
        return await rounds_async(
            {name: (lambda t=t: per_request_async(n, lambda: call(t))) for name, t in async_sides.items()}
        )

    return {"requests_per_round": n, "sync": sync, "async": asyncio.run(run_async())}


def profile(pool: PoolClient, out: Path) -> None:
    with httpx.Client(base_url="http://pool", transport=PoolTransport(pool, Answer())) as client:
        per_request(100, lambda: client.get("/v1/models").read())
        prof = cProfile.Profile()
        prof.enable()
        per_request(20_000, lambda: client.get("/v1/models").read())
        prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).strip_dirs().sort_stats("tottime").print_stats(30)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    print(f"profile: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="also measure the pool transport of this git revision")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of the transport's path")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sdk_overhead.json")
    args = parser.parse_args()
    port = free_port()
    backend = start_backend(port)
    try:
        pools: dict[str, tuple[Any, Any, Any]] = {
            "pool": (PoolTransport, AsyncPoolTransport, PoolClient(StaticTable(table(port))))
        }
        if args.baseline:
            old = load_baseline(args.baseline)
            old_pool = old.PoolClient(old.StaticTable(old.RoutingTable.parse(json.dumps(_raw_table(port)))))
            pools[f"pool_{args.baseline}"] = (old.PoolTransport, old.AsyncPoolTransport, old_pool)
        result = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "httpx": httpx.__version__,
                "load_average_at_start": os.getloadavg(),
            },
            "loopback": through_clients(
                "loopback", f"http://127.0.0.1:{port}", httpx.HTTPTransport, httpx.AsyncHTTPTransport, pools
            ),
            "own_cost": through_clients("own_cost", "http://127.0.0.1", Answer, Answer, pools),
            "transport_call": transport_call(pools),
        }
        result["machine"]["load_average_at_end"] = os.getloadavg()
        if args.profile:
            profile(pools["pool"][2], HERE / "results" / "profiles" / "sdk_overhead.txt")
    finally:
        backend.kill()
        backend.wait()
    for kind in ("loopback", "own_cost", "transport_call"):
        print(kind, json.dumps(result[kind]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _raw_table(port: int) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "revision": "bench",
        "strategy": "RoundRobin",
        "endpoints": [{"name": "ep-0", "address": "127.0.0.1", "port": port, "effectiveWeight": 1, "eligible": True}],
    }


if __name__ == "__main__":
    sys.exit(main())
