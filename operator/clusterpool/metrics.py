"""Prometheus metrics of the operator (`--metrics http://0.0.0.0:9090/metrics`).

Pool and endpoint gauges are read from the status each pool renders every round, so the
metrics and `kubectl describe` never disagree; Events are counted as they are emitted. A
deleted pool's series are removed, and so are those of endpoints that leave a pool.

The per-pool series are not prometheus_client metrics: at 1,000 pools of 10 endpoints
one child object per series took 42 MiB, and formatting the 66,000 lines took 0.6-1 s
per scrape on the thread that serves it, holding the GIL the event loop needs
(bench/metrics_bench.py). Each pool keeps what its last status said as a tuple and the
text it rendered from it; a scrape renders only what changed and joins the rest.

    clusterpool_pool_ready{namespace,pool}                       1 when Ready=True
    clusterpool_pool_endpoints{namespace,pool,state}             total | healthy | eligible | ejected
    clusterpool_pool_panic{namespace,pool}                       1 in panic mode
    clusterpool_pool_discovery_degraded{namespace,pool}          1 while DiscoveryDegraded is True
    clusterpool_pool_active_tier{namespace,pool}
    clusterpool_endpoint_healthy{namespace,pool,endpoint}        1 Healthy or Degraded, 0 otherwise
    clusterpool_endpoint_eligible{namespace,pool,endpoint}       1 when clients may use it
    clusterpool_endpoint_breaker_open{namespace,pool,endpoint}   0 Closed, 0.5 HalfOpen, 1 Open
    clusterpool_endpoint_probe_latency_seconds{...}              a recent probe's latency
    clusterpool_cache_reachable{namespace,pool}                  Redis answers (Redis, Layered)
    clusterpool_cache_latency_seconds{namespace,pool}            PING round trip
    clusterpool_cache_keys{namespace,pool}                       keys of the current version
    clusterpool_events_total{namespace,pool,type,reason}         Events emitted
    clusterpool_round_duration_seconds{namespace,pool}           one round: probe, publish, status
    clusterpool_kubernetes_api_reachable                         the operator-wide API check
    clusterpool_event_loop_lag_seconds                           how late the event loop runs timers
    clusterpool_gc_pause_seconds{generation}                     Python's garbage collections: each stops
                                                                 every thread, the event loop's too
    clusterpool_memory_give_back_seconds                         one malloc_trim(0): freed memory given back
                                                                 to the system (every 30 s, after deletes)
    clusterpool_probes_late_total                                probes not counted: the operator was too late
                                                                 to read their answer (an overloaded operator)
    clusterpool_shard_members                                    live replicas in this replica's view
    clusterpool_shard_membership_changes_total                   changes of that set (pools handed over)
    clusterpool_operator_remembered{holder}                      pools (or their objects) each part of the
                                                                 operator keeps state for: 0 once all are gone
    clusterpool_kubernetes_writes_total{lane}                    writes sent to the API server, by lane
                                                                 (health: status, slices, routing; info: the rest)
    clusterpool_kubernetes_write_backlog{lane}                   objects whose write waits for a worker
    clusterpool_kubernetes_write_conflicts_total{object}         writes refused for a stale resourceVersion
                                                                 (status: re-read; published: applied again)
    clusterpool_published_objects_found_total{state}             published objects a listing found stored
                                                                 as_applied (kept, not applied again) or
                                                                 changed_by_others (applied again)
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import http.server
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clusterpool.core.status import DISCOVERY_DEGRADED

__all__ = ["REGISTRY", "Metrics", "PoolMetrics", "serve"]

BREAKER = {"Closed": 0.0, "HalfOpen": 0.5, "Open": 1.0}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format every Prometheus reads


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.api = Gauge(
            "clusterpool_kubernetes_api_reachable", "1 while the Kubernetes API answers", registry=registry
        )
        self.api.set(1)
        self.loop_lag = Histogram(
            "clusterpool_event_loop_lag_seconds",
            "How late a timer on the operator's event loop fires (sampled every 0.25 s)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.gc_pause = Histogram(
            "clusterpool_gc_pause_seconds",
            "Duration of one garbage collection of Python objects, by generation (all threads wait)",
            ("generation",),
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.give_back = Histogram(
            "clusterpool_memory_give_back_seconds",
            "Duration of one malloc_trim(0), giving freed memory back to the system (in a worker thread; "
            "threads that allocate meanwhile may wait for it)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        self.loop_lag_max = Gauge(
            "clusterpool_event_loop_lag_max_seconds", "The largest lag of the last 10 s", registry=registry
        )
        self.shard_members = Gauge(
            "clusterpool_shard_members", "Live operator replicas in this replica's view", registry=registry
        )
        self.late_probes = Counter(
            "clusterpool_probes_late",
            "Probes not counted: the operator was too busy to read the answer in time (the deadline fired "
            "late by more than the time still to be given back, and over 0.5 s late or with the answer "
            "received and unread); the endpoint kept its health",
            registry=registry,
        )
        self.shard_changes = Counter(
            "clusterpool_shard_membership_changes",
            "Changes of the live replicas in this replica's view: each one hands pools over",
            registry=registry,
        )
        self._remembered = _Remembered()
        registry.register(self._remembered)
        self._writes = _Writes()
        registry.register(self._writes)
        self._exported: dict[tuple[str, str], PoolMetrics] = {}  # pools with series (PoolMetrics adds, forget removes)

    async def watch_loop_lag(self, every: float = 0.25, window: float = 10.0) -> None:
        """Sample the event loop's lag: everything the operator does shares this loop, so
        its lag is the delay every probe, wake-up and write sees on top of its own."""
        worst, started = 0.0, time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(every)
            lag = max(0.0, time.monotonic() - before - every)
            self.loop_lag.observe(lag)
            worst = max(worst, lag)
            if time.monotonic() - started >= window:
                self.loop_lag_max.set(worst)
                worst, started = 0.0, time.monotonic()

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection from now on; returns what stops that."""
        started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)

    def shards_changed(self, members: tuple[str, ...]) -> None:
        """The live replicas changed (Shards calls this): pools move to or from this one."""
        self.shard_members.set(len(members))
        self.shard_changes.inc()

    def count_remembered(self, sizes: Callable[[], Mapping[str, int]]) -> None:
        """Export `sizes()` (holder -> how many pools or pool objects it keeps state for)
        as clusterpool_operator_remembered{holder}, read at each scrape."""
        self._remembered.sizes = sizes

    def count_writes(
        self,
        sent: Callable[[], Mapping[str, int]],
        waiting: Callable[[], Mapping[str, int]],
        conflicts: Callable[[], Mapping[str, int]],
        found: Callable[[], Mapping[str, int]],
    ) -> None:
        """Export the write queue's writes sent and waiting, per lane, the writes refused
        for a stale version, per object (status, published), and the published objects
        found stored as applied or changed by others, read at each scrape."""
        self._writes.sent, self._writes.waiting, self._writes.conflicts = sent, waiting, conflicts
        self._writes.found = found

    def pool(self, namespace: str, name: str) -> PoolMetrics:
        return PoolMetrics(self, namespace, name)

    def pools_exported(self) -> int:
        """Pools that have series."""
        return len(self._exported)

    def exposition(self) -> bytes:
        """The text of a scrape: the registry's series, then every pool's."""
        return generate_latest(self.registry) + _render_pools(list(self._exported.values())).encode()

    # the operator-wide API check calls these (k8s.client.watch_api)
    def api_down(self, exc: BaseException) -> None:
        self.api.set(0)

    def api_up(self) -> None:
        self.api.set(1)


GAUGES = (  # the pool series read from the status, in the order they are exposed
    ("clusterpool_pool_ready", "1 when the pool's Ready condition is True"),
    ("clusterpool_pool_endpoints", "Endpoints of the pool by state"),
    ("clusterpool_pool_panic", "1 while the pool routes to every endpoint of its tier"),
    ("clusterpool_pool_discovery_degraded", "1 while the pool's DiscoveryDegraded condition is True"),
    ("clusterpool_pool_active_tier", "The priority tier that serves"),
    ("clusterpool_endpoint_healthy", "1 when the endpoint's probes pass"),
    ("clusterpool_endpoint_eligible", "1 when clients may use the endpoint"),
    ("clusterpool_endpoint_breaker_open", "The endpoint's breaker: 0 Closed, 0.5 HalfOpen, 1 Open"),
    ("clusterpool_endpoint_probe_latency_seconds", "A recent probe's latency (from status)"),
    ("clusterpool_cache_reachable", "1 while the pool's Redis answers"),
    ("clusterpool_cache_latency_seconds", "Round trip of a PING to the pool's Redis"),
    ("clusterpool_cache_keys", "Keys of the current cache version"),
)
EVENTS = ("clusterpool_events", "Kubernetes Events emitted")
ROUNDS = ("clusterpool_round_duration_seconds", "Duration of one pool round: probe, publish, status")
ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_Values = tuple[tuple[str, str, float], ...]  # (family, extra labels rendered, value)


class PoolMetrics:
    """One pool's series: what its last status said, its Events, its round durations.

    Written on the event loop, read by the scrape's thread: every field is replaced
    whole, never changed in place."""

    def __init__(self, metrics: Metrics, namespace: str, name: str) -> None:
        self.m, self.key = metrics, (namespace, name)
        self.labels = f'namespace="{_escape(namespace)}",pool="{_escape(name)}"'
        self.state: _Values = ()  # what the status said, all but the latencies (they move every round)
        self.latencies: _Values = ()
        self.events: dict[tuple[str, str], int] = {}
        self.rounds: tuple[tuple[int, ...], float] = ((0,) * (len(ROUND_BUCKETS) + 1), 0.0)  # per bucket, sum
        self._text: tuple[_Values, _Values, dict[str, str]] = ((), (), {})  # rendered from (state, latencies)

    def status(self, status: Mapping[str, Any]) -> None:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        values: list[tuple[str, str, float]] = [
            ("clusterpool_pool_ready", "", 1 if conditions.get("Ready") == "True" else 0),
            *(("clusterpool_pool_endpoints", f',state="{s}"', int(status.get(s) or 0)) for s in STATES),
            ("clusterpool_pool_panic", "", 1 if status.get("panic") else 0),
            ("clusterpool_pool_discovery_degraded", "", 1 if conditions.get(DISCOVERY_DEGRADED) == "True" else 0),
            ("clusterpool_pool_active_tier", "", int(status.get("activeTier") or 0)),
        ]
        latencies: list[tuple[str, str, float]] = []
        for e in status.get("endpoints") or []:
            endpoint = f',endpoint="{_escape(str(e.get("name")))}"'
            values.append(("clusterpool_endpoint_healthy", endpoint, 1 if e.get("health") in HEALTHY else 0))
            values.append(("clusterpool_endpoint_eligible", endpoint, 1 if e.get("eligible") else 0))
            values.append(("clusterpool_endpoint_breaker_open", endpoint, BREAKER.get(str(e.get("breaker")), 0.0)))
            latency = e.get("lastProbeLatencyMilliseconds")
            if latency is not None:
                latencies.append(("clusterpool_endpoint_probe_latency_seconds", endpoint, latency / 1000))
        cache = status.get("cache")
        if cache is not None and cache.get("reachable") is not None:
            values.append(("clusterpool_cache_reachable", "", 1 if cache.get("reachable") else 0))
            if cache.get("latencyMicroseconds") is not None:
                values.append(("clusterpool_cache_latency_seconds", "", cache["latencyMicroseconds"] / 1e6))
            if cache.get("keys") is not None:
                values.append(("clusterpool_cache_keys", "", cache["keys"]))
        # a tuple equal to the last one is not stored: text() knows the last by identity
        if (state := tuple(values)) != self.state:
            self.state = state
        if (moved := tuple(latencies)) != self.latencies:
            self.latencies = moved
        self.m._exported[self.key] = self

    def event(self, type_: str, reason: str) -> None:
        key = (type_, reason)
        self.events = {**self.events, key: self.events.get(key, 0) + 1}
        self.m._exported[self.key] = self

    def late_probe(self) -> None:
        self.m.late_probes.inc()

    def round(self, seconds: float) -> None:
        counts, total = self.rounds
        i = bisect.bisect_left(ROUND_BUCKETS, seconds)
        self.rounds = ((*counts[:i], counts[i] + 1, *counts[i + 1 :]), total + seconds)
        self.m._exported[self.key] = self

    def forget(self) -> None:
        """The pool is gone (or no longer run here): drop all of its series."""
        if self.m._exported.get(self.key) is self:
            del self.m._exported[self.key]
        self.state, self.latencies, self.events = (), (), {}
        self.rounds = ((0,) * (len(ROUND_BUCKETS) + 1), 0.0)

    def text(self) -> dict[str, str]:
        """Family -> this pool's lines of it, rendered again only when the status moved."""
        state, latencies, text = self._text
        if state is self.state and latencies is self.latencies:
            return text
        state, latencies = self.state, self.latencies
        lines: dict[str, str] = collections.defaultdict(str)
        for family, extra, value in state + latencies:
            lines[family] += f"{family}{{{self.labels}{extra}}} {_number(value)}\n"
        self._text = (state, latencies, lines)
        return lines


STATES = ("total", "healthy", "eligible", "ejected")
HEALTHY = ("Healthy", "Degraded")


def _render_pools(pools: list[PoolMetrics]) -> str:
    """The text format (0.0.4) of the pools' series: every family once, with its lines."""
    out: list[str] = []
    texts = [p.text() for p in pools]
    for family, doc in GAUGES:
        out.append(f"# HELP {family} {doc}\n# TYPE {family} gauge\n")
        out.extend(t.get(family, "") for t in texts)
    name, doc = EVENTS
    out.append(f"# HELP {name}_total {doc}\n# TYPE {name}_total counter\n")
    for p in pools:
        for (type_, reason), n in p.events.items():
            out.append(f'{name}_total{{{p.labels},type="{_escape(type_)}",reason="{_escape(reason)}"}} {n}\n')
    name, doc = ROUNDS
    out.append(f"# HELP {name} {doc}\n# TYPE {name} histogram\n")
    bounds = [*(_number(b) for b in ROUND_BUCKETS), "+Inf"]
    for p in pools:
        counts, total = p.rounds
        below = 0
        for bound, n in zip(bounds, counts, strict=True):
            below += n
            out.append(f'{name}_bucket{{{p.labels},le="{bound}"}} {below}\n')
        out.append(f"{name}_count{{{p.labels}}} {below}\n{name}_sum{{{p.labels}}} {_number(total)}\n")
    return "".join(out)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"


Family = type[CounterMetricFamily] | type[GaugeMetricFamily]


def _by_label(
    kind: Family, name: str, doc: str, label: str, values: Mapping[str, int]
) -> CounterMetricFamily | GaugeMetricFamily:
    """One series per key of `values`, labelled `label`."""
    family = kind(name, doc, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family


class _Remembered(Collector):
    def __init__(self) -> None:
        self.sizes: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield _by_label(
            GaugeMetricFamily,
            "clusterpool_operator_remembered",
            "Pools (or their objects) the operator keeps state for, by holder; 0 once every pool is gone",
            "holder",
            self.sizes(),
        )


class _Writes(Collector):
    def __init__(self) -> None:
        self.sent: Callable[[], Mapping[str, int]] = dict
        self.waiting: Callable[[], Mapping[str, int]] = dict
        self.conflicts: Callable[[], Mapping[str, int]] = dict
        self.found: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield _by_label(
            CounterMetricFamily,
            "clusterpool_kubernetes_writes",
            "Writes sent to the Kubernetes API server, by lane",
            "lane",
            self.sent(),
        )
        yield _by_label(
            GaugeMetricFamily,
            "clusterpool_kubernetes_write_backlog",
            "Objects whose write waits for a worker, by lane",
            "lane",
            self.waiting(),
        )
        yield _by_label(
            CounterMetricFamily,
            "clusterpool_kubernetes_write_conflicts",
            "Writes the API server refused for a stale resourceVersion, by object (each written again)",
            "object",
            self.conflicts(),
        )
        yield _by_label(
            CounterMetricFamily,
            "clusterpool_published_objects_found",
            "Published objects a listing found stored as applied (kept) or changed by others (applied again)",
            "state",
            self.found(),
        )


def serve(url: str, metrics: Metrics) -> None:
    """Serve `metrics` on the host and port of `url` (any path answers), from a thread."""
    parts = urlsplit(url)
    if parts.port is None:
        raise ValueError(f"--metrics needs a port, e.g. http://0.0.0.0:9090/metrics (got {url})")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # a scrape is not news
            pass

    server = http.server.ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
