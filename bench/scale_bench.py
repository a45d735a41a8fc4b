"""Scale: one operator (or R replicas) under N pools, one shared backend killed.

Real components: the local control plane (started here and always stopped), the operator
as a process (`python -m clusterpool`), HTTP backends on loopback in two processes of
their own (a small asyncio server listening on many addresses): the *shared* one, on
127.0.0.2, is endpoint ep-0 of every pool and gets SIGKILLed; the other nine endpoints
(127.0.0.3-11) stay up. Pools have 10 static endpoints, intervalSeconds 5,
unhealthyThreshold 2 (detection floor 10 s). For each N in --pools:

  1. create N pools (a thread pool; the harness's own time is recorded), time from the
     last create to all Ready (seen through a watch on clusterpools);
  2. wait (up to --drain-timeout) until no write waits in the operators' write queues
     (clusterpool_kubernetes_write_backlog: the creation's Events, Services and statuses
     all sent), so the kill meets a fleet in steady state, not the tail of its creation;
     then steady CPU (% of one core, /proc/<pid>/stat over --steady seconds) and RSS;
  3. with --replicas > 1 and --kill-one: SIGKILL one replica, takeover time = until every
     pool it drove shows another status.drivenBy (absent before sharding: recorded null);
  4. SIGKILL the shared backend; per pool, the time until the watch shows ep-0 Unhealthy:
     p50/p99/max next to the floor; the operators' writes sent meanwhile, by lane;
  5. delete all pools: time until the last is gone; Services, EndpointSlices and ConfigMaps
     labelled clusterpool.dev/pool and ClusterPools left behind;
  6. RSS after each of --cycles create/delete cycles (cycles after the first: create,
     Ready, delete only).

With --profile, py-spy records the (first) operator from all Ready until detection ends
(`--format raw`, aggregated here into a table of top frames and groups; a speedscope
file is written from the same samples). Results merge into bench/results/scale.json
(one entry per pools/replicas/profiled), a plot goes to docs/scale-detection.png.

    python bench/scale_bench.py                         # 100, 300, 1000 pools, 5 cycles
    python bench/scale_bench.py --pools 100,300 --cycles 2
    python bench/scale_bench.py --pools 300 --profile --cycles 1
    python bench/scale_bench.py --pools 1000 --replicas 3 --kill-one
    python bench/scale_bench.py --quick                 # 50 pools, 1 cycle, short windows
    python bench/scale_bench.py --harness-only --pools 300,1000   # the harness's own speed
    python bench/scale_bench.py summarize bench/results/profiles/<run>.raw.txt[.gz]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

GROUP, VERSION, PLURAL = "clusterpool.dev", "v1alpha1", "clusterpools"
POOL_LABEL = "clusterpool.dev/pool"
INTERVAL, THRESHOLD, ENDPOINTS = 5, 2, 10
FLOOR = INTERVAL * THRESHOLD
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULTS = ROOT / "bench" / "results"
SNAPSHOT: Path | None = None  # a copy of this file the backend processes run (edits mid-run do not reach them)


# --------------------------------------------------------------------------- backends


async def _serve(hosts: list[str], port: int) -> None:
    body = b'{"status":"ok"}'
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    served = {"connections": 0, "requests": 0}  # GET /served answers these (counted before it)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                if head.startswith(b"GET /served "):
                    counts = json.dumps(served).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(counts), counts))
                else:
                    served["requests"] += 1
                    writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, h, port, backlog=1024) for h in hosts]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class Backends:
    """A process serving HTTP 200 on each host:port; SIGKILL takes its sockets with it."""

    def __init__(self, hosts: list[str], port: int) -> None:
        self.hosts, self.port = hosts, port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Backends:
        self.proc = subprocess.Popen(
            [sys.executable, str(SNAPSHOT or __file__), "_backends", str(self.port), *self.hosts],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"backends on {self.hosts} did not start")
        return self

    def served(self) -> dict[str, int]:
        """Connections accepted and probe requests answered so far, all hosts together."""
        import socket

        with socket.create_connection((self.hosts[0], self.port), timeout=10) as sock:
            sock.sendall(f"GET /served HTTP/1.1\r\nHost: {self.hosts[0]}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
                if answer.endswith(b"}"):
                    break
        counts: dict[str, int] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        return counts

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------- process stats


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def retrying(call: Any, *args: Any, done_on: tuple[int, ...] = (), attempts: int = 10, **kwargs: Any) -> Any:
    """A harness API call, retried while the API server is overloaded (a 5xx such as the
    504 it answers when etcd is slow, 429, a broken connection): the benchmark measures the
    operator, and one lost request of the harness must not end a 15-minute run. A status
    in `done_on` counts as done (a retried create whose first attempt landed: 409)."""
    from kubernetes.client.exceptions import ApiException

    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            if exc.status in done_on:
                return None
            if attempt == attempts - 1 or not (exc.status in (0, 429) or exc.status >= 500):
                raise
        except OSError:
            if attempt == attempts - 1:
                raise
        time.sleep(min(8.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def operator_commit() -> str:
    """The last commit that changed operator/ (what was measured), dirty or not."""
    r = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", "operator"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "operator"], capture_output=True, text=True
    )
    return r.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "operator"], capture_output=True, text=True
    )
    return r.stdout.strip() + ("-dirty(operator)" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- operator


class Operator:
    def __init__(
        self,
        kubeconfig: str,
        log_dir: Path,
        identity: str,
        memtrace: Path | None = None,
        frames: int = 12,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        from backends import free_port

        self.identity = identity
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.metrics = f"http://127.0.0.1:{free_port()}/metrics"
        # with --memtrace, the operator runs under bench/memtrace.py (tracemalloc, dumps on SIGUSR1)
        self.memtrace = memtrace
        launch = ["-m", "clusterpool"]
        if memtrace is not None:
            launch = [str(ROOT / "bench" / "memtrace.py"), str(memtrace), "--frames", str(frames), "--"]
        self.cmd = [
            sys.executable,
            *launch,
            "--liveness",
            self.liveness,
            "--metrics",
            self.metrics,
            "--identity",
            identity,
            *extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
        self.log = log_dir / f"operator-{identity}.log"
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while not self._alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"operator {identity} did not come up; log {self.log}")
            time.sleep(0.2)

    def _alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.liveness, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def scrape(self) -> str:
        try:
            with urllib.request.urlopen(self.metrics, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def memory_dump(self, sig: int = signal.SIGUSR1, timeout: float = 300.0) -> dict[str, Any] | None:
        """Ask a --memtrace operator for a snapshot (SIGUSR1) or a malloc_trim (SIGUSR2);
        returns the line it wrote about itself."""
        if self.memtrace is None or not self.running():
            return None
        lines = self.memtrace / "memtrace.jsonl"
        before = len(lines.read_text().splitlines()) if lines.exists() else 0
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = lines.read_text().splitlines() if lines.exists() else []
            if len(got) > before:
                facts: dict[str, Any] = json.loads(got[before])
                return {k: v for k, v in facts.items() if k not in ("types", "tasks")}
            time.sleep(0.5)
        return None

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LAG = "clusterpool_event_loop_lag_seconds"
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> list[tuple[str, str, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def histogram_quantile(samples: list[tuple[str, str, float]], name: str, q: float) -> float | None:
    """q-quantile over all series of a histogram (buckets summed over labels)."""
    buckets: dict[float, float] = collections.defaultdict(float)
    for n, labels, v in samples:
        if n == f"{name}_bucket":
            m = re.search(r'le="([^"]+)"', labels)
            if m:
                buckets[float(m.group(1))] += v
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    for b in bounds:
        if buckets[b] >= q * total:
            return b
    return bounds[-1]


def write_counters(ops: list[Operator]) -> dict[str, dict[str, float]]:
    """Writes sent and writes waiting, per lane, summed over the running operators."""
    sent: dict[str, float] = collections.defaultdict(float)
    waiting: dict[str, float] = collections.defaultdict(float)
    for op in ops:
        if not op.running():
            continue
        with contextlib.suppress(Exception):
            for name, labels, v in parse_metrics(op.scrape()):
                lane = re.search(r'lane="([^"]+)"', labels)
                if lane and name == "clusterpool_kubernetes_writes_total":
                    sent[lane.group(1)] += v
                elif lane and name == "clusterpool_kubernetes_write_backlog":
                    waiting[lane.group(1)] += v
    return {"sent": dict(sent), "waiting": dict(waiting)}


def writes_between(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per lane, when both scrapes answered (an overloaded operator may not answer one)."""
    return {lane: after["sent"][lane] - n for lane, n in before["sent"].items() if lane in after["sent"]}


WRITE_VERBS = ("APPLY", "PATCH", "POST", "PUT", "DELETE")


def api_writes(client: Any) -> collections.Counter[str]:
    """The API server's own count of the writes it answered so far, by verb and resource
    ("PATCH clusterpools/status"; refused for a stale resourceVersion: "... 409"), from
    its /metrics (apiserver_request_total); empty when the scrape fails."""
    try:
        method, url, headers, body, post = client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
        answer = retrying(client.call_api, method, url, headers, body, post, _request_timeout=30)
        answer.read()
        text = answer.data.decode()
    except Exception:
        return collections.Counter()
    out: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("verb") in WRITE_VERBS:
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            conflict = " 409" if labels.get("code") == "409" else ""
            out[f"{labels['verb']} {labels.get('resource')}{sub}{conflict}"] += float(line.rsplit(" ", 1)[1])
    return out


def api_writes_between(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    if not before or not after:
        return {}
    diff = {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0) >= 1}
    return dict(sorted(diff.items(), key=lambda kv: -kv[1]))


def drain_writes(ops: list[Operator], timeout: float) -> dict[str, Any]:
    """Wait until no write waits in any operator (the creation's Events, Services and
    statuses are all sent): the API server is then as busy as a steady fleet keeps it."""
    t0 = time.monotonic()
    while True:
        counts = write_counters(ops)
        if counts["sent"] and not any(counts["waiting"].values()):
            return {"drained": True, "seconds": round(time.monotonic() - t0, 1), "sent": counts["sent"]}
        if time.monotonic() - t0 > timeout:
            return {"drained": False, "seconds": round(time.monotonic() - t0, 1), **counts}
        time.sleep(2)


class MetricsWatch:
    """Scrapes every operator every few seconds: event-loop lag (if exported) and round
    durations."""

    def __init__(self, ops: list[Operator], every: float) -> None:
        self.ops = ops
        self.every = every
        self.lag_values: list[float] = []
        self.lag_exported = False
        self.last: dict[str, list[tuple[str, str, float]]] = {}
        self.stop_ = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_.wait(self.every):
            self.once()

    def once(self) -> None:
        for op in self.ops:
            if not op.running():
                continue
            samples = parse_metrics(op.scrape())
            if samples:
                self.last[op.identity] = samples
            for n, _labels, v in samples:
                if n == LAG or (n.startswith(LAG) and not n.endswith(("_count", "_sum", "_bucket", "_created"))):
                    self.lag_exported = True
                    self.lag_values.append(v)
                elif n.startswith(LAG):
                    self.lag_exported = True

    def summary(self) -> dict[str, Any]:
        self.once()
        out: dict[str, Any] = {"event_loop_lag_exported": self.lag_exported}
        if self.lag_values:
            out["event_loop_lag_max_seconds"] = round(max(self.lag_values), 4)
            out["event_loop_lag_p99_seconds"] = round(pct(self.lag_values, 0.99), 4)
        for ident, samples in self.last.items():
            q = histogram_quantile(samples, LAG, 0.99)
            if q is not None:
                out.setdefault("event_loop_lag_histogram_p99_le", {})[ident] = q
            r = histogram_quantile(samples, "clusterpool_round_duration_seconds", 0.99)
            if r is not None:
                out.setdefault("round_duration_p99_le_seconds", {})[ident] = r
            r50 = histogram_quantile(samples, "clusterpool_round_duration_seconds", 0.5)
            if r50 is not None:
                out.setdefault("round_duration_p50_le_seconds", {})[ident] = r50
            for n, labels, v in samples:  # garbage collections so far: each stops every thread
                if n in ("clusterpool_gc_pause_seconds_count", "clusterpool_gc_pause_seconds_sum"):
                    gen = re.search(r'generation="(\d)"', labels)
                    kind = "count" if n.endswith("_count") else "seconds"
                    if gen:
                        out.setdefault("gc_pauses", {}).setdefault(ident, {}).setdefault(gen.group(1), {})[kind] = (
                            round(v, 2)
                        )
                if n in ("clusterpool_memory_give_back_seconds_count", "clusterpool_memory_give_back_seconds_sum"):
                    kind = "count" if n.endswith("_count") else "seconds"
                    out.setdefault("memory_give_backs", {}).setdefault(ident, {})[kind] = round(v, 3)
        return out

    def stop(self) -> None:
        self.stop_.set()


# --------------------------------------------------------------------------- the watch


class PoolWatch:
    """A watch on clusterpools in one namespace, keeping per pool: when it was first Ready,
    when ep-0 was first seen Unhealthy after `armed`, its status.drivenBy and when that
    last changed, and whether it still exists."""

    def __init__(self, client: Any, namespace: str) -> None:
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.exists: set[str] = set()
        self.ready_at: dict[str, float] = {}
        self.unhealthy_at: dict[str, float] = {}
        self.armed: float | None = None
        self.driven_by: dict[str, str | None] = {}
        self.driven_changed_at: dict[str, float] = {}
        self.driven_changes: collections.Counter[str] = collections.Counter()
        self.events = 0
        self.stopping = False
        self.watch: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _observe(self, kind: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.exists.discard(name)
            return
        self.exists.add(name)
        status = obj.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if ready and name not in self.ready_at:
            self.ready_at[name] = now
        if self.armed is not None and name not in self.unhealthy_at:
            ep0 = next((e for e in status.get("endpoints") or [] if e.get("name") == "ep-0"), {})
            if ep0.get("health") == "Unhealthy":
                self.unhealthy_at[name] = now
        driven = status.get("drivenBy")
        if driven is not None and not isinstance(driven, str):
            driven = json.dumps(driven, sort_keys=True)
        if self.driven_by.get(name) != driven:
            if self.driven_by.get(name) is not None:
                self.driven_changes[name] += 1  # from one identity to another (or to none)
            self.driven_by[name] = driven
            self.driven_changed_at[name] = now

    def _run(self) -> None:
        import kubernetes
        from kubernetes.client.exceptions import ApiException

        rv: str | None = None
        while not self.stopping:
            try:
                if rv is None:
                    listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                    now = time.monotonic()
                    with self.cond:
                        names = {o["metadata"]["name"] for o in listed["items"]}
                        for gone in self.exists - names:
                            self.exists.discard(gone)
                        for o in listed["items"]:
                            self._observe("ADDED", o, now)
                        self.cond.notify_all()
                    rv = listed["metadata"]["resourceVersion"]
                self.watch = kubernetes.watch.Watch()
                for ev in self.watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=240,
                ):
                    now = time.monotonic()
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = None
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] == "BOOKMARK":
                        continue
                    with self.cond:
                        self.events += 1
                        self._observe(ev["type"], obj, now)
                        self.cond.notify_all()
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                if self.stopping:
                    return
                time.sleep(0.5)
            except Exception:  # a broken stream: list again
                if self.stopping:
                    return
                rv = None
                time.sleep(0.5)

    def wait(self, pred: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        self.stopping = True
        if self.watch is not None:
            self.watch.stop()


# --------------------------------------------------------------------------- profile


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


class Profile:
    def __init__(self, pid: int, out: Path, rate: int) -> None:
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy (into the venv)")
        self.raw = out
        self.rate = rate
        self.started = time.monotonic()
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--full-filenames"]
        self.proc = subprocess.Popen(
            [*cmd, "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> float:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return time.monotonic() - self.started


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")

# the pool loop: runner.py and the stages it runs (pool_status.py, sinks/, the Source factory)
LOOP_FILES = (
    "clusterpool/runner.py",
    "clusterpool/pool_status.py",
    "clusterpool/pool_spec.py",
    "clusterpool/stages.py",
    "clusterpool/sinks/",
    "clusterpool/discovery/source.py",
)
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    # (group, substrings of "file:function"); the first group found from the leaf up wins
    ("deepcopy", ("/copy.py:",)),
    ("json encode/decode", ("/json/",)),
    ("ssl", ("/ssl.py:",)),
    ("http.client", ("/http/client.py:",)),
    ("urllib3", ("/urllib3/",)),
    ("kubernetes client (serialize/deserialize, models)", ("/kubernetes/",)),
    ("kopf internals", ("/kopf/",)),
    ("aiohttp", ("/aiohttp/",)),
    ("httpx/httpcore", ("/httpx/", "/httpcore/")),
    ("pydantic", ("/pydantic",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("yaml", ("/yaml/",)),
    ("clusterpool core (pure)", ("clusterpool/core/",)),
    ("clusterpool probes", ("clusterpool/health/",)),
    ("clusterpool k8s/publish.py", ("clusterpool/k8s/publish.py",)),
    ("clusterpool k8s/client.py", ("clusterpool/k8s/client.py",)),
    (
        "clusterpool loop/handlers/metrics",
        (*LOOP_FILES, "clusterpool/handlers.py", "clusterpool/metrics"),
    ),
    ("clusterpool other", ("clusterpool/",)),
    ("asyncio event loop", ("/asyncio/", "/selectors.py:")),
    ("threading/concurrent.futures", ("/threading.py:", "/concurrent/futures/")),
    ("logging", ("/logging/",)),
]

# Inclusive shares: a sample counts for a component when any frame of its stack matches.
# Kubernetes calls run in worker threads (asyncio.to_thread), whose stacks start at the
# thread, not at the awaiting coroutine: a status write is recognised by the client method
# (patch_namespaced_custom_object_status), publishing by k8s/publish.py's sync functions.
# kopf talks to the API through aiohttp on the event loop (its patches, Events, watches).
INCLUSIVE: list[tuple[str, tuple[str, ...]]] = [
    ("kubernetes client request path (urllib3, ssl, http.client)", ("/urllib3/", "/ssl.py:", "/http/client.py:")),
    ("any kubernetes client code (incl. its request path)", ("/kubernetes/",)),
    ("publish: k8s/publish.py (Service/Slice/ConfigMap applies, owner reads, prunes)", ("clusterpool/k8s/publish.py",)),
    ("status writes (patch_namespaced_custom_object_status)", ("patch_namespaced_custom_object_status",)),
    ("probes (clusterpool/health)", ("clusterpool/health/",)),
    ("the pool loop (runner.py and its stages)", LOOP_FILES),
    ("core (status render, step, publish builders)", ("clusterpool/core/",)),
    ("metrics (ours) + prometheus_client", ("clusterpool/metrics.py", "/prometheus_client/")),
    (
        "kopf diff-base / patches / diffs",
        ("/kopf/_cogs/configs/diffbase.py", "/kopf/_cogs/structs/diffs.py", "/kopf/_cogs/structs/patches.py"),
    ),
    ("kopf event posting", ("/kopf/_core/engines/posting.py",)),
    ("kopf watch stream / queueing", ("/kopf/_cogs/clients/watching.py", "/kopf/_core/reactor/queueing.py")),
    ("aiohttp (kopf's API client)", ("/aiohttp/",)),
    ("copy.deepcopy", ("/copy.py:",)),
    ("json", ("/json/",)),
    ("worker threads (asyncio.to_thread / executor)", ("/concurrent/futures/thread.py",)),
    ("logging", ("/logging/",)),
]


KOPF_PARTS = [
    (
        "kopf: diff-base, patches, diffs",
        (
            "kopf/_cogs/configs/diffbase.py",
            "kopf/_cogs/structs/diffs.py",
            "kopf/_cogs/structs/patches.py",
            "kopf/_core/actions/application.py",
        ),
    ),
    ("kopf: Event posting", ("kopf/_core/engines/posting.py",)),
    ("kopf: watch streams, queueing, processing", ("kopf/_cogs/clients/", "kopf/_core/reactor/")),
    ("kopf: daemons, handler invocation", ("kopf/_core/engines/daemons.py", "kopf/_core/actions/")),
    ("kopf: other", ("kopf/",)),
]
OURS = [
    ("clusterpool: probes", "clusterpool/health/"),
    ("clusterpool: core (status render, step, publish builders)", "clusterpool/core/"),
    ("clusterpool: runner.py", "clusterpool/runner.py"),
    ("clusterpool: pool_status.py (incl. plain/same comparisons)", "clusterpool/pool_status.py"),
    ("clusterpool: sinks/", "clusterpool/sinks/"),
    ("clusterpool: metrics.py", "clusterpool/metrics.py"),
    ("clusterpool: handlers.py", "clusterpool/handlers.py"),
    ("clusterpool: cache monitor", "clusterpool/cache"),
    ("clusterpool: other", "clusterpool/"),
]


def attribute(keys: list[str]) -> str:
    """Who caused a sample (keys root to leaf): for a worker thread, the call it runs; on the
    event loop, the innermost clusterpool or kopf frame; the metrics server thread apart."""
    run = next((i for i, k in enumerate(keys) if k.endswith("concurrent/futures/thread.py:_WorkItem.run")), None)
    if run is not None:
        work = keys[run + 1 :]
        text = "\n".join(work)
        if "clusterpool/k8s/publish.py" in text:
            return "API calls in threads: publish (Service, EndpointSlice, ConfigMap applies, owner reads, prunes)"
        if "patch_namespaced_custom_object_status" in text:
            return "API calls in threads: status writes (patch_namespaced_custom_object_status)"
        if "kubernetes/" in text:
            return "API calls in threads: other (Secrets, the API check)"
        if "kopf/" in text or "clusterpool/handlers.py" in text:
            return "kopf sync handlers in threads"
        return "worker threads: idle or other"
    if any("wsgiref/" in k or "prometheus_client/" in k for k in keys):
        return "metrics endpoint (prometheus_client rendering /metrics)"
    # On the event loop, only frames above the callback being run (asyncio Handle._run) say
    # whose work it is: below it sit the loop and kopf's `run`, under everything.
    handle = max((i for i, k in enumerate(keys) if k.endswith("asyncio/events.py:Handle._run")), default=None)
    if handle is None:
        return "asyncio event loop (select, dispatch) and other"
    for k in reversed(keys[handle + 1 :]):
        for name, sub in OURS:
            if sub in k:
                return name
        if "kopf/" in k:
            return next(name for name, subs in KOPF_PARTS if any(x in k for x in subs))
    return "asyncio event loop (select, dispatch) and other"


def _frames(stack: str) -> list[tuple[str, str]]:
    """(file, function) from root to leaf."""
    out = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        if m:
            out.append((m.group("file"), m.group("func")))
        else:
            out.append(("?", part.strip()))
    return out


def summarize_profile(raw: Path, speedscope: Path) -> dict[str, Any]:
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in _frames(stack) if not f[1].startswith("process ") and not f[1].startswith("thread ")]
        stacks.append((frames, int(count)))
    total = sum(c for _, c in stacks) or 1

    def key(f: tuple[str, str]) -> str:
        file = f[0]
        for marker in ("site-packages/", "lib/python3.11/", "operator/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{file}:{f[1]}"

    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    comp: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        if not frames:
            continue
        self_[key(frames[-1])] += c
        for k in {key(f) for f in frames}:
            incl[k] += c
        joined = [f"{f[0]}:{f[1]}" for f in frames]
        group = "other"
        for fr in reversed(joined):
            hit = next((g for g, subs in GROUPS if any(s in fr for s in subs)), None)
            if hit is not None:
                group = hit
                break
        groups[group] += c
        text = "\n".join(joined)
        for name, subs in INCLUSIVE:
            if any(s in text for s in subs):
                comp[name] += c

    # Samples whose leaf is a blocking read or select: py-spy counted the thread as active
    # (runnable: on a loaded machine, woken and waiting for a core or the GIL), but the time
    # is mostly waiting for the apiserver's answer, not Python work.
    waiting = sum(
        c
        for frames, c in stacks
        if frames and any(w in key(frames[-1]) for w in ("ssl.py:SSLSocket.read", "selectors.py:", "wait.py:"))
    )
    on_cpu: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        if not frames or any(w in key(frames[-1]) for w in ("ssl.py:SSLSocket.read", "selectors.py:", "wait.py:")):
            continue
        joined = "\n".join(f"{f[0]}:{f[1]}" for f in frames)
        for name, subs in INCLUSIVE:
            if any(sub in joined for sub in subs):
                on_cpu[name] += c

    def table(counter: collections.Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"frame": k, "samples": v, "percent": round(100 * v / total, 1)} for k, v in counter.most_common(n)]

    # speedscope: one sampled profile
    index: dict[tuple[str, str], int] = {}
    frames_out: list[dict[str, str]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    for frames, c in stacks:
        ids = []
        for f in frames:
            if f not in index:
                index[f] = len(frames_out)
                frames_out.append({"name": f[1], "file": f[0]})
            ids.append(index[f])
        samples.append(ids)
        weights.append(c)
    speedscope.write_text(
        json.dumps(
            {
                "$schema": "https://www.speedscope.app/file-format-schema.json",
                "shared": {"frames": frames_out},
                "profiles": [
                    {
                        "type": "sampled",
                        "name": "clusterpool operator",
                        "unit": "none",
                        "startValue": 0,
                        "endValue": sum(weights),
                        "samples": samples,
                        "weights": weights,
                    }
                ],
                "exporter": "bench/scale_bench.py from py-spy --format raw",
            }
        )
    )
    by_cause: collections.Counter[str] = collections.Counter()
    by_cause_busy: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        if not frames:
            continue
        keys = [key(f) for f in frames]
        cause = attribute(keys)
        by_cause[cause] += c
        if not any(w in keys[-1] for w in ("ssl.py:SSLSocket.read", "selectors.py:", "wait.py:")):
            by_cause_busy[cause] += c
    busy = max(total - waiting, 1)
    return {
        "samples": total,
        "samples_waiting_in_read_or_select": waiting,
        "by_cause": [
            {
                "cause": k,
                "samples": v,
                "percent": round(100 * v / total, 1),
                "samples_not_waiting": by_cause_busy[k],
                "percent_of_non_waiting": round(100 * by_cause_busy[k] / busy, 1),
            }
            for k, v in by_cause.most_common()
        ],
        "inclusive_components_excluding_waits": [
            {"frame": k, "samples": v, "percent_of_non_waiting": round(100 * v / busy, 1)}
            for k, v in on_cpu.most_common(30)
        ],
        "groups_by_leaf": table(groups, 30),
        "inclusive_components": table(comp, 30),
        "top_self": table(self_, 25),
        "top_inclusive": table(incl, 40),
    }


# --------------------------------------------------------------------------- one run


def pool_body(name: str, hosts: list[str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterPool",
        "metadata": {"name": name},
        "spec": {
            "discovery": {
                "static": {"endpoints": [{"name": f"ep-{i}", "address": h, "port": port} for i, h in enumerate(hosts)]}
            },
            "healthCheck": {
                "intervalSeconds": INTERVAL,
                "timeoutSeconds": 1,
                "unhealthyThreshold": THRESHOLD,
                "http": {},
            },
            "failover": {"maxEjectionPercent": 100, "panicThresholdPercent": 0},
        },
    }


def leftovers(client: Any, namespace: str) -> dict[str, int]:
    import kubernetes

    core = kubernetes.client.CoreV1Api(client)
    disc = kubernetes.client.DiscoveryV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    return {
        "services": len(retrying(core.list_namespaced_service, namespace, label_selector=POOL_LABEL).items),
        "configmaps": len(retrying(core.list_namespaced_config_map, namespace, label_selector=POOL_LABEL).items),
        "endpointslices": len(
            retrying(disc.list_namespaced_endpoint_slice, namespace, label_selector=POOL_LABEL).items
        ),
        "clusterpools": len(retrying(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)["items"]),
    }


def backend_latency(host: str, port: int, until: float, every: float = 0.05) -> dict[str, Any]:
    """Seconds one GET /health to a backend takes, from this process, over one keep-alive
    connection, every `every` s until `until`: how fast the backends answer the operators'
    probes under the same load (a probe fails after timeoutSeconds, 1 s here)."""
    import socket

    took: list[float] = []
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        while time.monotonic() < until:
            t0 = time.monotonic()
            sock.sendall(request)
            got = b""
            while not got.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the backend closed the connection")
                got += chunk
            took.append(time.monotonic() - t0)
            time.sleep(every)
    took.sort()
    return {
        "requests": len(took),
        "p50_ms": round(1000 * pct(took, 0.5), 1),
        "p99_ms": round(1000 * pct(took, 0.99), 1),
        "max_ms": round(1000 * took[-1], 1),
        "over_1s": sum(t > 1.0 for t in took),
    }


def events_by_reason(core: Any, namespace: str) -> dict[str, Any]:
    """The namespace's Events by reason (with their counts), and the EndpointUnhealthy
    ones by what the failed probe was doing: with no backend killed yet, these say how
    often endpoints flapped and why."""
    from kubernetes.client.exceptions import ApiException

    try:
        items = retrying(core.list_namespaced_event, namespace, _request_timeout=60).items
    except (ApiException, OSError) as exc:
        return {"error": repr(exc)[:200]}
    reasons: collections.Counter[str] = collections.Counter()
    unhealthy: collections.Counter[str] = collections.Counter()
    for e in items:
        reasons[e.reason or ""] += e.count or 1
        if e.reason == "EndpointUnhealthy":
            # "... is Unhealthy after ...: GET /health on host:port: timed out after 1s while connecting"
            unhealthy[(e.message or "").rsplit(": ", 1)[-1]] += e.count or 1
    return {"by_reason": dict(reasons.most_common()), "endpoint_unhealthy_by_failure": dict(unhealthy.most_common(8))}


def cpu_window(ops: list[Operator], seconds: float, backends: dict[str, Backends] | None = None) -> dict[str, Any]:
    """CPU and RSS of the operators (and of the backend processes) over `seconds`."""
    me = os.getpid()
    pids = {op.identity: op.pid for op in ops if op.running()}
    served = {k: b.proc.pid for k, b in (backends or {}).items() if b.proc is not None}
    before = {k: proc_cpu_seconds(p) for k, p in (pids | served).items()}
    answered = {k: b.served() for k, b in (backends or {}).items() if b.proc is not None}
    h0, t0, l0 = proc_cpu_seconds(me), time.monotonic(), loadavg()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    probes = {}  # per backend process: probes answered per second, and new connections per probe
    for k, counts in answered.items():
        now = backends[k].served() if backends else counts
        requests, connections = now["requests"] - counts["requests"], now["connections"] - counts["connections"] - 1
        probes[k] = {
            "per_second": round(requests / dt, 1),
            "connections_per_probe": round(connections / max(1, requests), 3),
        }

    def share(group: dict[str, int]) -> dict[str, float]:
        return {k: round(100 * (proc_cpu_seconds(p) - before[k]) / dt, 1) for k, p in group.items()}

    return {
        "seconds": round(dt, 1),
        "cpu_percent_of_core": share(pids),
        "rss_mib": {k: proc_rss_mib(p) for k, p in pids.items()},
        "harness_cpu_percent_of_core": round(100 * (proc_cpu_seconds(me) - h0) / dt, 1),
        "backends_cpu_percent_of_core": share(served),
        "backend_probes": probes,
        "loadavg_before": l0,
        "loadavg_after": loadavg(),
    }


def run(n: int, args: argparse.Namespace, state: Any, client: Any, work: Path) -> dict[str, Any]:
    import kubernetes

    from backends import free_port

    def log(msg: str) -> None:
        print(f"[scale {n}] {msg}", file=sys.stderr, flush=True)

    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    stamp = int(time.time()) % 100000

    class Cur:
        """The namespace of the current create/delete cycle (a fresh one per cycle, so what
        one cycle left behind neither counts again nor conflicts with the next) and its watch."""

        namespace = ""
        watch: PoolWatch

        @classmethod
        def next(cls, cycle: int) -> None:
            if cls.namespace:
                cls.watch.stop()
            cls.namespace = f"scale-{n}-{stamp}-c{cycle}"
            retrying(core.create_namespace, {"metadata": {"name": cls.namespace}})
            cls.watch = PoolWatch(client, cls.namespace)

    prefix = args.address_prefix
    hosts = [f"{prefix}.{2 + i}" for i in range(ENDPOINTS)]
    port = free_port(hosts[0])
    shared = Backends(hosts[:1], port).start()
    others = Backends(hosts[1:], port).start()
    ops: list[Operator] = []
    profile: Profile | None = None
    mw: MetricsWatch | None = None
    Cur.next(1)
    names = [f"pool-{i:04d}" for i in range(n)]
    result: dict[str, Any] = {
        "pools": n,
        "replicas": args.replicas,
        "operator_args": args.operator_arg,
        "profiled": bool(args.profile),
        "namespace": Cur.namespace,
        "loadavg_start": loadavg(),
    }
    pool_exec = concurrent.futures.ThreadPoolExecutor(args.harness_threads)

    def create(name: str) -> None:
        body = pool_body(name, hosts, port)
        retrying(custom.create_namespaced_custom_object, GROUP, VERSION, Cur.namespace, PLURAL, body, done_on=(409,))

    def delete(name: str) -> bool:
        """Whether the delete request was accepted (a refusal is recorded, not raised: the
        run's figures so far are worth keeping)."""
        try:
            call = custom.delete_namespaced_custom_object
            retrying(call, GROUP, VERSION, Cur.namespace, PLURAL, name, done_on=(404,))
        except Exception as exc:
            log(f"delete {name}: {exc!r}"[:300])
            return False
        return True

    def create_all() -> tuple[float, float]:
        with Cur.watch.cond:
            Cur.watch.ready_at.clear()
        t0 = time.monotonic()
        list(pool_exec.map(create, names))
        t_last = time.monotonic()
        return t0, t_last

    def wait_ready(t_last: float) -> dict[str, Any]:
        ok = Cur.watch.wait(lambda: len(Cur.watch.ready_at) >= n, args.ready_timeout)
        with Cur.watch.cond:
            times = sorted(Cur.watch.ready_at.values())
        return {
            "all_ready": ok,
            "ready_count": len(times),
            "all_ready_after_last_create_seconds": round(times[-1] - t_last, 2) if ok else None,
            "p50_ready_after_last_create_seconds": round(pct([t - t_last for t in times], 0.5), 2) if times else None,
        }

    def delete_all() -> dict[str, Any]:
        t0 = time.monotonic()
        refused = [n for n, ok in zip(names, pool_exec.map(delete, names), strict=True) if not ok]
        issued = time.monotonic() - t0
        ok = Cur.watch.wait(lambda: not (Cur.watch.exists & set(names)), args.delete_timeout)
        took = time.monotonic() - t0
        time.sleep(2)  # let a straggling apply land, if any would
        left = leftovers(client, Cur.namespace)
        time.sleep(args.settle)  # a cleanup that outlived its pool's finalizer may still remove some
        return {
            "all_deleted": ok,
            "delete_all_seconds": round(took, 2) if ok else None,
            "harness_delete_requests_seconds": round(issued, 2),
            "delete_requests_refused": len(refused),
            "left_behind": left,
            f"left_behind_after_{args.settle:g}s_more": leftovers(client, Cur.namespace),
        }

    try:
        for r in range(args.replicas):
            ident = f"rep-{r}"
            mt = Path(args.memtrace) / f"{n}-{ident}" if args.memtrace else None
            ops.append(Operator(state.kubeconfig, work, ident, mt, args.memtrace_frames, tuple(args.operator_arg)))
        result["operator_command"] = [Path(ops[0].cmd[0]).name, *ops[0].cmd[1:]]
        mw = MetricsWatch(ops, args.scrape_seconds)
        time.sleep(3)
        result["rss_idle_before_mib"] = {op.identity: proc_rss_mib(op.pid) for op in ops}
        if args.memtrace:
            result["memtrace_idle"] = ops[0].memory_dump()

        # 1. create, all Ready
        log(f"creating {n} pools")
        api_created = api_writes(client)
        t0, t_last = create_all()
        result["harness_create_seconds"] = round(t_last - t0, 2)
        result["harness_create_per_second"] = round(n / max(t_last - t0, 1e-9), 1)
        ready = wait_ready(t_last)
        result.update(ready)
        log(f"ready: {ready}")
        if not ready["all_ready"]:
            log(f"not all Ready within {args.ready_timeout}s; measuring anyway")

        # 2. steady CPU and RSS
        time.sleep(args.settle)
        api_settled = api_writes(client)
        result["api_writes_create_to_settled"] = api_writes_between(api_created, api_settled)
        if args.drain_timeout > 0:
            result["writes_drained_after_settle"] = drain_writes(ops, args.drain_timeout)
            result["writes_drained_after_settle"]["api_writes"] = api_writes_between(api_settled, api_writes(client))
            log(f"write backlog: {result['writes_drained_after_settle']}")
        if args.profile:
            profile = Profile(ops[0].pid, work / "profile.raw", args.profile_rate)
            time.sleep(1)
        log(f"steady window {args.steady}s")
        with Cur.watch.cond:
            changes_before = dict(Cur.watch.driven_changes)
        with concurrent.futures.ThreadPoolExecutor(1) as one:
            latency = one.submit(backend_latency, hosts[1], port, time.monotonic() + args.steady)
            result["steady"] = cpu_window(ops, args.steady, {"shared": shared, "others": others})
            result["steady"]["backend_latency"] = latency.result()
        with Cur.watch.cond:
            flapped = [k for k, v in Cur.watch.driven_changes.items() if v > changes_before.get(k, 0)]
            result["driven_by"] = {
                "pools_showing_drivenBy": sum(v is not None for v in Cur.watch.driven_by.values()),
                "by_identity": dict(collections.Counter(str(v) for v in Cur.watch.driven_by.values())),
                # with every replica alive, a pool whose drivenBy changes is driven by two
                "pools_changing_drivenBy_in_steady_window": len(flapped),
            }
        result["steady"]["events_until_now"] = events_by_reason(core, Cur.namespace)
        log(f"steady: {result['steady']}")
        if args.memtrace:  # what the pools hold: compare with the idle snapshot
            result["memtrace_steady"] = ops[0].memory_dump()

        # 3. kill one replica, takeover
        if args.kill_one and len(ops) > 1:
            victim = ops[-1]
            with Cur.watch.cond:
                before = dict(Cur.watch.driven_by)
            moved = [k for k, v in before.items() if v is not None and victim.identity in v]
            tk = time.monotonic()
            victim.stop(kill=True)
            log(f"SIGKILLed {victim.identity}; {len(moved)} pools showed it in status.drivenBy")
            take: dict[str, Any] = {"killed": victim.identity, "pools_driven_by_killed": len(moved)}
            if not any(v is not None for v in before.values()):
                take["takeover_seconds"] = None
                take["note"] = "no pool shows status.drivenBy (sharding not in this build)"
            else:

                def moved_away() -> bool:
                    return all(
                        Cur.watch.driven_changed_at.get(k, 0) > tk
                        and victim.identity not in str(Cur.watch.driven_by.get(k))
                        for k in moved
                    )

                ok = Cur.watch.wait(moved_away, args.takeover_timeout)
                with Cur.watch.cond:
                    times = [
                        Cur.watch.driven_changed_at[k] - tk for k in moved if Cur.watch.driven_changed_at.get(k, 0) > tk
                    ]
                take["takeover_seconds"] = round(max(times), 2) if ok and times else None
                take["takeover_p50_seconds"] = round(pct(times, 0.5), 2) if times else None
                take["pools_moved"] = len(times)
                take["completed"] = ok
            result["kill_one"] = take
            log(f"takeover: {take}")

        # 4. kill the shared backend, detection
        time.sleep(args.random_offset_seconds)
        with Cur.watch.cond:
            Cur.watch.unhealthy_at.clear()
            Cur.watch.armed = time.monotonic()
        writes_at_kill = write_counters(ops)
        api_at_kill = api_writes(client)
        shared.kill()
        t_kill = Cur.watch.armed
        assert t_kill is not None
        log("shared backend SIGKILLed; waiting for every pool to show ep-0 Unhealthy")
        lk = loadavg()
        ok = Cur.watch.wait(lambda: len(Cur.watch.unhealthy_at) >= n, args.detect_timeout)
        with Cur.watch.cond:
            det = sorted(t - t_kill for t in Cur.watch.unhealthy_at.values())
            Cur.watch.armed = None
        result["detection"] = {
            "floor_seconds": FLOOR,
            "detected": len(det),
            "all_detected": ok,
            "p50_seconds": round(pct(det, 0.5), 2) if det else None,
            "p99_seconds": round(pct(det, 0.99), 2) if det else None,
            "max_seconds": round(det[-1], 2) if det else None,
            "min_seconds": round(det[0], 2) if det else None,
            "p99_over_floor": round(pct(det, 0.99) / FLOOR, 2) if det else None,
            "loadavg_at_kill": lk,
            "loadavg_after": loadavg(),
            "writes_waiting_at_kill": writes_at_kill["waiting"],
            "writes_sent_until_detected": writes_between(writes_at_kill, write_counters(ops)),
            "api_writes_until_detected": api_writes_between(api_at_kill, api_writes(client)),
        }
        log(f"detection: {result['detection']}")
        if profile is not None:
            result["profile_seconds"] = round(profile.stop(), 1)
            result["profile_covers"] = "from all Ready + settle through the steady window and the kill to detection"
            profile = None
        result["metrics"] = mw.summary()  # before the delete, which removes the pools' series
        result["rss_after_detection_mib"] = {op.identity: proc_rss_mib(op.pid) for op in ops if op.running()}
        with contextlib.suppress(Exception):
            result["events_in_namespace"] = len(core.list_namespaced_event(Cur.namespace).items)
        shared = Backends(hosts[:1], port).start()

        # 5. delete all
        log("deleting all pools")
        result["delete"] = delete_all()
        log(f"delete: {result['delete']}")
        cycles = [
            {
                "cycle": 1,
                "rss_after_delete_mib": {op.identity: proc_rss_mib(op.pid) for op in ops if op.running()},
                "all_ready_after_last_create_seconds": ready["all_ready_after_last_create_seconds"],
                "delete_all_seconds": result["delete"]["delete_all_seconds"],
                "left_behind": result["delete"]["left_behind"],
                "left_behind_later": result["delete"][f"left_behind_after_{args.settle:g}s_more"],
            }
        ]
        if args.memtrace:
            cycles[-1]["memtrace"] = ops[0].memory_dump()
        log(f"cycle 1: {cycles[-1]}")

        # 6. more create/delete cycles
        for c in range(2, args.cycles + 1):
            Cur.next(c)
            t0, t_last = create_all()
            rd = wait_ready(t_last)
            time.sleep(args.settle)
            rss_loaded = {op.identity: proc_rss_mib(op.pid) for op in ops if op.running()}
            dl = delete_all()
            cycles.append(
                {
                    "cycle": c,
                    "harness_create_seconds": round(t_last - t0, 2),
                    "all_ready_after_last_create_seconds": rd["all_ready_after_last_create_seconds"],
                    "rss_loaded_mib": rss_loaded,
                    "delete_all_seconds": dl["delete_all_seconds"],
                    "left_behind": dl["left_behind"],
                    "left_behind_later": dl[f"left_behind_after_{args.settle:g}s_more"],
                    "rss_after_delete_mib": {op.identity: proc_rss_mib(op.pid) for op in ops if op.running()},
                    "loadavg": loadavg(),
                }
            )
            if args.memtrace:
                cycles[-1]["memtrace"] = ops[0].memory_dump()
            log(f"cycle {c}: {cycles[-1]}")
        result["cycles"] = cycles
        if args.memtrace:  # would glibc give memory back if asked? (evidence for malloc_trim, or not)
            result["memtrace_trim"] = ops[0].memory_dump(signal.SIGUSR2)
        result["metrics"]["event_loop_lag_exported"] = mw.summary()["event_loop_lag_exported"]
        result["watch_events_seen_last_cycle"] = Cur.watch.events
        result["loadavg_end"] = loadavg()
        result["operators_exited_early"] = [op.identity for op in ops if not op.running()]
        result["operator_log_warnings"] = {op.identity: log_warnings(op.log) for op in ops}
    finally:
        if profile is not None:
            profile.stop()
        if mw is not None:
            mw.stop()
        Cur.watch.stop()
        pool_exec.shutdown(wait=False, cancel_futures=True)
        for op in ops:
            op.stop()
        shared.kill()
        others.kill()
    if args.profile and (work / "profile.raw").exists():
        out_dir = RESULTS / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"scale-{n}-{time.strftime('%Y%m%dT%H%M', time.gmtime())}"
        raw = out_dir / f"{stem}.raw.txt.gz"
        with (work / "profile.raw").open("rb") as src, gzip.open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst)
        result["profile"] = summarize_profile(work / "profile.raw", out_dir / f"{stem}.speedscope.json")
        result["profile"]["raw"] = str(raw.relative_to(ROOT))
        result["profile"]["speedscope"] = str((out_dir / f"{stem}.speedscope.json").relative_to(ROOT))
        result["profile"]["rate_hz"] = args.profile_rate
        result["profile"]["tool"] = "py-spy 0.4.3 record --format raw (blocking sampler; idle threads excluded)"
        (out_dir / f"{stem}.summary.txt").write_text(profile_text(result["profile"]))
    return result


def profile_text(p: dict[str, Any]) -> str:
    lines = [f"{p['samples']} samples; {p['samples_waiting_in_read_or_select']} with a blocking read/select as leaf"]
    lines += ["", "by cause: all samples | samples without a blocking read/select leaf"]
    lines += [
        f"  {row['percent']:5.1f}% {row['samples']:6d} | {row['percent_of_non_waiting']:5.1f}% "
        f"{row['samples_not_waiting']:6d}  {row['cause']}"
        for row in p["by_cause"]
    ]
    lines += ["", "inclusive components, samples without a blocking read/select leaf (percent of those)"]
    lines += [
        f"  {row['percent_of_non_waiting']:5.1f}%  {row['samples']:6d}  {row['frame']}"
        for row in p["inclusive_components_excluding_waits"]
    ]
    for title, key in (
        ("groups (each sample to the first library/module found from the leaf up)", "groups_by_leaf"),
        ("inclusive components (a sample counts when any frame matches)", "inclusive_components"),
        ("top frames, self", "top_self"),
        ("top frames, inclusive", "top_inclusive"),
    ):
        lines += ["", title]
        lines += [f"  {row['percent']:5.1f}%  {row['samples']:6d}  {row['frame']}" for row in p[key]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- results


def merge_results(new_runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Append to bench/results/scale.json: every measured run is kept (with its date, commit
    and load average), so a repeat on a disturbed machine sits next to the first try."""
    path = RESULTS / "scale.json"
    old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs = [*old.get("runs", []), *({**meta, **r} for r in new_runs if not r.get("harness_only"))]
    harness = [*old.get("harness_only", []), *({**meta, **r} for r in new_runs if r.get("harness_only"))]
    out = {
        "benchmark": "scale: N pools of 10 static loopback HTTP endpoints, interval 5 s, threshold 2; "
        "one backend shared by every pool SIGKILLed; one or more operator processes",
        "floor_seconds": FLOOR,
        "note": "runs are appended in the order measured; each carries its date, commit, load average and "
        "machine; a profiled run's figures are disturbed by the sampler (compare unprofiled runs only)",
        "runs": runs,
        "harness_only": harness,
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def plot(results: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -r bench/requirements.txt)", file=sys.stderr)
        return None
    latest: dict[int, dict[str, Any]] = {}  # the latest unprofiled one-replica run per pool count
    for r in results["runs"]:
        if (
            r["replicas"] == 1
            and not r["profiled"]
            and not r.get("quick")
            and (r.get("detection") or {}).get("p50_seconds") is not None
        ):
            latest[r["pools"]] = r
    if not latest:
        return None
    runs = [latest[k] for k in sorted(latest)]
    xs = [r["pools"] for r in runs]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for k, label, style in (("p50_seconds", "p50", "o-"), ("p99_seconds", "p99", "s-"), ("max_seconds", "max", "^--")):
        ax.plot(xs, [r["detection"][k] for r in runs], style, label=f"detection {label}")
    ax.axhline(FLOOR, color="grey", linestyle=":", label=f"floor ({INTERVAL} s x {THRESHOLD})")
    ax.axhline(FLOOR + 2, color="green", linestyle=":", label="goal p99 (floor + 2 s)")
    ax.set_xlabel("pools (10 endpoints each) on one operator")
    ax.set_ylabel("seconds from kill to status Unhealthy")
    ax.set_xticks(xs)
    ax.set_ylim(bottom=0)
    commits = sorted({str(r.get("operator_commit") or r.get("git_commit")) for r in runs})
    load = max((r["detection"].get("loadavg_at_kill") or [0])[0] for r in runs)  # 1-minute
    ax.set_title(
        f"Detection vs pools, operator at {', '.join(commits)} (2 cores, 1-min load avg at the kill <= {load:.1f})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = ROOT / "docs" / "scale-detection.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- main


def harness_only(n: int, args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """The harness's own speed: create and delete n pools through the same thread pool with
    no operator running (no finalizers, no status writes competing for the apiserver)."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    namespace = f"harness-{n}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    hosts = [f"{args.address_prefix}.{2 + i}" for i in range(ENDPOINTS)]
    names = [f"pool-{i:04d}" for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(args.harness_threads) as ex:
        t0 = time.monotonic()
        list(
            ex.map(
                lambda name: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, pool_body(name, hosts, 8080)
                ),
                names,
            )
        )
        created = time.monotonic() - t0
        t0 = time.monotonic()
        list(
            ex.map(lambda name: custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name), names)
        )
        deleted = time.monotonic() - t0
    out = {
        "pools": n,
        "harness_only": True,
        "threads": args.harness_threads,
        "create_seconds": round(created, 2),
        "creates_per_second": round(n / created, 1),
        "delete_seconds": round(deleted, 2),
        "deletes_per_second": round(n / deleted, 1),
        "loadavg": loadavg(),
    }
    print(f"[harness {n}] {out}", file=sys.stderr, flush=True)
    return out


def install_crd(client: Any) -> None:
    """The CRD from crds/, through the API (no kubectl needed), then wait for Established."""
    import kubernetes
    import yaml

    ext = kubernetes.client.ApiextensionsV1Api(client)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                ext.create_custom_resource_definition(doc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conds = (crd.status.conditions if crd.status else None) or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return
        time.sleep(0.2)
    raise SystemExit("the ClusterPool CRD never became Established")


LOG_LINE = re.compile(r"^\[[^]]+\] \S+\s+\[(WARNING|ERROR|CRITICAL)\s*\] (?:\[[^]]+\] )?(.*)$")


def log_warnings(path: Path, top: int = 10) -> dict[str, int]:
    """The operator's WARNING and ERROR lines, counted by message with numbers folded
    (pool names, addresses, durations): what a user reading its log would see repeated."""
    counts: collections.Counter[str] = collections.Counter()
    with path.open(errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line)
            if m:
                counts[f"{m.group(1)} {re.sub(r'[0-9]+', 'N', m.group(2))[:160]}"] += 1
    return dict(counts.most_common(top))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_backends":
        asyncio.run(_serve(sys.argv[3:], int(sys.argv[2])))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "summarize":  # re-read a stored profile
        src = Path(sys.argv[2])
        text = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "raw").write_bytes(text)
            print(profile_text(summarize_profile(Path(tmp) / "raw", Path(tmp) / "speedscope.json")), end="")
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="100,300,1000", help="comma-separated pool counts (default 100,300,1000)")
    p.add_argument("--cycles", type=int, default=5, help="create/delete cycles per pool count (default 5)")
    p.add_argument("--replicas", type=int, default=1, help="operator processes, --identity rep-<i>")
    p.add_argument("--kill-one", action="store_true", help="SIGKILL one replica after Ready; measure takeover")
    p.add_argument("--profile", action="store_true", help="py-spy the (first) operator from Ready to detection")
    p.add_argument("--profile-rate", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="50 pools, 1 cycle, short windows")
    p.add_argument("--steady", type=float, default=30.0, help="CPU window in seconds (default 30)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after Ready / after delete (default 10)")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="after Ready + settle, wait up to this long for the operators' write backlog to empty before "
        "the steady window and the kill (0: do not wait)",
    )
    p.add_argument("--detect-timeout", type=float, default=240.0)
    p.add_argument("--delete-timeout", type=float, default=300.0)
    p.add_argument("--takeover-timeout", type=float, default=120.0)
    p.add_argument("--random-offset-seconds", type=float, default=1.3, help="pause before the kill")
    p.add_argument("--harness-threads", type=int, default=16)
    p.add_argument(
        "--scrape-seconds",
        type=float,
        default=30.0,
        help="how often the operator's /metrics is read (default 30, as a Prometheus would; rendering it "
        "costs the operator CPU that grows with pools x endpoints)",
    )
    p.add_argument(
        "--address-prefix",
        default="127.0.0",
        help="backends on <prefix>.2-11 (default 127.0.0; 198.18.0 inside scripts/netns-run publishes EndpointSlices)",
    )
    p.add_argument(
        "--harness-only", action="store_true", help="no operator: how fast the harness alone creates/deletes pools"
    )
    p.add_argument("--no-save", action="store_true", help="print, do not write bench/results/scale.json")
    p.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every operator (repeatable), e.g. --operator-arg=--give-back-seconds=0",
    )
    p.add_argument(
        "--memtrace",
        metavar="DIR",
        help="run the (first) operator under bench/memtrace.py: tracemalloc snapshots into DIR/<pools>-rep-0/ "
        "when idle, after the steady window and after each cycle's delete + settle "
        "(compare them with `memtrace.py compare A B`); "
        "slows the operator: for memory figures only",
    )
    p.add_argument(
        "--memtrace-frames",
        type=int,
        default=12,
        help="frames tracemalloc keeps per allocation with --memtrace; 0: no tracing (no snapshots, full "
        "speed), only the counters (RSS, glibc's heaps, pymalloc's arenas, object counts by type)",
    )
    args = p.parse_args()
    if args.quick:
        args.pools, args.cycles, args.steady, args.settle = "50", 1, 10.0, 3.0
    if args.address_prefix.startswith("198.18") and os.environ.get("CLUSTERPOOL_NETNS") != "1":
        print("198.18.0.x backends need scripts/netns-run")
        return 2
    counts = [int(x) for x in args.pools.split(",") if x.strip()]

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A background job of a non-interactive shell starts with SIGINT ignored: take both, so
    # the finally blocks stop the operator, the backends and the control plane.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    import kubernetes

    import controlplane

    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "operator_commit": operator_commit(),
        "bench_script_sha1": hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12],
        "cpu_cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "cycles_requested": args.cycles,
        "steady_window_seconds": args.steady,
        "endpoints_per_pool": ENDPOINTS,
        "intervalSeconds": INTERVAL,
        "unhealthyThreshold": THRESHOLD,
        "backend_addresses": f"{args.address_prefix}.2-11 (ep-0 = .2 shared and killed)",
        "quick": args.quick,
    }
    state_dir = Path(tempfile.mkdtemp(prefix="cp-scale-"))
    global SNAPSHOT
    SNAPSHOT = state_dir / "scale_bench_snapshot.py"
    shutil.copy(__file__, SNAPSHOT)
    runs = []
    try:
        state = controlplane.up(state_dir)
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=state.kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = args.harness_threads + 8
        client = kubernetes.client.ApiClient(cfg)
        install_crd(client)
        for n in counts:
            if args.harness_only:
                runs.append(harness_only(n, args, client))
                continue
            work = state_dir / f"run-{n}"
            work.mkdir()
            runs.append(run(n, args, state, client, work))
            print(json.dumps(runs[-1], indent=2), flush=True)
    finally:
        controlplane.down(state_dir)
    if args.no_save:
        return 0
    results = merge_results(runs, meta)
    png = plot(results)
    if png is not None:
        print(f"plot: {png.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
