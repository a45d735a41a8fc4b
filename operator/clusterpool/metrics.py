"""Prometheus metrics of the operator (`--metrics http://0.0.0.0:9090/metrics`).

Pool and endpoint gauges are read from the status each pool renders every round, so the
metrics and `kubectl describe` never disagree; Events are counted as they are emitted. A
deleted pool's series are removed, and so are those of endpoints that leave a pool.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REGISTRY", "Metrics", "PoolMetrics", "serve"]

POOL = ("namespace", "pool")
ENDPOINT = ("namespace", "pool", "endpoint")
BREAKER = {"Closed": 0.0, "HalfOpen": 0.5, "Open": 1.0}


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = POOL) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.ready = gauge("clusterpool_pool_ready", "1 when the pool's Ready condition is True")
        self.endpoints = gauge("clusterpool_pool_endpoints", "Endpoints of the pool by state", (*POOL, "state"))
        self.panic = gauge("clusterpool_pool_panic", "1 while the pool routes to every endpoint of its tier")
        self.discovery_degraded = gauge(
            "clusterpool_pool_discovery_degraded", "1 while the pool's DiscoveryDegraded condition is True"
        )
        self.tier = gauge("clusterpool_pool_active_tier", "The priority tier that serves")
        self.healthy = gauge("clusterpool_endpoint_healthy", "1 when the endpoint's probes pass", ENDPOINT)
        self.eligible = gauge("clusterpool_endpoint_eligible", "1 when clients may use the endpoint", ENDPOINT)
        self.breaker = gauge(
            "clusterpool_endpoint_breaker_open", "The endpoint's breaker: 0 Closed, 0.5 HalfOpen, 1 Open", ENDPOINT
        )
        self.latency = gauge(
            "clusterpool_endpoint_probe_latency_seconds", "A recent probe's latency (from status)", ENDPOINT
        )
        self.cache_up = gauge("clusterpool_cache_reachable", "1 while the pool's Redis answers")
        self.cache_latency = gauge("clusterpool_cache_latency_seconds", "Round trip of a PING to the pool's Redis")
        self.cache_keys = gauge("clusterpool_cache_keys", "Keys of the current cache version")
        self.events = Counter(
            "clusterpool_events", "Kubernetes Events emitted", (*POOL, "type", "reason"), registry=registry
        )
        self.rounds = Histogram(
            "clusterpool_round_duration_seconds",
            "Duration of one pool round: probe, publish, status",
            POOL,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
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
        self._exported: set[tuple[str, str]] = set()  # pools with series (PoolMetrics adds, forget removes)

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
    ) -> None:
        """Export the write queue's writes sent and waiting, per lane, and the writes
        refused for a stale version, per object (status, published), read at each scrape."""
        self._writes.sent, self._writes.waiting, self._writes.conflicts = sent, waiting, conflicts

    def pool(self, namespace: str, name: str) -> PoolMetrics:
        return PoolMetrics(self, namespace, name)

    def pools_exported(self) -> int:
        """Pools that have series."""
        return len(self._exported)

    # the operator-wide API check calls these (k8s.client.watch_api)
    def api_down(self, exc: BaseException) -> None:
        self.api.set(0)

    def api_up(self) -> None:
        self.api.set(1)


class PoolMetrics:
    """One pool's series."""

    def __init__(self, metrics: Metrics, namespace: str, name: str) -> None:
        self.m, self.key = metrics, (namespace, name)
        self.endpoints: set[str] = set()
        self.events: set[tuple[str, str]] = set()
        self.cache = False

    def status(self, status: Mapping[str, Any]) -> None:
        m, key = self.m, self.key
        m._exported.add(key)
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        m.ready.labels(*key).set(1 if conditions.get("Ready") == "True" else 0)
        m.discovery_degraded.labels(*key).set(1 if conditions.get("DiscoveryDegraded") == "True" else 0)
        for state in ("total", "healthy", "eligible", "ejected"):
            m.endpoints.labels(*key, state).set(int(status.get(state) or 0))
        m.panic.labels(*key).set(1 if status.get("panic") else 0)
        m.tier.labels(*key).set(int(status.get("activeTier") or 0))
        seen = set()
        for e in status.get("endpoints") or []:
            name = str(e.get("name"))
            seen.add(name)
            labels = (*key, name)
            m.healthy.labels(*labels).set(1 if e.get("health") in ("Healthy", "Degraded") else 0)
            m.eligible.labels(*labels).set(1 if e.get("eligible") else 0)
            m.breaker.labels(*labels).set(BREAKER.get(str(e.get("breaker")), 0.0))
            latency = e.get("lastProbeLatencyMilliseconds")
            if latency is not None:
                m.latency.labels(*labels).set(latency / 1000)
        for gone in self.endpoints - seen:
            self._remove_endpoint(gone)
        self.endpoints = seen
        self._cache(status.get("cache"))

    def _cache(self, cache: Mapping[str, Any] | None) -> None:
        m, key = self.m, self.key
        if cache is None or cache.get("reachable") is None:
            if self.cache:
                for g in (m.cache_up, m.cache_latency, m.cache_keys):
                    _remove(g, key)
            self.cache = False
            return
        self.cache = True
        m.cache_up.labels(*key).set(1 if cache.get("reachable") else 0)
        if cache.get("latencyMicroseconds") is not None:
            m.cache_latency.labels(*key).set(cache["latencyMicroseconds"] / 1e6)
        if cache.get("keys") is not None:
            m.cache_keys.labels(*key).set(cache["keys"])

    def event(self, type_: str, reason: str) -> None:
        self.m._exported.add(self.key)
        self.m.events.labels(*self.key, type_, reason).inc()
        self.events.add((type_, reason))

    def late_probe(self) -> None:
        self.m.late_probes.inc()

    def round(self, seconds: float) -> None:
        self.m._exported.add(self.key)
        self.m.rounds.labels(*self.key).observe(seconds)

    def _remove_endpoint(self, name: str) -> None:
        for g in (self.m.healthy, self.m.eligible, self.m.breaker, self.m.latency):
            _remove(g, (*self.key, name))

    def forget(self) -> None:
        """The pool is gone (or no longer run here): drop all of its series."""
        m, key = self.m, self.key
        for name in self.endpoints:
            self._remove_endpoint(name)
        for g in (m.ready, m.panic, m.discovery_degraded, m.tier, m.cache_up, m.cache_latency, m.cache_keys, m.rounds):
            _remove(g, key)
        for state in ("total", "healthy", "eligible", "ejected"):
            _remove(m.endpoints, (*key, state))
        for type_, reason in self.events:
            _remove(m.events, (*key, type_, reason))
        self.endpoints, self.events = set(), set()
        m._exported.discard(key)


class _Remembered(Collector):
    def __init__(self) -> None:
        self.sizes: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "clusterpool_operator_remembered",
            "Pools (or their objects) the operator keeps state for, by holder; 0 once every pool is gone",
            labels=["holder"],
        )
        for holder, n in self.sizes().items():
            family.add_metric([holder], n)
        yield family


class _Writes(Collector):
    def __init__(self) -> None:
        self.sent: Callable[[], Mapping[str, int]] = dict
        self.waiting: Callable[[], Mapping[str, int]] = dict
        self.conflicts: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sent = CounterMetricFamily(
            "clusterpool_kubernetes_writes", "Writes sent to the Kubernetes API server, by lane", labels=["lane"]
        )
        for lane, n in self.sent().items():
            sent.add_metric([lane], n)
        yield sent
        waiting = GaugeMetricFamily(
            "clusterpool_kubernetes_write_backlog", "Objects whose write waits for a worker, by lane", labels=["lane"]
        )
        for lane, n in self.waiting().items():
            waiting.add_metric([lane], n)
        yield waiting
        conflicts = CounterMetricFamily(
            "clusterpool_kubernetes_write_conflicts",
            "Writes the API server refused for a stale resourceVersion, by object (each written again)",
            labels=["object"],
        )
        for obj, n in self.conflicts().items():
            conflicts.add_metric([obj], n)
        yield conflicts


def _remove(metric: Gauge | Counter | Histogram, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


def serve(url: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on the host and port of `url` (any path answers)."""
    parts = urlsplit(url)
    if parts.port is None:
        raise ValueError(f"--metrics needs a port, e.g. http://0.0.0.0:9090/metrics (got {url})")
    start_http_server(parts.port, addr=parts.hostname or "0.0.0.0", registry=registry)
