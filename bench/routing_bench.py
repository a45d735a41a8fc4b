"""Routing benchmark: the load-aware strategies (issue 24) against the client-side ones and the
peers, on eight fake engines, in one run. Results: bench/results/routing.json, plots
docs/plots/routing-*.png, method and table in docs/routing-bench.md.

    scripts/netns-run .venv/bin/python bench/routing_bench.py          # make bench-routing
    .venv/bin/python bench/routing_bench.py --quick --out /tmp/r.json  # a look in two minutes
    .venv/bin/python bench/routing_bench.py --sweep                    # LoadWeights / LoadBound
    scripts/netns-run .venv/bin/python bench/routing_bench.py --llama  # real llama-servers, added
    .venv/bin/python bench/routing_bench.py --report bench/results/routing.json

Eight fake engines (scripts/fake_engine.py, vLLM mode) in one process of their own: 4
sequences at once each, a waiting queue without limit, a prefix cache of 800 blocks of 16
tokens (about six 2,048-token system prompts), TTFT = 10 ms + 0.5 ms per uncached prompt
token + queue wait, 64 tokens/s per sequence. The engines' time is sleeps, so the results
stand while other work shares the cores (the load average is recorded).

Workloads (the same seeded arrivals for every router), open loop, Poisson arrivals at rates
rising past saturation, step by step:
- shared-prefix: 32 tenants, each with its own 2,048-token system prompt, a random tenant
  and a fresh 64-token question per request (like llm-d's shared-prefix workload);
- uniform: a fresh 512-token prompt per request, nothing shared.
Every request is a streamed chat completion of 32 tokens.

Routers: RoundRobin, LeastConnections, LeastLoaded and PrefixAffinity through the gateway
(`python -m clusterpool.gateway`, one pool per strategy over the same engines, load scraped
from the engines' /metrics), LeastLoaded and PrefixAffinity through three gateway replicas
in turn (gateway-x3), LiteLLM's Router (simple-shuffle, least-busy; the library, in
this process, as an application uses it) and vllm-router (round_robin, cache_aware; its own
process). Per router and step: output tokens/s (received by the client), TTFT p50/p90/p99
(sent to first token; a request without one when the run ends counts its wait so far, a
lower bound), prefix-cache hit rate from the engines' own counters
(vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total). Then the same with one
engine slowed 5x (at the third rate, after a step at the second). Then three gateway
replicas asked for the same prompts: the endpoint each names (X-ClusterPool-Endpoint);
and where vllm-router's cache_aware sends four prefixes, one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
sys.path.insert(0, str(ROOT / "scripts"))

from gateway_bench import (  # noqa: E402
    Processes,
    busy,
    cpu_seconds,
    free_port,
    load_average,
    peers_bin,
    peers_version,
    table_endpoint,
)

ENGINES = 8
HOST = "127.0.0.1"
OUTPUT_TOKENS = 32
SLOW_FACTOR = 5.0
CHARS_PER_TOKEN = 4  # the fake engine's
ENGINE_MODEL = {  # scripts/fake_engine.py EngineConfig, the same for every engine
    "max_running": 4,
    "base_ms": 10.0,
    "prefill_ms_per_token": 0.5,
    "tokens_per_second": 64.0,
    "tokens_per_event": 4,
    "block_tokens": 16,
    "cache_blocks": 800,
    "kv_tokens": 12288,
}
COUNTERS = (b"vllm:prefix_cache_hits_total", b"vllm:prefix_cache_queries_total", b"vllm:generation_tokens_total")
GATEWAY_STRATEGIES = ("RoundRobin", "LeastConnections", "LeastLoaded", "PrefixAffinity")
REPLICATED = ("gateway-x3:LeastLoaded", "gateway-x3:PrefixAffinity")  # three gateways, requests in turn
PEERS = ("litellm:simple-shuffle", "litellm:least-busy", "vllm-router:round_robin", "vllm-router:cache_aware")
# Goals (issue 24, Benchmark)
GOAL_TTFT_P90_TIMES = 10.0  # PrefixAffinity's TTFT p90 at least 10x lower than RoundRobin's
GOAL_THROUGHPUT_TIMES = 1.5
GOAL_UNIFORM_WITHIN = 0.10
GOAL_SLOW_P99_TIMES = 1.5
FLEETS = ("healthy", "slow")  # the fleet as it is, and with engine 0 slowed SLOW_FACTOR times
# --sweep-of latency: LoadWeights.latency, and with "p" LeastLoaded's estimate taking the peak rule (core/latency.py)
SWEEP_LATENCY = "0,1,2,4"
NO_WORSE_TOLERANCE = 0.10  # "no worse than vllm-router's cache-aware": within 10% (noise)


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    tenants: int  # 0: no shared prefix
    prefix_tokens: int
    question_tokens: int

    def bodies(self, rng: random.Random, count: int) -> list[dict[str, Any]]:
        words = [f"w{rng.getrandbits(20):05x}" for _ in range(512)]  # 6 chars + a space: about 2 tokens

        def text(tokens: int, head: str = "") -> str:
            out = head
            while len(out) < tokens * CHARS_PER_TOKEN:
                out += rng.choice(words) + " "
            return out[: tokens * CHARS_PER_TOKEN]

        prompts = [text(self.prefix_tokens, f"tenant {t}: the assistant of tenant {t}. ") for t in range(self.tenants)]
        out = []
        for i in range(count):
            messages = []
            if self.tenants:
                messages.append({"role": "system", "content": prompts[rng.randrange(self.tenants)]})
            messages.append({"role": "user", "content": text(self.question_tokens, f"question {i}: ")})
            out.append({"messages": messages, "max_tokens": OUTPUT_TOKENS, "stream": True})
        return out


WORKLOADS = {
    "shared-prefix": Workload("shared-prefix", tenants=32, prefix_tokens=2048, question_tokens=64),
    "uniform": Workload("uniform", tenants=0, prefix_tokens=0, question_tokens=512),
}


@dataclass(frozen=True)
class Schedule:
    """Arrival times (seconds from the start) and bodies, for rates held `step` seconds each."""

    rates: tuple[float, ...]
    step: float
    times: tuple[float, ...]
    bodies: tuple[dict[str, Any], ...]

    @classmethod
    def poisson(cls, workload: Workload, rates: Sequence[float], step: float, seed: int) -> Schedule:
        rng = random.Random(seed)
        times: list[float] = []
        for i, rate in enumerate(rates):
            t = i * step
            while True:
                t += rng.expovariate(rate)
                if t >= (i + 1) * step:
                    break
                times.append(t)
        return cls(tuple(rates), step, tuple(times), tuple(workload.bodies(rng, len(times))))

    @property
    def duration(self) -> float:
        return self.step * len(self.rates)


# ---------------------------------------------------------------- processes


def serve_engines(ports: list[int]) -> None:
    """The child that runs the eight fake engines in one event loop (--serve-engines)."""
    import fake_engine

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        engines = []
        for port in ports:
            cfg = fake_engine.EngineConfig(mode="vllm", model="bench", **ENGINE_MODEL)  # type: ignore[arg-type]
            engines.append(await fake_engine.FakeEngine(cfg, HOST, port).start())
        print("engines listening", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for e in engines:
            await e.stop()

    asyncio.run(main())


def routing_table(name: str, strategy: str, ports: list[int], model: str) -> dict[str, Any]:
    endpoints = [table_endpoint(f"e{i}", HOST, p) for i, p in enumerate(ports)]
    return {
        "schemaVersion": 1,
        "revision": f"{name}-1",
        "pool": {"namespace": "bench", "name": name},
        "generation": 1,
        "strategy": strategy,
        "engine": "vLLM",
        "activeTier": 0,
        "panic": False,
        "circuitBreaker": {"failureThreshold": 3, "openSeconds": 30},
        "endpoints": endpoints,
        "models": [model],
        "cache": None,
    }


def gateway_model(strategy: str) -> str:
    return strategy.lower()


def start_gateway(procs: Processes, name: str, ports: list[int], strategies: Sequence[str]) -> tuple[int, int]:
    files = []
    for s in strategies:
        path = procs.logdir / f"{name}-{s}.json"
        path.write_text(json.dumps(routing_table(s.lower(), s, ports, gateway_model(s))))
        files += ["--routing-file", str(path)]
    port = free_port()
    argv = [sys.executable, "-m", "clusterpool.gateway", "--listen", f"{HOST}:{port}"]
    argv += ["--admin-listen", f"{HOST}:{free_port()}", "--no-access-log", *files]
    return port, procs.start(name, argv).pid


# ---------------------------------------------------------------- clients


@dataclass
class Sent:
    """One request as the client saw it (seconds from the run's start)."""

    sent: float
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    error: str | None = None
    endpoint: str | None = None
    late: float = 0.0  # sent this long after its scheduled arrival (the load generator lagging)


class TokenLog:
    """When tokens arrived: (time, count), for tokens/s per window."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []

    def received(self, rec: Sent, tokens: int, now: float) -> None:
        """`tokens` (maybe none) of `rec` arrived at `now`: the first ones are its TTFT."""
        if tokens:
            if rec.first is None:
                rec.first = now
            rec.tokens += tokens
            self.arrivals.append((now, tokens))


Sender = Callable[[dict[str, Any], Sent, TokenLog, float], Awaitable[None]]


class HttpRouter:
    """A router reached over HTTP (the gateway, vllm-router): requests in turn to its URLs;
    `pid` is its process, whose CPU time is the router's cost."""

    def __init__(self, name: str, urls: list[str], model: str, pids: Sequence[int] = ()) -> None:
        self.name, self.urls, self.model, self.pids = name, urls, model, list(pids)
        self._turn = 0
        self.session: Any = None

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def open(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, body: dict[str, Any], rec: Sent, log: TokenLog, t0: float) -> None:
        url = self.urls[self._turn % len(self.urls)]
        self._turn += 1
        await self.post(url, body, rec, log, t0)

    async def post(self, url: str, body: dict[str, Any], rec: Sent, log: TokenLog, t0: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.session.post(url + "/v1/chat/completions", json={**body, "model": self.model}) as resp:
                rec.endpoint = resp.headers.get("X-ClusterPool-Endpoint")
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}"
                    await resp.read()
                    return
                async for line in resp.content:
                    log.received(rec, line.count(b"tok "), loop.time() - t0)
                rec.end = loop.time() - t0
        except Exception as exc:  # a failed request is a result, not a crash
            rec.error = type(exc).__name__


class LiteLLMRouter:
    """LiteLLM's Router, the library, in this process (as an application runs it)."""

    def __init__(self, name: str, strategy: str, ports: list[int]) -> None:
        self.name, self.strategy, self.ports = name, strategy, ports
        self.router: Any = None

    def cpu(self) -> float:
        return cpu_now()  # the Router runs in this process (with the load generator's own small share)

    async def open(self) -> None:
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        model_list = [
            {
                "model_name": "bench",
                "litellm_params": {"model": "openai/bench", "api_base": f"http://{HOST}:{p}/v1", "api_key": "sk-bench"},
                "model_info": {"id": f"e{i}"},
            }
            for i, p in enumerate(self.ports)
        ]
        self.router = litellm.Router(model_list=model_list, routing_strategy=self.strategy, num_retries=0)

    async def close(self) -> None:
        self.router = None

    async def send(self, body: dict[str, Any], rec: Sent, log: TokenLog, t0: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            stream = await self.router.acompletion(
                model="bench", messages=body["messages"], max_tokens=body["max_tokens"], stream=True
            )
            async for chunk in stream:
                content = chunk.choices[0].delta.content if chunk.choices else None
                log.received(rec, content.count("tok ") if content else 0, loop.time() - t0)
            rec.end = loop.time() - t0
        except Exception as exc:
            rec.error = type(exc).__name__


class SdkRouter(HttpRouter):
    """A balancer of the SDK (clusterpool.balancer) over the engines, with the SDK's load
    scraper, picking in this process and sending straight to the engine: for the sweep of
    LoadWeights and LoadBound, which the gateway does not expose."""

    def __init__(self, name: str, make: Callable[[Any], Any], ports: list[int]) -> None:
        super().__init__(name, [f"http://{HOST}:{p}" for p in ports], "bench")
        from clusterpool.balancer import Target
        from clusterpool.client.load import LoadScraper

        self.scraper = LoadScraper()
        self.balancer = make(self.scraper)  # a balancer reading this scraper's view
        self.targets = [Target(f"e{i}", HOST, p) for i, p in enumerate(ports)]
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        from clusterpool.engines import PROFILES

        await super().open()
        for t in self.targets:
            self.scraper.watch(t.address, t.port, PROFILES["vLLM"])
        self.balancer.update(self.targets)
        self._task = asyncio.get_running_loop().create_task(self.scraper.run())
        await asyncio.sleep(0.6)  # a first reading of every engine

    async def close(self) -> None:
        self.scraper.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()

    async def send(self, body: dict[str, Any], rec: Sent, log: TokenLog, t0: float) -> None:
        from clusterpool.balancer import affinity_key

        target = self.balancer.pick(affinity_key(body))
        self.balancer.started(target)
        loop = asyncio.get_running_loop()
        start = loop.time()  # not rec.sent: the warm-up request's is not on the run's clock
        try:
            await self.post(f"http://{target.address}:{target.port}", body, rec, log, t0)
        finally:
            self.balancer.finished(target, loop.time() - start, rec.error is None)
            rec.endpoint = target.name


# ---------------------------------------------------------------- engines' counters


class Engines:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.session: Any = None

    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self.session.close()

    async def _post(self, port: int, path: str, body: dict[str, Any]) -> None:
        async with self.session.post(f"http://{HOST}:{port}{path}", json=body) as resp:
            resp.raise_for_status()

    async def reset(self, slow: bool) -> None:
        await asyncio.gather(*(self._post(p, "/admin/reset", {}) for p in self.ports))
        if slow:
            await self._post(self.ports[0], "/admin/faults", {"slow_factor": SLOW_FACTOR})

    async def counters(self) -> dict[str, list[float]]:
        """Per engine, from its /metrics: prefix-cache hits and queries (tokens), generated
        tokens; and requests (GET /admin/stats)."""
        from clusterpool.client.load import gauge_value

        async def one(port: int) -> tuple[float, float, float, float]:
            async with self.session.get(f"http://{HOST}:{port}/metrics") as resp:
                body = await resp.read()
            async with self.session.get(f"http://{HOST}:{port}/admin/stats") as resp:
                stats = await resp.json()
            hits, queries, generated = (gauge_value(body, n) or 0.0 for n in COUNTERS)
            return hits, queries, generated, float(stats["requests"])

        rows = await asyncio.gather(*(one(p) for p in self.ports))
        return {k: [r[i] for r in rows] for i, k in enumerate(("hits", "queries", "generated", "requests"))}


# ---------------------------------------------------------------- one run


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


async def run_one(
    router: Any, engines: Engines, schedule: Schedule, slow: bool, drain: float, measured: Sequence[int] | None = None
) -> dict[str, Any]:
    """The schedule through `router`: per step, what the client saw and the engines counted."""
    await engines.reset(slow)
    await router.open()
    try:
        warm = Sent(0.0)
        await router.send(
            {"messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1, "stream": True},
            warm,
            TokenLog(),
            0.0,
        )
        await asyncio.sleep(0.5)
        return await _drive(router, engines, schedule, drain, measured)
    finally:
        await router.close()


async def _drive(
    router: Any, engines: Engines, schedule: Schedule, drain: float, measured: Sequence[int] | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    log = TokenLog()
    records: list[Sent] = []
    tasks: set[asyncio.Task[None]] = set()
    snapshots: list[dict[str, list[float]]] = []
    cpu_start, router_start = cpu_now(), router.cpu()
    t0 = loop.time()

    async def boundaries() -> None:
        for i in range(len(schedule.rates) + 1):
            await asyncio.sleep(max(0.0, t0 + i * schedule.step - loop.time()))
            snapshots.append(await engines.counters())

    counting = loop.create_task(boundaries())
    for at, body in zip(schedule.times, schedule.bodies, strict=True):
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = Sent(loop.time() - t0)
        rec.late = rec.sent - at
        records.append(rec)
        task = loop.create_task(router.send(body, rec, log, t0))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await counting
    end_sending = loop.time()
    if tasks:
        await asyncio.wait(set(tasks), timeout=max(0.0, drain - (loop.time() - end_sending)))
    stopped = loop.time() - t0
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(set(tasks), timeout=5)
    cpu, router_cpu = cpu_now() - cpu_start, router.cpu() - router_start
    steps = [
        step_stats(i, schedule, records, log, snapshots[i], snapshots[i + 1], stopped)
        for i in range(len(schedule.rates))
        if measured is None or i in measured
    ]
    final = snapshots[-1]
    share = [int(b - a) for a, b in zip(snapshots[0]["requests"], final["requests"], strict=True)]
    return {
        "steps": steps,
        "requests_per_engine": share,
        "stopped_at": round(stopped, 2),
        "client_cpu_s": round(cpu, 2),
        "router_cpu_ms_per_request": round(1000 * router_cpu / len(records), 2) if records else None,
    }


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def step_stats(
    i: int,
    schedule: Schedule,
    records: list[Sent],
    log: TokenLog,
    before: dict[str, list[float]],
    after: dict[str, list[float]],
    stopped: float,
) -> dict[str, Any]:
    lo, hi = i * schedule.step, (i + 1) * schedule.step
    mine = [r for r in records if lo <= r.sent < hi]
    ttft, censored = [], 0
    for r in mine:
        if r.error is not None:
            continue
        if r.first is None:
            censored += 1
            ttft.append(stopped - r.sent)
        else:
            ttft.append(r.first - r.sent)
    tokens = sum(n for t, n in log.arrivals if lo <= t < hi)
    hits = sum(after["hits"]) - sum(before["hits"])
    queries = sum(after["queries"]) - sum(before["queries"])

    def ms(q: float) -> float | None:
        v = percentile(ttft, q)
        return None if v is None else round(v * 1000, 1)

    return {
        "rate": schedule.rates[i],
        "sent": len(mine),
        "completed": sum(1 for r in mine if r.end is not None),
        "errors": sum(1 for r in mine if r.error is not None),
        "no_first_token": censored,
        "ttft_p50_ms": ms(0.50),
        "ttft_p90_ms": ms(0.90),
        "ttft_p99_ms": ms(0.99),
        "tokens_per_s": round(tokens / schedule.step, 1),
        "engine_tokens_per_s": round((sum(after["generated"]) - sum(before["generated"])) / schedule.step, 1),
        "prefix_hit_rate": round(hits / queries, 3) if queries else None,
        "send_late_p99_ms": round(1000 * (percentile([r.late for r in mine], 0.99) or 0.0), 1),
    }


# ---------------------------------------------------------------- routers of the run


@dataclass
class Fleet:
    procs: Processes
    ports: list[int]
    gateways: list[tuple[int, int]]  # (port, pid) of each replica, all serving the same pools


async def router_for(name: str, fleet: Fleet) -> Any:
    """A fresh router by its row name; vllm-router gets a process of its own per run."""
    kind, _, variant = name.partition(":")
    if kind in ("gateway", "gateway-x3"):
        replicas = fleet.gateways[: 3 if kind == "gateway-x3" else 1]
        urls = [f"http://{HOST}:{port}" for port, _ in replicas]
        return HttpRouter(name, urls, gateway_model(variant), [pid for _, pid in replicas])
    if kind == "litellm":
        return LiteLLMRouter(name, variant, fleet.ports)
    if kind == "vllm-router":
        return VllmRouter(name, variant, fleet)
    raise ValueError(f"unknown router {name!r}")


class VllmRouter(HttpRouter):
    """vllm-router (.venv-peers) with one policy, started per run (its cache-aware tree cold,
    as the engines' caches are)."""

    def __init__(self, name: str, policy: str, fleet: Fleet) -> None:
        self.port = free_port()
        super().__init__(name, [f"http://{HOST}:{self.port}"], "bench")
        self.policy, self.fleet = policy, fleet
        self.proc: subprocess.Popen[bytes] | None = None

    async def open(self) -> None:
        argv = [str(peers_bin("vllm-router")), "--host", HOST, "--port", str(self.port), "--policy", self.policy]
        argv += ["--worker-urls", *[f"http://{HOST}:{p}" for p in self.fleet.ports]]
        self.proc = self.fleet.procs.start(f"vllm-router-{self.policy}", argv)
        self.pids = [self.proc.pid]
        await super().open()
        name = f"vllm-router-{self.policy}"
        await wait_http(f"http://{HOST}:{self.port}/health", self.proc, 60, self.fleet.procs, name)

    async def close(self) -> None:
        await super().close()
        if self.proc is not None:
            self.fleet.procs.stop(self.proc)


async def wait_http(
    url: str, proc: subprocess.Popen[bytes] | None, timeout: float, procs: Processes, name: str
) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}: {procs.log_tail(name)}")
            try:
                async with s.get(url) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s ({last}): {procs.log_tail(name)}")


def available(name: str) -> str | None:
    """Why a router cannot run here, or None."""
    kind = name.partition(":")[0]
    if kind == "vllm-router" and not peers_bin("vllm-router").exists():
        return "vllm-router is not installed in .venv-peers (make bench-peers)"
    if kind == "litellm":
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its cost map
        try:
            import litellm  # noqa: F401
        except ImportError:
            return "litellm is not installed in .venv (make bench-routing installs it)"
    return None


# ---------------------------------------------------------------- agreement of three replicas


async def agreement(fleet: Fleet, engines: Engines, prompts: int) -> dict[str, Any]:
    """Three gateway processes serving the same PrefixAffinity pool are each asked for the
    same prompts (two at a time per replica: under every load bound); the endpoint each
    names for a prompt must be the same."""
    await engines.reset(False)
    ports = [port for port, _ in fleet.gateways]
    rng = random.Random(7)
    bodies = WORKLOADS["shared-prefix"].bodies(rng, prompts // 2) + WORKLOADS["uniform"].bodies(rng, prompts // 2)
    for b in bodies:
        b["max_tokens"] = 1
    chosen: list[list[str | None]] = []

    async def replica(port: int) -> list[str | None]:
        router = HttpRouter("replica", [f"http://{HOST}:{port}"], gateway_model("PrefixAffinity"))
        await router.open()
        out: list[str | None] = [None] * len(bodies)
        try:
            for start in range(0, len(bodies), 2):
                recs = [Sent(0.0) for _ in bodies[start : start + 2]]
                await asyncio.gather(
                    *(router.send(b, r, TokenLog(), 0.0) for b, r in zip(bodies[start : start + 2], recs, strict=True))
                )
                for j, r in enumerate(recs):
                    out[start + j] = r.endpoint
        finally:
            await router.close()
        return out

    chosen = list(await asyncio.gather(*(replica(p) for p in ports)))
    same = sum(1 for picks in zip(*chosen, strict=True) if picks[0] is not None and len(set(picks)) == 1)
    spread = {e: chosen[0].count(e) for e in sorted({e for e in chosen[0] if e})}
    return {
        "replicas": 3,
        "prompts": len(bodies),
        "identical": same,
        "share": round(same / len(bodies), 3),
        "endpoints_of_replica_0": spread,
    }


# ---------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class Settings:
    quick: bool
    routers: tuple[str, ...]
    rates: tuple[float, ...]
    step: float
    drain: float
    out: Path
    plot: bool
    agreement_prompts: int = 64
    seed: int = 1
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    fleets: tuple[str, ...] = FLEETS
    sweep_of: tuple[str, ...] = ("weights", "bounds")
    latency_points: tuple[str, ...] = tuple(SWEEP_LATENCY.split(","))


async def start_engines(procs: Processes) -> list[int]:
    ports = [free_port() for _ in range(ENGINES)]
    argv = [sys.executable, str(HERE / "routing_bench.py"), "--serve-engines", ",".join(map(str, ports))]
    proc = procs.start("engines", argv)
    for p in ports:
        await wait_http(f"http://{HOST}:{p}/health", proc, 60, procs, "engines")
    return ports


async def start_fleet(procs: Processes) -> Fleet:
    ports = await start_engines(procs)
    gateways = [start_gateway(procs, f"gateway-{i}", ports, GATEWAY_STRATEGIES) for i in range(3)]
    for port, _ in gateways:
        await wait_http(f"http://{HOST}:{port}/v1/models", None, 60, procs, "gateway")
    return Fleet(procs, ports, gateways)


async def cache_aware_probe(fleet: Fleet, engines: Engines) -> dict[str, Any]:
    """Where vllm-router's cache_aware sends 24 requests of 4 different 2,048-token prefixes,
    one at a time (no load to balance): per engine, for chat and for completions."""
    out: dict[str, Any] = {}
    rng = random.Random(3)
    bodies = WORKLOADS["shared-prefix"].bodies(rng, 400)
    tenants: dict[str, dict[str, Any]] = {}
    for b in bodies:  # the first four tenants seen, with six questions each
        sys_prompt = b["messages"][0]["content"]
        if len(tenants) < 4 or sys_prompt in tenants:
            tenants.setdefault(sys_prompt, b)
    chosen = [b for b in bodies if b["messages"][0]["content"] in tenants][:24]
    for kind in ("chat", "completions"):
        await engines.reset(False)
        router = VllmRouter("probe", "cache_aware", fleet)
        await router.open()
        try:
            before = (await engines.counters())["requests"]
            for b in chosen:
                if kind == "chat":
                    body: dict[str, Any] = {"model": "bench", "messages": b["messages"], "max_tokens": 1}
                else:
                    body = {"model": "bench", "prompt": "".join(m["content"] for m in b["messages"]), "max_tokens": 1}
                async with router.session.post(f"{router.urls[0]}/v1/{kind.replace('chat', 'chat/completions')}",
                                               json=body) as resp:  # fmt: skip
                    await resp.read()
            after = (await engines.counters())["requests"]
        finally:
            await router.close()
        out[kind] = [int(a - b) for a, b in zip(after, before, strict=True)]
    out["prefixes"] = len(tenants)
    return out


async def run_all(settings: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": settings.quick,
        "machine": {"cores": os.cpu_count(), "load_average_before": load_average()},
        "versions": {"litellm": version_of("litellm"), "vllm-router": peers_version("vllm-router")},
        "method": {
            "engines": ENGINES,
            "engine_model": ENGINE_MODEL,
            "workloads": {k: asdict(w) for k, w in WORKLOADS.items()},
            "output_tokens": OUTPUT_TOKENS,
            "rates": settings.rates,
            "step_seconds": settings.step,
            "drain_seconds": settings.drain,
            "slow_factor": SLOW_FACTOR,
            "slow_rates": settings.rates[1:3],
            "workloads_run": settings.workloads,
            "fleets_run": settings.fleets,
        },
        "runs": [],
        "unavailable": {},
    }
    procs = Processes(Path(tempfile.mkdtemp(prefix="routing-bench-")))
    started = time.monotonic()
    try:
        fleet = await start_fleet(procs)
        engines = Engines(fleet.ports)
        await engines.open()
        try:
            for slow in (fleet_name == "slow" for fleet_name in settings.fleets):
                for wname in settings.workloads:
                    workload = WORKLOADS[wname]
                    rates = settings.rates[1:3] if slow else settings.rates
                    schedule = Schedule.poisson(workload, rates, settings.step, settings.seed)
                    measured = [len(rates) - 1] if slow else None
                    for name in settings.routers:
                        why = available(name)
                        if why is not None:
                            results["unavailable"][name] = why
                            continue
                        router = await router_for(name, fleet)
                        t = time.monotonic()
                        run = await run_one(router, engines, schedule, slow, settings.drain, measured)
                        run.update({"router": name, "workload": wname, "slow_engine": slow})
                        results["runs"].append(run)
                        top = run["steps"][-1]
                        print(
                            f"{wname:13} {'slow' if slow else 'ok  '} {name:26} rate {top['rate']:>4} "
                            f"tok/s {top['tokens_per_s']:>7} p90 {top['ttft_p90_ms']} ms "
                            f"hit {top['prefix_hit_rate']} ({time.monotonic() - t:.0f} s, load {load_average()[0]})",
                            flush=True,
                        )
            if (
                "vllm-router:cache_aware" in settings.routers
                and "healthy" in settings.fleets
                and available("vllm-router:cache_aware") is None
            ):
                results["cache_aware_probe"] = await cache_aware_probe(fleet, engines)
                print(f"vllm-router cache_aware, requests per engine: {results['cache_aware_probe']}", flush=True)
            if "gateway:PrefixAffinity" in settings.routers and "healthy" in settings.fleets:
                results["agreement"] = await agreement(fleet, engines, settings.agreement_prompts)
                print(f"agreement: {results['agreement']}", flush=True)
        finally:
            await engines.close()
    finally:
        procs.stop_all()
        shutil.rmtree(procs.logdir, ignore_errors=True)
    results["machine"]["load_average_after"] = load_average()
    results["machine"]["busy"] = busy(results["machine"]["load_average_before"]) or busy(
        results["machine"]["load_average_after"]
    )
    results["wall_seconds"] = round(time.monotonic() - started)
    results["goals"] = goals(results)
    return results


def version_of(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- real llama-server


LLAMA_SERVERS = 4
LLAMA_TENANTS = 8
LLAMA_REQUESTS = 40
LLAMA_CONCURRENCY = 4
LLAMA_STRATEGIES = ("RoundRobin", "PrefixAffinity")


async def llama_tier(procs: Processes) -> dict[str, Any]:
    """Four llama-server processes (scripts/llama.py: the cached build and the tiny model),
    two slots each, behind the gateway; per strategy, fresh servers and the same 40
    completions of 8 tenants' ~1,000-token prompts, 4 at a time, max_tokens 1 (so the
    latency is the prefill's): latency p50/p90 and the prompt tokens the servers reused
    from their own caches (`timings.cache_n` of each answer)."""
    import llama

    binary, model = llama.server_path(), llama.model_path()
    if not binary.exists() or not model.exists():
        return {"skipped": f"no llama-server or model under {binary.parent.parent}: run `make llama` first"}
    rng = random.Random(11)
    words = [f"w{rng.getrandbits(16):04x}" for _ in range(256)]
    heads = [f"tenant {t}: " + " ".join(rng.choice(words) for _ in range(700)) for t in range(LLAMA_TENANTS)]
    prompts = [f"{rng.choice(heads)} question {i}: " + " ".join(rng.choice(words) for _ in range(12))
               for i in range(LLAMA_REQUESTS)]  # fmt: skip
    out: dict[str, Any] = {"servers": LLAMA_SERVERS, "tenants": LLAMA_TENANTS, "requests": LLAMA_REQUESTS,
                           "concurrency": LLAMA_CONCURRENCY, "strategies": {}}  # fmt: skip
    for strategy in LLAMA_STRATEGIES:
        ports = [free_port() for _ in range(LLAMA_SERVERS)]
        servers = []
        for i, port in enumerate(ports):
            argv = [str(binary), "-m", str(model), "--host", HOST, "--port", str(port), "--metrics", "--slots",
                    "-np", "2", "-c", "8192", "-t", "1", "--no-webui"]  # fmt: skip
            servers.append(procs.start(f"llama-{strategy}-{i}", argv))
        gateway: subprocess.Popen[bytes] | None = None
        try:
            for i, (port, proc) in enumerate(zip(ports, servers, strict=True)):
                await wait_http(f"http://{HOST}:{port}/health", proc, 180, procs, f"llama-{strategy}-{i}")
            path = procs.logdir / f"llama-{strategy}.json"
            table = routing_table("llama", strategy, ports, "llama")
            table["engine"] = "LlamaCpp"
            path.write_text(json.dumps(table))
            gw_port = free_port()
            gateway = procs.start(f"gateway-llama-{strategy}", [sys.executable, "-m", "clusterpool.gateway",
                                  "--listen", f"{HOST}:{gw_port}", "--admin-listen", f"{HOST}:{free_port()}",
                                  "--no-access-log", "--routing-file", str(path)])  # fmt: skip
            await wait_http(f"http://{HOST}:{gw_port}/v1/models", gateway, 60, procs, f"gateway-llama-{strategy}")
            await asyncio.sleep(1.0)  # a first scrape of every server
            out["strategies"][strategy] = await llama_requests(gw_port, prompts)
            print(f"llama-server {strategy}: {out['strategies'][strategy]}", flush=True)
        finally:
            if gateway is not None:
                procs.stop(gateway)
            for proc in servers:
                procs.stop(proc)
    return out


async def llama_requests(port: int, prompts: list[str]) -> dict[str, Any]:
    """The prompts through the gateway on `port`, LLAMA_CONCURRENCY at a time."""
    import aiohttp

    latencies: list[float] = []
    tokens = {"prompt_n": 0, "cache_n": 0, "errors": 0}
    queue = list(prompts)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            while queue:
                body = {"model": "llama", "prompt": queue.pop(0), "max_tokens": 1, "temperature": 0}
                t = time.monotonic()
                try:
                    async with session.post(f"http://{HOST}:{port}/v1/completions", json=body) as resp:
                        doc = await resp.json(content_type=None)
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if not ok:
                    tokens["errors"] += 1
                    continue
                latencies.append(time.monotonic() - t)
                timings = doc.get("timings") or {}
                tokens["prompt_n"] += int(timings.get("prompt_n") or 0)
                tokens["cache_n"] += int(timings.get("cache_n") or 0)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(LLAMA_CONCURRENCY)))
        wall = time.monotonic() - started
    computed, reused = tokens["prompt_n"], tokens["cache_n"]
    return {
        "latency_p50_ms": round(1000 * (percentile(latencies, 0.5) or 0), 1),
        "latency_p90_ms": round(1000 * (percentile(latencies, 0.9) or 0), 1),
        "wall_seconds": round(wall, 2),
        "prompt_tokens_computed": computed,
        "prompt_tokens_reused": reused,
        "reused_share": round(reused / (reused + computed), 3) if reused + computed else None,
        "errors": tokens["errors"],
    }


def run_llama(path: Path) -> None:
    """--llama: the real-engine tier, added to a recorded results file."""
    results = json.loads(path.read_text())
    procs = Processes(Path(tempfile.mkdtemp(prefix="routing-llama-")))
    try:
        results["llama"] = asyncio.run(llama_tier(procs))
    finally:
        procs.stop_all()
        shutil.rmtree(procs.logdir, ignore_errors=True)
    results["llama"]["load_average"] = load_average()
    path.write_text(json.dumps(results, indent=1) + "\n")


# ---------------------------------------------------------------- the sweep of the defaults

# LoadWeights (waiting, running, kv_usage, inflight; latency 0, as before it had that term) and
# LoadBound (waiting, kv_usage, inflight_factor) tried; "(default)" marks the defaults the
# sweep started from (core/load.py). It moved the bound's inflight_factor from 1.5 to 1.25
# (docs/routing-bench.md). `--sweep-of latency`: LoadWeights.latency, the rest the defaults.
SWEEP_WEIGHTS = {
    "w1 r0.1 kv2 f1 (default)": (1.0, 0.1, 2.0, 1.0, 0.0),
    "in flight only": (0.0, 0.0, 0.0, 1.0, 0.0),
    "engine only": (1.0, 0.1, 2.0, 0.0, 0.0),
    "w4 r0.1 kv2 f1": (4.0, 0.1, 2.0, 1.0, 0.0),
    "w1 r1 kv2 f1": (1.0, 1.0, 2.0, 1.0, 0.0),
}
SWEEP_OF = ("weights", "bounds", "latency")
SWEEP_BOUNDS = {
    "waiting 4, x1.5 (default)": (4.0, 0.9, 1.5),
    "waiting 2, x1.5": (2.0, 0.9, 1.5),
    "waiting 0, x1.5": (0.0, 0.9, 1.5),
    "waiting 4, x1.25": (4.0, 0.9, 1.25),
    "waiting 8, x2": (8.0, 0.9, 2.0),
}


async def sweep(settings: Settings) -> dict[str, Any]:
    """LeastLoaded's weights and PrefixAffinity's bound, through the SDK's balancers (the
    gateway has no flags for them): each point two steps, the top one measured."""
    from clusterpool.balancer import LeastConnections, LeastLoaded, PrefixAffinity
    from clusterpool.core.latency import LatencyEwma
    from clusterpool.core.load import LoadBound, LoadWeights

    r = settings.rates
    plans: list[tuple[str, str, Callable[[Any], Any], str, bool, tuple[float, ...]]] = []
    if "weights" in settings.sweep_of:
        for label, w in SWEEP_WEIGHTS.items():
            weights = LoadWeights(*w)
            make = lambda view, weights=weights: LeastLoaded(view, weights)  # noqa: E731
            plans.append(("LeastLoaded", label, make, "uniform", False, r[2:4]))
            plans.append(("LeastLoaded", label, make, "uniform", True, r[1:3]))
    if "bounds" in settings.sweep_of:
        for label, b in SWEEP_BOUNDS.items():
            bound = LoadBound(*b)
            make = lambda view, bound=bound: PrefixAffinity(view, bound)  # noqa: E731
            plans.append(("PrefixAffinity", label, make, "shared-prefix", False, r[2:4]))
            plans.append(("PrefixAffinity", label, make, "uniform", False, r[2:4]))
    if "latency" in settings.sweep_of:  # the slow-engine goal (both fleets at r[2]) and uniform at r[3]
        plans.append(("LeastConnections", "-", lambda view: LeastConnections(), "uniform", False, r[2:4]))
        for point in settings.latency_points:
            x, peak = float(point.rstrip("p")), point.endswith("p")
            weights = replace(LoadWeights(), latency=x)
            make = lambda view, w=weights, p=peak: LeastLoaded(view, w, latency=LatencyEwma(peak=p))  # noqa: E731
            label = f"latency {x:g}{' peak' if peak else ''}"
            plans.append(("LeastLoaded", label, make, "uniform", False, r[2:4]))
            for wname in settings.workloads:
                plans.append(("LeastLoaded", label, make, wname, False, r[1:3]))
                plans.append(("LeastLoaded", label, make, wname, True, r[1:3]))
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_average_before": load_average(), "sweep_of": settings.sweep_of,
                           "points": []}  # fmt: skip
    procs = Processes(Path(tempfile.mkdtemp(prefix="routing-sweep-")))
    try:
        ports = await start_engines(procs)
        engines = Engines(ports)
        await engines.open()
        try:
            for strategy, label, make, wname, slow, rates in plans:
                schedule = Schedule.poisson(WORKLOADS[wname], rates, settings.step, settings.seed)
                run = await run_one(SdkRouter(label, make, ports), engines, schedule, slow, settings.drain, [1])
                step = run["steps"][0]
                out["points"].append({"strategy": strategy, "setting": label, "workload": wname,
                                      "slow_engine": slow, **step})  # fmt: skip
                print(f"{strategy:15} {label:28} {wname:13} {'slow' if slow else 'ok  '} rate {step['rate']:>4} "
                      f"tok/s {step['tokens_per_s']:>7} p50/p90/p99 {step['ttft_p50_ms']}/{step['ttft_p90_ms']}/"
                      f"{step['ttft_p99_ms']} ms hit {step['prefix_hit_rate']}", flush=True)  # fmt: skip
        finally:
            await engines.close()
    finally:
        procs.stop_all()
        shutil.rmtree(procs.logdir, ignore_errors=True)
    out["load_average_after"] = load_average()
    if "latency" in settings.sweep_of:
        out["latency_goals"] = latency_goals(out["points"], r[2], r[3])
    return out


def latency_goals(points: list[dict[str, Any]], slow_rate: float, top: float) -> list[dict[str, Any]]:
    """Per LoadWeights.latency of the sweep: the slow-engine goal (TTFT p99 with one engine
    slowed over the healthy fleet's, at `slow_rate`) per workload, and the uniform one
    (throughput and TTFT p90 over LeastConnections', at `top`)."""

    def point(strategy: str, setting: str, workload: str, slow: bool, rate: float) -> dict[str, Any] | None:
        return next((p for p in points if (p["strategy"], p["setting"], p["workload"], p["slow_engine"], p["rate"])
                     == (strategy, setting, workload, slow, rate)), None)  # fmt: skip

    lc = point("LeastConnections", "-", "uniform", False, top)
    out = []
    for setting in dict.fromkeys(p["setting"] for p in points if p["strategy"] == "LeastLoaded"):
        row: dict[str, Any] = {"setting": setting}
        for wname in WORKLOADS:
            healthy = point("LeastLoaded", setting, wname, False, slow_rate)
            slow = point("LeastLoaded", setting, wname, True, slow_rate)
            if healthy and slow and healthy["ttft_p99_ms"] and slow["ttft_p99_ms"]:
                row[f"{wname}_slow_p99_ratio"] = round(slow["ttft_p99_ms"] / healthy["ttft_p99_ms"], 2)
        uniform = point("LeastLoaded", setting, "uniform", False, top)
        if uniform and lc and lc["tokens_per_s"] and lc["ttft_p90_ms"] and uniform["ttft_p90_ms"]:
            row["uniform_throughput_vs_lc"] = round(uniform["tokens_per_s"] / lc["tokens_per_s"], 2)
            row["uniform_ttft_p90_vs_lc"] = round(uniform["ttft_p90_ms"] / lc["ttft_p90_ms"], 2)
        out.append(row)
    return out


# ---------------------------------------------------------------- goals and report


def step_of(results: dict[str, Any], router: str, workload: str, slow: bool, rate: float) -> dict[str, Any] | None:
    for run in results["runs"]:
        if run["router"] == router and run["workload"] == workload and run["slow_engine"] == slow:
            for s in run["steps"]:
                if s["rate"] == rate:
                    return dict(s)
    return None


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    rates = results["method"]["rates"]
    top, slow_rate = rates[-1], results["method"]["slow_rates"][-1]
    out: list[dict[str, Any]] = []

    def goal(text: str, value: float | None, limit: float, met: bool | None, unit: str) -> None:
        out.append(
            {
                "goal": text,
                "value": None if value is None else round(value, 2),
                "limit": limit,
                "met": met,
                "unit": unit,
            }
        )

    pa = step_of(results, "gateway:PrefixAffinity", "shared-prefix", False, top)
    rr = step_of(results, "gateway:RoundRobin", "shared-prefix", False, top)
    ca = step_of(results, "vllm-router:cache_aware", "shared-prefix", False, top)
    if pa and rr and pa["ttft_p90_ms"] and rr["ttft_p90_ms"]:
        x = rr["ttft_p90_ms"] / pa["ttft_p90_ms"]
        goal(
            "shared-prefix: PrefixAffinity TTFT p90 x lower than RoundRobin's",
            x,
            GOAL_TTFT_P90_TIMES,
            x >= GOAL_TTFT_P90_TIMES,
            "x",
        )
        x = pa["tokens_per_s"] / rr["tokens_per_s"] if rr["tokens_per_s"] else None
        goal(
            "shared-prefix: PrefixAffinity throughput x RoundRobin's",
            x,
            GOAL_THROUGHPUT_TIMES,
            None if x is None else x >= GOAL_THROUGHPUT_TIMES,
            "x",
        )
    if pa and ca and pa["ttft_p90_ms"] and ca["ttft_p90_ms"]:
        x = pa["ttft_p90_ms"] / ca["ttft_p90_ms"]
        goal(
            "shared-prefix: PrefixAffinity TTFT p90 / vllm-router cache_aware's",
            x,
            1 + NO_WORSE_TOLERANCE,
            x <= 1 + NO_WORSE_TOLERANCE,
            "ratio (<=)",
        )
        x = pa["tokens_per_s"] / ca["tokens_per_s"] if ca["tokens_per_s"] else None
        goal(
            "shared-prefix: PrefixAffinity throughput / vllm-router cache_aware's",
            x,
            1 - NO_WORSE_TOLERANCE / 2,
            None if x is None else x >= 1 - NO_WORSE_TOLERANCE / 2,
            "ratio (>=)",
        )
    lc = step_of(results, "gateway:LeastConnections", "uniform", False, top)
    for name in ("PrefixAffinity", "LeastLoaded"):
        s = step_of(results, f"gateway:{name}", "uniform", False, top)
        if s and lc and lc["tokens_per_s"] and lc["ttft_p90_ms"] and s["ttft_p90_ms"]:
            x = s["tokens_per_s"] / lc["tokens_per_s"]
            goal(
                f"uniform: {name} throughput / LeastConnections'",
                x,
                1 - GOAL_UNIFORM_WITHIN,
                x >= 1 - GOAL_UNIFORM_WITHIN,
                "ratio (>=)",
            )
            x = s["ttft_p90_ms"] / lc["ttft_p90_ms"]
            goal(
                f"uniform: {name} TTFT p90 / LeastConnections'",
                x,
                1 + GOAL_UNIFORM_WITHIN,
                x <= 1 + GOAL_UNIFORM_WITHIN,
                "ratio (<=)",
            )
    for wname in ("uniform", "shared-prefix"):
        healthy = step_of(results, "gateway:LeastLoaded", wname, False, slow_rate)
        slow = step_of(results, "gateway:LeastLoaded", wname, True, slow_rate)
        if healthy and slow and healthy["ttft_p99_ms"] and slow["ttft_p99_ms"]:
            x = slow["ttft_p99_ms"] / healthy["ttft_p99_ms"]
            goal(
                f"{wname}, one engine 5x slower: LeastLoaded TTFT p99 / healthy fleet's",
                x,
                GOAL_SLOW_P99_TIMES,
                x <= GOAL_SLOW_P99_TIMES,
                "ratio (<=)",
            )
    agree = results.get("agreement")
    if agree:
        goal(
            "three gateway replicas pick the same endpoint for the same prompt",
            agree["share"],
            1.0,
            agree["share"] >= 1.0,
            "share of prompts",
        )
    return out


def markdown_table(results: dict[str, Any], slow: bool = False) -> str:
    lines = [
        "| workload | router | rate (req/s) | output tok/s | TTFT p50 / p90 / p99 (ms) | prefix hits | unanswered |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        if run["slow_engine"] != slow:
            continue
        for s in run["steps"]:
            if not slow and s["rate"] != results["method"]["rates"][-1] and s["rate"] != results["method"]["rates"][-2]:
                continue
            ttft = " / ".join(
                f"{s[k]:,.0f}" if s[k] is not None else "-" for k in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms")
            )
            hit = f"{s['prefix_hit_rate']:.2f}" if s["prefix_hit_rate"] is not None else "-"
            lines.append(
                f"| {run['workload']} | {run['router']} | {s['rate']:g} | {s['tokens_per_s']:,.0f} | {ttft} "
                f"| {hit} | {s['no_first_token']} |"
            )
    return "\n".join(lines)


def sweep_table(sweep: dict[str, Any]) -> str:
    lines = [
        "| strategy | setting | workload | rate (req/s) | output tok/s | TTFT p50 / p90 / p99 (ms) | prefix hits |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sweep["points"]:
        ttft = " / ".join(f"{p[k]:,.0f}" for k in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"))
        hit = f"{p['prefix_hit_rate']:.2f}" if p["prefix_hit_rate"] is not None else "-"
        workload = p["workload"] + (", one engine 5x slower" if p["slow_engine"] else "")
        lines.append(f"| {p['strategy']} | {p['setting']} | {workload} | {p['rate']:g} | {p['tokens_per_s']:,.0f} "
                     f"| {ttft} | {hit} |")  # fmt: skip
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "Healthy fleet (the two highest rates):",
        "",
        markdown_table(results),
        "",
        f"One engine {SLOW_FACTOR:g}x slower:",
        "",
        markdown_table(results, slow=True),
        "",
    ]
    lines.append(
        f"Load average {m['load_average_before']} before, {m['load_average_after']} after; "
        f"{results.get('wall_seconds')} s of wall time."
    )
    for g in results["goals"]:
        word = {True: "met", False: "missed", None: "not judged"}[g["met"]]
        lines.append(f"- {g['goal']}: {word}, {g['value']} (goal {g['limit']} {g['unit']})")
    for name, why in results.get("unavailable", {}).items():
        lines.append(f"- {name}: not run ({why})")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Settings:
    all_routers = tuple(f"gateway:{s}" for s in GATEWAY_STRATEGIES) + REPLICATED + PEERS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2-s steps at lower rates, short drain (for a look)")
    p.add_argument("--routers", default=",".join(all_routers), help=f"comma-separated, of {','.join(all_routers)}")
    p.add_argument("--rates", default=None, help="requests/s per step, comma-separated (default 10,20,30,40)")
    p.add_argument("--step", type=float, default=None, help="seconds per rate (default 4)")
    p.add_argument("--drain", type=float, default=None, help="seconds to wait for stragglers after the last step")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/routing[-quick].json)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {','.join(WORKLOADS)}")
    p.add_argument("--fleets", default=",".join(FLEETS), help=f"comma-separated, of {','.join(FLEETS)}")
    p.add_argument(
        "--sweep-of", default="weights,bounds", help=f"with --sweep: comma-separated, of {','.join(SWEEP_OF)}"
    )
    p.add_argument("--latency-points", default=SWEEP_LATENCY,
                   help="with --sweep-of latency: LoadWeights.latency values (a p after one: peak)")  # fmt: skip
    args = p.parse_args(argv)
    points = tuple(x.strip() for x in args.latency_points.split(",") if x.strip())
    if not points or not all(re.fullmatch(r"\d+(\.\d+)?p?", x) for x in points):
        p.error(f"--latency-points: numbers, each maybe followed by p (e.g. 0,1,4p), not {args.latency_points!r}")
    chosen = {}
    for flag, value, known in (("workloads", args.workloads, WORKLOADS), ("fleets", args.fleets, FLEETS),
                               ("sweep-of", args.sweep_of, SWEEP_OF)):  # fmt: skip
        chosen[flag] = tuple(x.strip() for x in value.split(",") if x.strip())
        wrong = [x for x in chosen[flag] if x not in known]
        if wrong or not chosen[flag]:
            p.error(f"--{flag}: unknown {', '.join(wrong) or '(none given)'}; choose from {', '.join(known)}")
    routers = tuple(r.strip() for r in args.routers.split(",") if r.strip())
    unknown = [r for r in routers if r not in all_routers]
    if unknown:
        p.error(f"--routers: unknown {', '.join(unknown)}; choose from {', '.join(all_routers)}")
    rates = tuple(float(x) for x in args.rates.split(",")) if args.rates else (10.0, 20.0, 30.0, 40.0)
    if len(rates) < 3:
        p.error("--rates: at least three (the slow-engine runs use the second and third)")
    step = args.step or (2.0 if args.quick else 4.0)
    drain = args.drain if args.drain is not None else (3.0 if args.quick else 6.0)
    out = args.out or HERE / "results" / ("routing-quick.json" if args.quick else "routing.json")
    partial = chosen["workloads"] != tuple(WORKLOADS) or chosen["fleets"] != FLEETS or routers != all_routers
    return Settings(args.quick, routers, rates, step, drain, out, not args.no_plot and not args.quick and not partial,
                    workloads=chosen["workloads"], fleets=chosen["fleets"], sweep_of=chosen["sweep-of"],
                    latency_points=points)  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve-engines"]:
        serve_engines([int(p) for p in argv[1].split(",")])
        return 0
    if argv[:1] == ["--report"]:
        print(report(json.loads(Path(argv[1]).read_text())))
        sweep_path = Path(argv[1]).with_name("routing-sweep.json")
        if sweep_path.exists():
            print("\nSweep:\n\n" + sweep_table(json.loads(sweep_path.read_text())))
        return 0
    if os.environ.get("CLUSTERPOOL_NETNS") != "1":  # loopback only: LiteLLM cannot reach out
        netns_run = str(ROOT / "scripts" / "netns-run")
        os.execv(netns_run, [netns_run, sys.executable, str(Path(__file__).resolve()), *argv])
    if argv[:1] == ["--llama"]:
        path = Path(argv[1]) if len(argv) > 1 else HERE / "results" / "routing.json"
        run_llama(path)
        print(f"wrote {path}")
        return 0
    if argv[:1] == ["--sweep"]:
        settings = parse_args(argv[1:])
        explicit = settings.quick or any(a == "--out" or a.startswith("--out=") for a in argv)
        path = settings.out if explicit else settings.out.with_name("routing-sweep.json")
        path.write_text(json.dumps(asyncio.run(sweep(settings)), indent=1) + "\n")
        print(f"wrote {path}")
        return 0
    settings = parse_args(argv)
    results = asyncio.run(run_all(settings))
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(f"wrote {settings.out}")
    if settings.plot:
        import plots

        for path in plots.draw_routing(settings.out, ROOT / "docs" / "plots"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
