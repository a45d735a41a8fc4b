"""Gateway benchmark: the gateway (`python -m clusterpool.gateway`) side by side with HAProxy,
vllm-router and LiteLLM's proxy, and with no proxy at all, in the same run against the same
loopback backend (bench/gateway_backend.py). Results: bench/results/gateway.json, plot
docs/plots/gateway.png, method and table in docs/gateway-bench.md.

    scripts/netns-run .venv/bin/python bench/gateway_bench.py            # make bench-gateway
    .venv/bin/python bench/gateway_bench.py --quick --out /tmp/g.json    # a few seconds a row
    .venv/bin/python bench/gateway_bench.py --report bench/results/gateway.json   # its table

It re-runs itself under scripts/netns-run when not in a network namespace of its own, so no
proxy (LiteLLM's in particular) can reach anything but loopback. Each proxy runs pinned to
core 0 (taskset), the backend, wrk and this script on core 1. Per proxy and per kind of
request (a ~290-byte non-streamed completion; a stream of 100 SSE chunks):
- capacity: wrk, 32 connections, closed loop; the proxy's CPU time (utime + stime of its
  process tree, /proc/<pid>/stat) over the run gives CPU per request and requests per second
  per core (requests / proxy CPU seconds), which holds even when the load side, not the
  proxy, is what saturates;
- added latency at half capacity: wrk paced (a delay per connection) at half of the
  proxy's capacity, p50/p99 through the proxy minus p50/p99 straight to the backend at the
  same rate, measured back to back;
- RSS (VmRSS of the process tree) idle and with 1,000 streams held open (a second backend
  sends the first chunk and holds).
A proxy that is not installed gets a row saying so and no number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gateway_backend

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
PEERS_VENV = ROOT / ".venv-peers"
PROXY_CORE = 0
LOAD_CORE = 1
MODEL = "bench"
MASTER_KEY = "sk-bench-master"
PATH = "/v1/chat/completions"
COMPLETION_REQUEST = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]})
STREAM_REQUEST = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "stream": True})
KINDS = {"completion": COMPLETION_REQUEST, "stream": STREAM_REQUEST}
PROXIES = ("direct", "gateway", "haproxy", "vllm-router", "litellm-proxy")
# The goals for the gateway (issue 23, Benchmark).
GOAL_SHARE_OF_HAPROXY = 0.5
GOAL_TIMES_VLLM_ROUTER = 2.0
GOAL_TIMES_LITELLM = 300.0
GOAL_ADDED_P50_US = 300.0
GOAL_ADDED_P99_US = 1000.0
GOAL_RSS_MIB = 100.0
GOAL_RSS_STREAMS = 1000
MIN_REQUESTS_PER_RUN = 300  # a capacity run of a slow proxy lasts until about this many complete
MIN_PACED_REQUESTS = 100  # and a paced run until about this many


@dataclass(frozen=True)
class Settings:
    quick: bool
    proxies: tuple[str, ...]
    gateway_cmd: str
    gateway_args: str
    out: Path
    plot: Path | None
    connections: int = 32
    keep_logs: bool = False
    streams: int | None = None  # open streams for the RSS figure (default: 1,000; quick: 100)

    @property
    def capacity_seconds(self) -> int:
        return 2 if self.quick else 10

    @property
    def capacity_runs(self) -> int:
        return 1 if self.quick else 3

    @property
    def paced_seconds(self) -> int:
        return 2 if self.quick else 10

    @property
    def max_capacity_seconds(self) -> int:
        return 10 if self.quick else 60

    @property
    def open_streams(self) -> int:
        return self.streams or (100 if self.quick else GOAL_RSS_STREAMS)


# ---------------------------------------------------------------- processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """pid and every process below it (by the parent field of /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree = [pid]
    for p in tree:
        tree.extend(child for child, parent in parents.items() if parent == p)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid's process tree, in seconds."""
    ticks = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """VmRSS of pid's process tree, in MiB."""
    kib = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024


class Processes:
    """Starts processes (pinned to a core when given one), each in its own session, logs in
    one folder; stop() ends one, stop_all() every one."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], core: int | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*(["taskset", "-c", str(core)] if core is not None else []), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=self.logdir,
            start_new_session=True,
        )
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.started)):
            self.stop(proc)

    def log_tail(self, name: str, lines: int = 8) -> str:
        path = self.logdir / f"{name}.log"
        return " / ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def post(port: int, body: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {MASTER_KEY}"}
        conn.request("POST", PATH, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(
    port: int, proc: subprocess.Popen[bytes] | None, timeout: float, check_stream: bool = True
) -> str | None:
    """None once a completion (and a stream, if asked) through `port` answer 200; else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            status, body = post(port, COMPLETION_REQUEST)
            if status == 200 and not check_stream:
                return None
            if status == 200:
                status, body = post(port, STREAM_REQUEST)
                if status == 200 and b"[DONE]" in body:
                    return None
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.3)
    return f"not ready after {timeout:.0f} s ({last})"


# ---------------------------------------------------------------- the proxies


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0


def peers_bin(name: str) -> Path:
    return PEERS_VENV / "bin" / name


def peers_version(package: str) -> str | None:
    python = peers_bin("python")
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def gateway_cmd_argv(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    return [sys.executable, *argv[1:]] if argv and argv[0] == "python" else argv


def proxy_unavailable(name: str, settings: Settings) -> str | None:
    """Why the proxy cannot run here, or None."""
    if name == "haproxy" and shutil.which("haproxy") is None:
        return "not available: haproxy is not installed (apt-get install -y haproxy)"
    if name == "vllm-router" and not peers_bin("vllm-router").exists():
        return "not available: vllm-router is not installed in .venv-peers (make bench-gateway)"
    if name == "litellm-proxy" and not peers_bin("litellm").exists():
        return "not available: litellm[proxy] is not installed in .venv-peers (make bench-gateway)"
    if name == "gateway":
        try:
            out = subprocess.run(
                [*gateway_cmd_argv(settings.gateway_cmd), "--help"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"not available: {settings.gateway_cmd!r} --help failed ({e})"
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return f"not available: {settings.gateway_cmd!r} --help exited {out.returncode} ({last})"
    return None


def table_endpoint(name: str, address: str, port: int) -> dict[str, Any]:
    """One eligible, healthy endpoint of weight 1 in a routing table (docs/routing-table.md)."""
    return {"name": name, "address": address, "port": port, "tier": 0, "weight": 1, "effectiveWeight": 1,
            "eligible": True, "health": "Healthy", "breaker": "Closed", "labels": {}, "capacity": None}  # fmt: skip


def routing_file(workdir: Path, backend_port: int) -> Path:
    """A routing table (docs/routing-table.md) of one endpoint, plus the models it serves."""
    table: dict[str, Any] = {
        "schemaVersion": 1,
        "pool": {"namespace": "bench", "name": "bench"},
        "generation": 1,
        "strategy": "RoundRobin",
        "activeTier": 0,
        "panic": False,
        "circuitBreaker": {
            "failureThreshold": 3,
            "openSeconds": 30,
            "maxOpenSeconds": 300,
            "halfOpenMaxProbes": 1,
            "successThreshold": 2,
        },
        "endpoints": [table_endpoint("backend", "127.0.0.1", backend_port)],
        "cache": None,
    }
    table["revision"] = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]
    table["models"] = [MODEL]
    path = workdir / f"routing-{backend_port}.json"
    path.write_text(json.dumps(table, indent=1))
    return path


def launch(name: str, port: int, backend_port: int, workdir: Path, settings: Settings) -> Launch:
    """How to start the proxy `name` on `port` in front of the backend on backend_port."""
    if name == "haproxy":
        cfg = workdir / f"haproxy-{port}.cfg"
        cfg.write_text(
            "global\n  nbthread 1\n  maxconn 9000\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 400s\n"
            "  option http-keep-alive\n  http-reuse always\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
            f"backend be\n  server b1 127.0.0.1:{backend_port} maxconn 9000\n"
        )
        return Launch(["haproxy", "-db", "-f", str(cfg)])
    if name == "vllm-router":
        argv = [str(peers_bin("vllm-router")), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--worker-urls", f"http://127.0.0.1:{backend_port}", "--policy", "round_robin"]
        return Launch(argv, ready_timeout=120)
    if name == "litellm-proxy":
        cfg = workdir / f"litellm-{port}.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: http://127.0.0.1:{backend_port}/v1\n"
            "      api_key: sk-backend\n"
            f"general_settings:\n  master_key: {MASTER_KEY}\n"
        )
        argv = [str(peers_bin("litellm")), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--num_workers", "1"]
        return Launch(argv, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, ready_timeout=300)
    if name == "gateway":
        argv = gateway_cmd_argv(settings.gateway_cmd)
        argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}"]
        argv += ["--routing-file", str(routing_file(workdir, backend_port)), *shlex.split(settings.gateway_args)]
        return Launch(argv)
    raise ValueError(f"unknown proxy {name!r}; one of {', '.join(PROXIES)}")


def proxy_versions(settings: Settings) -> dict[str, str | None]:
    def first_line(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else None

    gateway_src = None
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        argv = gateway_cmd_argv(settings.gateway_cmd)
        if argv[:2] == [sys.executable, "-m"]:
            code = f"import importlib.util, os; print(os.path.dirname(importlib.util.find_spec({argv[2]!r}).origin))"
            where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            if where.returncode == 0:
                path = where.stdout.strip()
                commit = subprocess.run(
                    ["git", "-C", path, "log", "-1", "--format=%h %cI"], capture_output=True, text=True, timeout=30
                ).stdout.strip()
                gateway_src = f"{path} at {commit}" if commit else path
    uvloop_version = None
    with contextlib.suppress(ImportError):
        import importlib.metadata

        uvloop_version = importlib.metadata.version("uvloop")
    return {
        "haproxy": first_line(["haproxy", "-v"]) if shutil.which("haproxy") else None,
        "vllm-router": peers_version("vllm-router"),
        "litellm": peers_version("litellm"),
        "gateway_cmd": settings.gateway_cmd,
        "gateway_args": settings.gateway_args,
        "gateway_source": gateway_src,
        "wrk": first_line(["wrk", "-v"]) if shutil.which("wrk") else None,
        "backend_uvloop": uvloop_version,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class WrkRun:
    requests: int
    seconds: float
    errors: int
    p50_us: float
    p99_us: float
    proxy_cpu_s: float
    load_side_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


LUA_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(workdir: Path, body: str, delay_ms: int | None) -> Path:
    lua = (
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {MASTER_KEY}"\n'
    )
    if delay_ms is not None:
        lua += f"function delay() return {delay_ms} end\n"
    path = workdir / f"wrk-{abs(hash((body, delay_ms)))}.lua"
    path.write_text(lua + LUA_DONE)
    return path


def warm_up(port: int, body: str, seconds: float = 2.0, most: int = 2000) -> float:
    """Requests one after another for about `seconds` (at least 10, at most `most`); their rate.
    Sequential, so that no abandoned request keeps the proxy busy afterwards."""
    start = time.monotonic()
    count = 0
    while count < most and (count < 10 or time.monotonic() - start < seconds):
        post(port, body, timeout=60)
        count += 1
    return count / (time.monotonic() - start)


def settle(watch: list[int], quiet_s: float = 0.3, bound_s: float = 30.0) -> None:
    """Wait until the watched processes use no CPU for quiet_s (work left by the last run's
    unfinished requests would count against the next), at most bound_s."""
    deadline = time.monotonic() + bound_s
    last = sum(cpu_seconds(p) for p in watch)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = sum(cpu_seconds(p) for p in watch)
        if now - last < 0.02:
            return
        last = now


def run_wrk(
    port: int, body: str, connections: int, seconds: int, workdir: Path, watch: list[int], delay_ms: int | None = None
) -> WrkRun:
    """One wrk run on the load core; `watch` are the pids whose CPU time is the proxy's."""
    script = wrk_script(workdir, body, delay_ms)
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script), f"http://127.0.0.1:{port}{PATH}"]
    cpu_before = sum(cpu_seconds(p) for p in watch)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = sum(cpu_seconds(p) for p in watch)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {out.returncode}): {out.stderr.strip()[-300:]}")
    d = json.loads(line[len("WRKJSON ") :])
    wrk_cpu = sum(getattr(children_after, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime"))
    return WrkRun(
        requests=d["requests"] - d["status"],
        seconds=d["duration_us"] / 1e6,
        errors=d["status"] + d["connect"] + d["read"] + d["write"] + d["timeout"],
        p50_us=d["p50_us"],
        p99_us=d["p99_us"],
        proxy_cpu_s=cpu_after - cpu_before,
        load_side_cpu_s=wrk_cpu,
    )


def paced(port: int, body: str, rate: float, seconds: int, workdir: Path, latency_us: float) -> tuple[WrkRun, int, int]:
    """A wrk run near `rate` requests/s: connections that each wait delay_ms between requests.
    A short trial run corrects the connection count once. Returns (run, connections, delay_ms)."""
    per_conn_ceiling = 1000.0 / (1 + latency_us / 1000)
    connections = max(1, min(512, math.ceil(rate / (per_conn_ceiling * 0.5))))
    delay_ms = max(1, round(1000.0 * connections / rate - latency_us / 1000))
    trial = run_wrk(port, body, connections, 1, workdir, [], delay_ms)
    if trial.rate > 0:
        connections = max(1, min(512, round(connections * rate / trial.rate)))
    return run_wrk(port, body, connections, seconds, workdir, [], delay_ms), connections, delay_ms


async def hold_streams(port: int, count: int, timeout: float, writers: list[asyncio.StreamWriter]) -> int:
    """Open `count` streams through `port` (their writers appended to `writers`, for the caller
    to close); how many had a 200 and their first SSE event within `timeout`."""
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {MASTER_KEY}\r\nContent-Length: {len(STREAM_REQUEST)}\r\n\r\n{STREAM_REQUEST}"
    ).encode()
    gate = asyncio.Semaphore(64)

    async def one() -> bool:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(request)
            seen = b""
            while b"data:" not in seen:
                chunk = await reader.read(4096)
                if not chunk:
                    return False
                seen += chunk
            return seen.startswith(b"HTTP/1.1 200 ")

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())


def open_streams_rss(port: int, pid: int, count: int) -> dict[str, Any]:
    """RSS of the proxy's process tree idle and with `count` streams held open through it."""

    async def measure() -> dict[str, Any]:
        idle = rss_mib(pid)
        writers: list[asyncio.StreamWriter] = []
        try:
            opened = await hold_streams(port, count, 120, writers)
            await asyncio.sleep(1)
            held = rss_mib(pid)
        finally:
            for w in writers:
                w.close()
        return {
            "streams_requested": count,
            "streams_open": opened,
            "idle_mib": round(idle, 1),
            "open_mib": round(held, 1),
        }

    return asyncio.run(measure())


# ---------------------------------------------------------------- one proxy, all kinds


def median_run(runs: list[WrkRun]) -> dict[str, Any]:
    requests = sum(r.requests for r in runs)
    proxy_cpu = sum(r.proxy_cpu_s for r in runs)
    rate = statistics.median(r.rate for r in runs)
    out: dict[str, Any] = {
        "req_per_s": round(rate),
        "runs_req_per_s": [round(r.rate) for r in runs],
        "errors": sum(r.errors for r in runs),
        "p50_us": statistics.median(r.p50_us for r in runs),
        "p99_us": statistics.median(r.p99_us for r in runs),
        "load_side_core_util": round(statistics.median(r.load_side_cpu_s / r.seconds for r in runs), 3),
    }
    if proxy_cpu > 0 and requests > 0:
        seconds = sum(r.seconds for r in runs)
        out["proxy_core_util"] = round(proxy_cpu / seconds, 3)
        out["cpu_us_per_request"] = round(proxy_cpu / requests * 1e6, 2)
        out["req_per_s_per_core"] = round(requests / proxy_cpu)
    return out


def start_proxy(
    name: str, settings: Settings, procs: Processes, workdir: Path, backend_port: int, check_stream: bool
) -> tuple[subprocess.Popen[bytes], int] | str:
    """(process, port) of the proxy in front of backend_port once it answers, or why it did not."""
    port = free_port()
    spec = launch(name, port, backend_port, workdir, settings)
    label = f"{name}-{backend_port}"
    proc = procs.start(label, spec.argv, PROXY_CORE, spec.env)
    problem = wait_ready(port, proc, spec.ready_timeout, check_stream)
    if problem is None:
        return proc, port
    procs.stop(proc)
    return f"failed to start: {problem}; log: {procs.log_tail(label)}"


def capacity_and_latency(
    name: str, kind: str, settings: Settings, workdir: Path, ports: tuple[int, int], watch: list[int]
) -> dict[str, Any]:
    """One row: capacity through ports[0] and, for a proxy, added latency at half of it
    against the backend at ports[1]."""
    port, backend_port = ports
    body = KINDS[kind]
    print(f"  {name} {kind}: capacity", flush=True)
    warm = warm_up(port, body)
    seconds = settings.capacity_seconds
    if warm * seconds < MIN_REQUESTS_PER_RUN:  # a slow proxy: longer runs, within a bound
        seconds = min(settings.max_capacity_seconds, math.ceil(MIN_REQUESTS_PER_RUN / max(warm, 1)))
    runs = []
    for _ in range(settings.capacity_runs):
        settle(watch)
        runs.append(run_wrk(port, body, settings.connections, seconds, workdir, watch))
    settle(watch)
    capacity = median_run(runs)
    if "req_per_s_per_core" not in capacity:
        reason = f"no request completed in {settings.capacity_runs} run(s) of {seconds} s"
        return {"proxy": name, "kind": kind, "available": False, "reason": reason, "capacity": capacity}
    row: dict[str, Any] = {"proxy": name, "kind": kind, "available": True, "capacity": capacity}
    if name == "direct":
        capacity["note"] = "CPU figures are the backend's (no proxy)"
        return row
    target = 0.5 * min(capacity.get("req_per_s_per_core", capacity["req_per_s"]), capacity["req_per_s"])
    if target < 0.5:
        row["half_capacity"] = {"target_req_per_s": target, "reason": "under 1 request/s at capacity: no paced run"}
        return row
    print(f"  {name} {kind}: paced at {target:.0f}/s", flush=True)
    # long enough for about MIN_PACED_REQUESTS at a slow proxy's rate, within a bound
    wanted = MIN_PACED_REQUESTS / max(target, 1) + 2 * capacity["p99_us"] / 1e6
    seconds = max(settings.paced_seconds, min(settings.max_capacity_seconds, math.ceil(wanted)))
    direct, _, _ = paced(backend_port, body, target, seconds, workdir, capacity["p50_us"])
    settle(watch)
    through, connections, delay_ms = paced(port, body, target, seconds, workdir, capacity["p50_us"])
    if through.requests == 0 or direct.requests == 0:
        row["half_capacity"] = {"target_req_per_s": round(target), "reason": "no request completed in the paced run"}
        return row
    row["half_capacity"] = {
        "target_req_per_s": round(target),
        "req_per_s": round(through.rate),
        "direct_req_per_s": round(direct.rate),
        "connections": connections,
        "delay_ms": delay_ms,
        "seconds": seconds,
        "p50_us": through.p50_us,
        "p99_us": through.p99_us,
        "direct_p50_us": direct.p50_us,
        "direct_p99_us": direct.p99_us,
        "added_p50_us": through.p50_us - direct.p50_us,
        "added_p99_us": through.p99_us - direct.p99_us,
        "errors": through.errors,
    }
    return row


def measure_proxy(
    name: str, settings: Settings, procs: Processes, workdir: Path, backends: tuple[int, int, int]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The rows of one proxy (one per kind) and its open-streams RSS (None for direct).
    backends: (port, pid) of the fast backend and the port of the holding one."""
    backend_port, backend_pid, held_port = backends
    reason = proxy_unavailable(name, settings) if name != "direct" else None
    if name != "direct" and reason is None:
        started = start_proxy(name, settings, procs, workdir, backend_port, check_stream=True)
        reason = started if isinstance(started, str) else None
    if reason is not None:
        rows = [{"proxy": name, "kind": k, "available": False, "reason": reason} for k in KINDS]
        return rows, {"proxy": name, "available": False, "reason": reason}
    if name == "direct":
        rows = [
            capacity_and_latency(name, k, settings, workdir, (backend_port, backend_port), [backend_pid]) for k in KINDS
        ]
        return rows, None
    assert not isinstance(started, str)
    proc, port = started
    try:
        rows = [capacity_and_latency(name, k, settings, workdir, (port, backend_port), [proc.pid]) for k in KINDS]
    finally:
        procs.stop(proc)
    held = start_proxy(name, settings, procs, workdir, held_port, check_stream=False)
    if isinstance(held, str):
        return rows, {"proxy": name, "available": False, "reason": held}
    proc, port = held
    try:
        print(f"  {name}: RSS with {settings.open_streams} open streams", flush=True)
        return rows, {"proxy": name, "available": True, **open_streams_rss(port, proc.pid, settings.open_streams)}
    finally:
        procs.stop(proc)


# ---------------------------------------------------------------- goals, table, machine


def row_of(rows: list[dict[str, Any]], proxy: str, kind: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["proxy"] == proxy and r["kind"] == kind and r["available"]), None)


def verdict(goal: str, value: float, limit: float, met: bool | None, unit: str) -> dict[str, Any]:
    """met is None when the measurement cannot judge (noise larger than the effect)."""
    return {"goal": goal, "value": round(value, 3), "limit": limit, "unit": unit, "met": met}


def goal_verdicts(rows: list[dict[str, Any]], rss: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each met or missed, for the rows this run measured (none for a
    proxy that did not run)."""
    out: list[dict[str, Any]] = []
    refs = (
        ("haproxy", GOAL_SHARE_OF_HAPROXY, "share of HAProxy's req/s per core"),
        ("vllm-router", GOAL_TIMES_VLLM_ROUTER, "times vllm-router's req/s per core"),
        ("litellm-proxy", GOAL_TIMES_LITELLM, "times LiteLLM proxy's req/s per core"),
    )
    for kind in KINDS:
        ours = row_of(rows, "gateway", kind)
        if ours is None:
            continue
        mine = ours["capacity"]["req_per_s_per_core"]
        for peer, limit, goal in refs:
            theirs = row_of(rows, peer, kind)
            if theirs is not None:
                ratio = mine / theirs["capacity"]["req_per_s_per_core"]
                out.append({**verdict(f"{kind}: {goal}", ratio, limit, ratio >= limit, "x"), "proxy": peer})
        half = ours["half_capacity"]
        for q, limit in (("p50", GOAL_ADDED_P50_US), ("p99", GOAL_ADDED_P99_US)):
            if f"added_{q}_us" in half:
                value = half[f"added_{q}_us"]
                met = None if value < 0 else value <= limit  # below 0: the direct run was the slower one
                out.append(verdict(f"{kind}: added latency {q} at half capacity", value, limit, met, "us"))
    ours_rss = next((r for r in rss if r["proxy"] == "gateway" and r["available"]), None)
    if ours_rss is not None and ours_rss["streams_requested"] == GOAL_RSS_STREAMS:
        value = ours_rss["open_mib"]
        met = ours_rss["streams_open"] == GOAL_RSS_STREAMS and value <= GOAL_RSS_MIB
        out.append(verdict(f"RSS at {GOAL_RSS_STREAMS} open streams", value, GOAL_RSS_MIB, met, "MiB"))
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The docs table of one run."""
    lines = [
        "| proxy | kind | req/s | proxy core use | req/s per core | CPU per request "
        "| added p50 / p99 at half capacity | RSS idle / with open streams |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rss = {r["proxy"]: r for r in results["rss"]}
    for r in results["rows"]:
        if not r["available"]:
            lines.append(f"| {r['proxy']} | {r['kind']} | {r['reason']} | | | | | |")
            continue
        c = r["capacity"]
        half = r.get("half_capacity")
        added = "-"
        if half and "added_p50_us" in half:
            added = f"{half['added_p50_us']:.0f} / {half['added_p99_us']:.0f} us at {half['req_per_s']:,}/s"
        elif half:
            added = half["reason"]
        direct = r["proxy"] == "direct"
        per_core = "-" if direct else f"{c['req_per_s_per_core']:,}"
        cpu = f"({c['cpu_us_per_request']:.1f} us backend)" if direct else f"{c['cpu_us_per_request']:.1f} us"
        util = "-" if direct else f"{c['proxy_core_util']:.0%}"
        m = rss.get(r["proxy"])
        memory = ""
        if m and m["available"] and r["kind"] == "stream":
            memory = f"{m['idle_mib']:.0f} / {m['open_mib']:.0f} MiB ({m['streams_open']} of {m['streams_requested']})"
        cells = (r["proxy"], r["kind"], f"{c['req_per_s']:,}", util, per_core, cpu, added, memory)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy(load: list[float]) -> bool:
    """Whether other work shared the cores: a 1-minute load average above the core count
    (this benchmark alone keeps it near 2)."""
    return load[0] > (os.cpu_count() or 1)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "proxy_core": PROXY_CORE,
        "load_core": LOAD_CORE,
        "load_average_before": load_average(),
    }


# ---------------------------------------------------------------- the run


def run(settings: Settings) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make bench-gateway does)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    os.sched_setaffinity(0, {LOAD_CORE})
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": settings.quick,
        "machine": machine(),
        "versions": proxy_versions(settings),
        "method": {
            "connections": settings.connections,
            "capacity_seconds": settings.capacity_seconds,
            "capacity_runs": settings.capacity_runs,
            "paced_seconds": settings.paced_seconds,
            "open_streams": settings.open_streams,
            "completion_bytes": len(gateway_backend.COMPLETION),
            "stream_chunks": gateway_backend.STREAM_CHUNKS,
        },
        "rows": [],
        "rss": [],
    }
    procs = Processes(Path(tempfile.mkdtemp(prefix="gateway-bench-")))
    try:
        fast_port, held_port = free_port(), free_port()
        backend_py = [sys.executable, str(HERE / "gateway_backend.py")]
        fast = procs.start("backend", [*backend_py, "--port", str(fast_port)], LOAD_CORE)
        procs.start("backend-held", [*backend_py, "--port", str(held_port), "--hold"], LOAD_CORE)
        for port in (fast_port, held_port):
            problem = wait_ready(port, None, 30, check_stream=port == fast_port)
            if problem is not None:
                raise SystemExit(f"the benchmark backend on port {port} did not start: {problem}")
        for name in settings.proxies:
            print(f"{name}:", flush=True)
            rows, rss = measure_proxy(name, settings, procs, procs.logdir, (fast_port, fast.pid, held_port))
            results["rows"].extend(rows)
            if rss is not None:
                results["rss"].append(rss)
    finally:
        procs.stop_all()
        if not settings.keep_logs:
            shutil.rmtree(procs.logdir, ignore_errors=True)
        else:
            print(f"logs kept in {procs.logdir}")
    results["machine"]["load_average_after"] = load_average()
    results["machine"]["busy"] = busy(results["machine"]["load_average_before"]) or busy(
        results["machine"]["load_average_after"]
    )
    results["goals"] = goal_verdicts(results["rows"], results["rss"])
    return results


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 2-s run a row, 100 open streams (for tests)")
    parser.add_argument("--proxies", default=",".join(PROXIES), help=f"comma-separated subset of {','.join(PROXIES)}")
    parser.add_argument("--gateway-cmd", default="python -m clusterpool.gateway", help="how to start the gateway")
    parser.add_argument("--gateway-args", default="", help="more flags for the gateway (default: none)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/gateway[-quick].json)")
    parser.add_argument("--plot", type=Path, help="the figure (default docs/plots/gateway.png for a full run)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--open-streams", type=int, help="streams held open for the RSS figure (default 1000)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (their folder is printed)")
    args = parser.parse_args(argv)
    proxies = tuple(p.strip() for p in args.proxies.split(",") if p.strip())
    unknown = [p for p in proxies if p not in PROXIES]
    if unknown:
        parser.error(f"--proxies: unknown {', '.join(unknown)}; choose from {', '.join(PROXIES)}")
    out = args.out or HERE / "results" / ("gateway-quick.json" if args.quick else "gateway.json")
    plot = None if args.no_plot else args.plot or (None if args.quick else ROOT / "docs" / "plots" / "gateway.png")
    return Settings(
        args.quick,
        proxies,
        args.gateway_cmd,
        args.gateway_args,
        out,
        plot,
        keep_logs=args.keep_logs,
        streams=args.open_streams,
    )


def report(results: dict[str, Any]) -> str:
    """The table and the goals of one run, as docs/gateway-bench.md shows them."""
    m = results["machine"]
    lines = [markdown_table(results), ""]
    if m.get("busy"):
        load = f"{m['load_average_before'][0]} before, {m['load_average_after'][0]} after"
        lines.append(f"Busy machine (load average {load}): throughput and latency are depressed, CPU per request less.")
    for g in results["goals"]:
        word = {True: "met", False: "missed", None: "not judged (noise: direct was slower)"}[g["met"]]
        lines.append(f"- {g['goal']}: {word}, {g['value']:,} (goal {g['limit']:,} {g['unit']})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:  # print the table of a recorded run: --report PATH
        print(report(json.loads(Path(argv[1]).read_text())))
        return 0
    if os.environ.get("CLUSTERPOOL_NETNS") != "1":
        netns_run = str(ROOT / "scripts" / "netns-run")
        os.execv(netns_run, [netns_run, sys.executable, str(Path(__file__).resolve()), *argv])
    settings = parse_args(argv)
    results = run(settings)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(f"wrote {settings.out}")
    if settings.plot is not None:
        import plots

        plots.draw_gateway(settings.out, settings.plot)
        print(f"wrote {settings.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
