"""Compare Python etcd clients for spec.discovery.etcd: a range read of 1,000 keys under a
prefix, and the time from a put to its watch event (docs/etcd.md records the results).

Run it in a scratch virtualenv (the candidates are not the project's dependencies) against
an etcd on loopback:

    python -m venv /tmp/etcdbench && /tmp/etcdbench/bin/pip install httpx aetcd etcd-client-py etcd3
    /tmp/etcdbench/bin/python bench/etcd_clients.py http://127.0.0.1:23790

A candidate that cannot be imported is reported and skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

KEYS = 1000
READS = 20
PUTS = 50
PREFIX = "/bench/pool/"  # the 1,000 keys read
WATCHED = "/bench/watch/"  # the keys put while watching


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def seed(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        await http.post("/v3/kv/deleterange", json={"key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX.encode()))})
        for i in range(KEYS):
            value = json.dumps({"address": f"198.18.{i // 250}.{i % 250 + 1}", "port": 8000, "weight": 1})
            await http.post("/v3/kv/put", json={"key": b64(f"{PREFIX}ep-{i:04d}"), "value": b64(value)})


async def timed(n: int, fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(n):
        start = time.perf_counter()
        count = await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, count


async def watch_latency(put: Callable[[str], Awaitable[None]], seen: asyncio.Queue[str]) -> float:
    times = []
    for i in range(PUTS):
        key = f"{WATCHED}w-{i}"
        start = time.perf_counter()
        await put(key)
        while await asyncio.wait_for(seen.get(), 10) != key:
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def bench_gateway(url: str) -> dict[str, Any]:
    """etcd's own v3 JSON gateway over httpx: /v3/kv/range and the /v3/watch stream."""
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10.0, read=None)) as http:

        async def read() -> int:
            r = await http.post(
                "/v3/kv/range", json={"key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX.encode()))}
            )
            return len([json.loads(base64.b64decode(kv["value"])) for kv in r.json().get("kvs", [])])

        ms, count = await timed(READS, read)
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def follow() -> None:
            body = {"create_request": {"key": b64(WATCHED), "range_end": b64(prefix_end(WATCHED.encode()))}}
            async with http.stream("POST", "/v3/watch", json=body) as r:
                async for line in r.aiter_lines():
                    for ev in json.loads(line).get("result", {}).get("events") or []:
                        seen.put_nowait(base64.b64decode(ev["kv"]["key"]).decode())

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.5)

        async def put(key: str) -> None:
            await http.post("/v3/kv/put", json={"key": b64(key), "value": b64("{}")})

        latency = await watch_latency(put, seen)
        task.cancel()
        return {"range_ms": ms, "keys": count, "watch_ms": latency}


async def bench_aetcd(url: str) -> dict[str, Any]:
    import aetcd  # type: ignore[import-not-found]

    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host, int(port)) as c:

        async def read() -> int:
            r = await c.get_prefix(PREFIX.encode())
            return len([json.loads(kv.value) for kv in r])

        ms, count = await timed(READS, read)
        seen: asyncio.Queue[str] = asyncio.Queue()
        watch = await c.watch_prefix(WATCHED.encode())

        async def follow() -> None:
            async for ev in watch:
                seen.put_nowait(ev.kv.key.decode())

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.5)

        async def put(key: str) -> None:
            await c.put(key.encode(), b"{}")

        latency = await watch_latency(put, seen)
        task.cancel()
        return {"range_ms": ms, "keys": count, "watch_ms": latency}


async def bench_etcd_client_py(url: str) -> dict[str, Any]:
    import etcd_client  # type: ignore[import-not-found]

    client = etcd_client.Client([url])
    async with client.connect() as c:

        async def read() -> int:
            r = await c.get_prefix(PREFIX.encode())
            return len([json.loads(bytes(v)) for _, v in r])

        ms, count = await timed(READS, read)
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def follow() -> None:
            async for ev in c.watch_prefix(WATCHED.encode()):
                seen.put_nowait(bytes(ev.key).decode())

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.5)

        async def put(key: str) -> None:
            await c.put(key.encode(), b"{}")

        latency = await watch_latency(put, seen)
        task.cancel()
        return {"range_ms": ms, "keys": count, "watch_ms": latency}


async def bench_etcd3(url: str) -> dict[str, Any]:
    import etcd3  # type: ignore[import-not-found]

    host, port = url.removeprefix("http://").split(":")
    c = etcd3.client(host, int(port))

    async def read() -> int:
        return len([json.loads(v) for v, _ in c.get_prefix(PREFIX)])

    ms, count = await timed(READS, read)
    return {"range_ms": ms, "keys": count, "watch_ms": None}


async def main(url: str) -> None:
    await seed(url)
    for name, fn in (
        ("httpx + v3 gateway", bench_gateway),
        ("aetcd", bench_aetcd),
        ("etcd-client-py", bench_etcd_client_py),
        ("etcd3", bench_etcd3),
    ):
        try:
            result = await fn(url)
        except Exception as exc:  # a candidate that does not import or run is reported
            print(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        watch = f"{result['watch_ms']:.2f}" if result["watch_ms"] is not None else "-"
        print(
            f"{name}: range of {result['keys']} keys {result['range_ms']:.1f} ms (median of {READS}); "
            f"put -> watch event {watch} ms (median of {PUTS})"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:2379"))
