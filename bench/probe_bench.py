"""Probe throughput: the operator's asyncio prober against aiohttp and httpx.

Each client probes one loopback HTTP server with 50 probes in flight for a fixed time,
first with a new connection per probe, then with keep-alive connections (the operator's
default: one connection per endpoint); rounds alternate the order of
clients and the median of the rounds is recorded. Results go to bench/results/probe.json;
docs/benchmarks.md quotes them. The server runs in its own process.

    python bench/probe_bench.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

from clusterpool.api import HTTPCheck
from clusterpool.health.probes import HTTPProber, probe_http

HERE = Path(__file__).resolve().parent
CONCURRENCY = 50

Probe = Callable[[], Awaitable[bool]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def rate(probe: Probe, seconds: float) -> float:
    done = 0
    failed = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            if await probe():
                done += 1
            else:
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    if failed:
        raise RuntimeError(f"{failed} probes failed: the comparison would be meaningless")
    return done / (time.perf_counter() - start)


async def measure(port: int, seconds: float, rounds: int) -> dict[str, list[float]]:
    check = HTTPCheck(path="/health")
    url = f"http://127.0.0.1:{port}/health"

    async def ours() -> bool:
        return (await probe_http("127.0.0.1", port, check, 2.0)).ok

    aio = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))

    async def aiohttp_probe() -> bool:
        async with aio.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            await r.read()
            return r.status == 200

    hx = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0),
        headers={"Connection": "close"},
        timeout=2.0,
    )

    async def httpx_probe() -> bool:
        return (await hx.get(url)).status_code == 200

    # keep-alive: one prober (one connection) per worker, as one per endpoint in the operator
    keep = [HTTPProber(check, 2.0) for _ in range(CONCURRENCY)]
    next_keep = iter(range(10**9))

    async def ours_keepalive() -> bool:
        return (await keep[next(next_keep) % CONCURRENCY].probe("127.0.0.1", port)).ok

    aio_keep = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))

    async def aiohttp_keepalive() -> bool:
        async with aio_keep.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            await r.read()
            return r.status == 200

    hx_keep = httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY), timeout=2.0)

    async def httpx_keepalive() -> bool:
        return (await hx_keep.get(url)).status_code == 200

    clients: dict[str, Probe] = {
        "clusterpool (asyncio streams)": ours,
        "aiohttp ClientSession": aiohttp_probe,
        "httpx AsyncClient, shared pool": httpx_probe,
        "keep-alive: clusterpool HTTPProber": ours_keepalive,
        "keep-alive: aiohttp ClientSession": aiohttp_keepalive,
        "keep-alive: httpx AsyncClient, shared pool": httpx_keepalive,
    }
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for r in range(rounds):
            order = list(clients.items())
            if r % 2:
                order.reverse()
            for name, probe in order:
                results[name].append(await rate(probe, seconds))
                print(f"  round {r + 1}: {name}: {results[name][-1]:,.0f} probes/s", flush=True)
    finally:
        await aio.close()
        await hx.aclose()
        await aio_keep.close()
        await hx_keep.aclose()
        for p in keep:
            await p.close()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "http_target.py"), str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        print(
            f"probe benchmark: {CONCURRENCY} in flight, new connection per probe, "
            f"{args.rounds} rounds x {args.seconds:g}s",
            flush=True,
        )
        results = asyncio.run(measure(port, args.seconds, args.rounds))
    finally:
        server.terminate()
        server.wait()
    medians = {name: statistics.median(v) for name, v in results.items()}
    ref = medians["clusterpool (asyncio streams)"]
    ref_keep = medians["keep-alive: clusterpool HTTPProber"]
    out = {
        "benchmark": "probe throughput, one loopback HTTP server, new connection per probe",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "concurrency": CONCURRENCY,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "server": "bench/http_target.py (asyncio, own process)",
        "probes_per_second": {
            k: {"median": round(v), "runs": [round(x) for x in results[k]]} for k, v in medians.items()
        },
        "ratio_clusterpool_over": {
            k: round((ref_keep if k.startswith("keep-alive") else ref) / v, 2)
            for k, v in medians.items()
            if not k.startswith(("clusterpool", "keep-alive: clusterpool"))
        },
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "probe.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["probes_per_second"], indent=2))
    print("clusterpool prober is", ", ".join(f"{v}x {k}" for k, v in out["ratio_clusterpool_over"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
