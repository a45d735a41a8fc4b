"""The SDK's own cost per request: plain httpx against the pool transport, same backend,
same run. Results: bench/results/sdk_overhead.json (or --out).

    python bench/sdk_overhead_bench.py [--profile] [--out PATH]

Two measurements, each sync and async, their repeats alternating so that load that comes
and goes on a shared machine hits both alike (medians of REPEATS rounds):

- `loopback`: requests over keep-alive to one backend on 127.0.0.1 (bench/http_target.py
  in a process of its own): what an application sees, the backend's and the kernel's
  time included.
- `own_cost`: the same clients over an in-process transport that answers at once (no
  socket), so the difference is the SDK's routing and bookkeeping alone: the pick, the
  breaker, the in-flight count, the rewritten request and the tracked response.
- `transport_call`: that in-process transport called directly, alone and inside the pool
  transport, with a chat-completion POST (no httpx.Client around either): the same
  difference without the client's own work in the figures.

Bounded: REQUESTS per round, and each measurement stops early after TIME_LIMIT seconds.
--profile writes the top of a cProfile of the pool transport's path (own_cost, sync) to
bench/results/profiles/sdk_overhead.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from clusterpool.client import AsyncPoolTransport, PoolClient, PoolTransport, RoutingTable, StaticTable

HERE = Path(__file__).resolve().parent
REPEATS = int(os.environ.get("SDK_BENCH_REPEATS", "7"))
REQUESTS = {"loopback": 1_000, "own_cost": 10_000}
TIME_LIMIT = 60.0  # seconds per measurement (both sides, all rounds)
BODY = b"ok"


def table(port: int) -> RoutingTable:
    return RoutingTable.parse(
        json.dumps(
            {
                "schemaVersion": 1,
                "revision": "bench",
                "strategy": "RoundRobin",
                "endpoints": [
                    {"name": "ep-0", "address": "127.0.0.1", "port": port, "effectiveWeight": 1, "eligible": True}
                ],
            }
        )
    )


class Answer(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers every request at once with 200 "ok", without a socket."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)


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


def sync_round(client: httpx.Client, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        client.get("/v1/models").read()
    return (time.perf_counter() - start) / n * 1e6


async def async_round(client: httpx.AsyncClient, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await (await client.get("/v1/models")).aread()
    return (time.perf_counter() - start) / n * 1e6


def paired(plain: Callable[[], float], pooled: Callable[[], float]) -> dict[str, Any]:
    runs: tuple[list[float], list[float]] = ([], [])
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(REPEATS):
        runs[0].append(plain())
        runs[1].append(pooled())
        if time.monotonic() > deadline:
            break
    return summary(runs)


async def paired_async(plain: Callable[[], Awaitable[float]], pooled: Callable[[], Awaitable[float]]) -> dict[str, Any]:
    runs: tuple[list[float], list[float]] = ([], [])
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(REPEATS):
        runs[0].append(await plain())
        runs[1].append(await pooled())
        if time.monotonic() > deadline:
            break
    return summary(runs)


def summary(runs: tuple[list[float], list[float]]) -> dict[str, Any]:
    """Medians, and the best rounds: on a shared machine other load only ever adds time, so
    the fastest round of each side is the closest to its own cost."""
    plain, pooled = statistics.median(runs[0]), statistics.median(runs[1])
    best_plain, best_pooled = min(runs[0]), min(runs[1])
    return {
        "plain_httpx_us": round(plain, 2),
        "pool_transport_us": round(pooled, 2),
        "added_us": round(pooled - plain, 2),
        "ratio": round(pooled / plain, 3),
        "best_plain_httpx_us": round(best_plain, 2),
        "best_pool_transport_us": round(best_pooled, 2),
        "best_added_us": round(best_pooled - best_plain, 2),
        "rounds": len(runs[0]),
    }


def measure(
    kind: str,
    base_url: str,
    inner: Callable[[], httpx.BaseTransport],
    async_inner: Callable[[], httpx.AsyncBaseTransport],
    pool: PoolClient,
) -> dict[str, Any]:
    n = REQUESTS[kind]
    with (
        httpx.Client(base_url=base_url, transport=inner()) as plain,
        httpx.Client(base_url="http://pool", transport=PoolTransport(pool, inner())) as pooled,
    ):
        sync_round(plain, 50), sync_round(pooled, 50)  # connections open, code warm
        sync = paired(lambda: sync_round(plain, n), lambda: sync_round(pooled, n))

    async def run_async() -> dict[str, Any]:
        async with (
            httpx.AsyncClient(base_url=base_url, transport=async_inner()) as plain,
            httpx.AsyncClient(base_url="http://pool", transport=AsyncPoolTransport(pool, async_inner())) as pooled,
        ):
            await async_round(plain, 50), await async_round(pooled, 50)
            return await paired_async(lambda: async_round(plain, n), lambda: async_round(pooled, n))

    return {"requests_per_round": n, "sync": sync, "async": asyncio.run(run_async())}


def call_round(handle: Callable[[httpx.Request], httpx.Response], request: httpx.Request, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        handle(request).close()
    return (time.perf_counter() - start) / n * 1e6


async def async_call_round(
    handle: Callable[[httpx.Request], Awaitable[httpx.Response]], request: httpx.Request, n: int
) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await (await handle(request)).aclose()
    return (time.perf_counter() - start) / n * 1e6


def transport_call(pool: PoolClient) -> dict[str, Any]:
    """The transport called directly (no httpx.Client around it): the inner transport alone
    against the pool transport around it, for a chat-completion POST."""
    n = REQUESTS["own_cost"]
    request = httpx.Client(base_url="http://pool").build_request(
        "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    inner, pooled = Answer(), PoolTransport(pool, Answer())
    sync = paired(
        lambda: call_round(inner.handle_request, request, n), lambda: call_round(pooled.handle_request, request, n)
    )
    apooled = AsyncPoolTransport(pool, Answer())

    async def run_async() -> dict[str, Any]:
        return await paired_async(
            lambda: async_call_round(inner.handle_async_request, request, n),
            lambda: async_call_round(apooled.handle_async_request, request, n),
        )

    return {"requests_per_round": n, "sync": sync, "async": asyncio.run(run_async())}


def profile(pool: PoolClient, out: Path) -> None:
    with httpx.Client(base_url="http://pool", transport=PoolTransport(pool, Answer())) as client:
        sync_round(client, 100)
        prof = cProfile.Profile()
        prof.enable()
        sync_round(client, 20_000)
        prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).strip_dirs().sort_stats("tottime").print_stats(30)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    print(f"profile: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of the transport's path")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sdk_overhead.json")
    args = parser.parse_args()
    port = free_port()
    backend = start_backend(port)
    try:
        pool = PoolClient(StaticTable(table(port)))
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "httpx": httpx.__version__},
            "loopback": measure(
                "loopback", f"http://127.0.0.1:{port}", httpx.HTTPTransport, httpx.AsyncHTTPTransport, pool
            ),
            "own_cost": measure("own_cost", "http://127.0.0.1", Answer, Answer, pool),
            "transport_call": transport_call(pool),
        }
        if args.profile:
            profile(pool, HERE / "results" / "profiles" / "sdk_overhead.txt")
    finally:
        backend.kill()
        backend.wait()
    for kind in ("loopback", "own_cost", "transport_call"):
        print(kind, json.dumps(result[kind]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
