"""The gateway's Prometheus metrics (names are a contract: the chart's alerts and the
dashboards read them).

Counted in plain dicts and lists on the event loop and turned into metric families only
when scraped: prometheus_client's labelled Counter and Histogram cost about 12 us per
request here (a lock and a linear bucket scan each), these about 1 us. Everything runs on
the loop's thread, scrapes included, so no lock is needed."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
InFlight = Callable[[], Iterable[tuple[str, str, int]]]  # (namespace, pool, requests in flight)
Connections = Callable[[], Iterable[tuple[str, str, int]]]  # (endpoint address:port, idle|busy, connections)
Labels = tuple[str, ...]


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bucket
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, n in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((le, float(running)))
        return out


class _PoolTimes:
    """The two latency histograms of one pool."""

    __slots__ = ("duration", "ttfb")

    def __init__(self) -> None:
        self.ttfb, self.duration = _Histogram(), _Histogram()


class GatewayMetrics(Collector):
    def __init__(self, in_flight: InFlight, connections: Connections) -> None:
        self._in_flight = in_flight
        self._connections = connections
        self.requests: dict[tuple[str, str, str, int], int] = {}  # (namespace, pool, endpoint, code)
        self.times: dict[Labels, _PoolTimes] = {}  # (namespace, pool)
        self.retries: dict[Labels, int] = {}  # (namespace, pool, reason)
        self.ejections: dict[Labels, int] = {}  # (namespace, pool, endpoint)
        self.hedges: dict[Labels, int] = {}  # (namespace, pool)
        self.hedges_won: dict[Labels, int] = {}
        self.rejected: dict[Labels, int] = {}  # (reason,)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- counting -----------------------------------------------------------------------------

    def answered(self, ns: str, pool: str, endpoint: str, code: int, ttfb: float | None, duration: float) -> None:
        key = (ns, pool, endpoint, code)  # the code made a string only when scraped
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        p = (ns, pool)
        times = self.times.get(p) or self.times.setdefault(p, _PoolTimes())
        if ttfb is not None:
            times.ttfb.observe(ttfb)
        times.duration.observe(duration)

    def retried(self, ns: str, pool: str, reason: str) -> None:
        key = (ns, pool, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def hedged(self, ns: str, pool: str) -> None:
        self.hedges[(ns, pool)] = self.hedges.get((ns, pool), 0) + 1

    def hedge_won(self, ns: str, pool: str) -> None:
        self.hedges_won[(ns, pool)] = self.hedges_won.get((ns, pool), 0) + 1

    def ejected(self, ns: str, pool: str, endpoint: str) -> None:
        key = (ns, pool, endpoint)
        self.ejections[key] = self.ejections.get(key, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[(reason,)] = self.rejected.get((reason,), 0) + 1

    # -- scraping -----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str], values: dict[Labels, int]) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=labels)
            for key, n in sorted(values.items()):
                m.add_metric(list(key), n)
            return m

        def histogram(name: str, doc: str, values: dict[Labels, _Histogram]) -> HistogramMetricFamily:
            m = HistogramMetricFamily(name, doc, labels=["namespace", "pool"])
            for key, h in sorted(values.items()):
                if any(h.counts):
                    m.add_metric(list(key), h.buckets(), h.total)
            return m

        yield counter(
            "clusterpool_gateway_requests",
            "Requests answered, by pool, the endpoint that served (empty: none) and status code",
            ["namespace", "pool", "endpoint", "code"],
            {(ns, pool, ep, str(code)): n for (ns, pool, ep, code), n in self.requests.items()},
        )
        yield histogram(
            "clusterpool_gateway_time_to_first_byte_seconds",
            "From a request's arrival to the first byte of its response sent to the client",
            {p: t.ttfb for p, t in self.times.items()},
        )
        yield histogram(
            "clusterpool_gateway_request_duration_seconds",
            "From a request's arrival to the last byte of its response",
            {p: t.duration for p, t in self.times.items()},
        )
        yield counter(
            "clusterpool_gateway_retries",
            "Attempts moved to another endpoint before the first response byte, by reason",
            ["namespace", "pool", "reason"],
            self.retries,
        )
        yield counter(
            "clusterpool_gateway_hedges",
            "Hedges sent: another attempt when the first response byte was late (spec.hedging)",
            ["namespace", "pool"],
            self.hedges,
        )
        yield counter(
            "clusterpool_gateway_hedges_won",
            "Hedges whose response head came first, and so served the request",
            ["namespace", "pool"],
            self.hedges_won,
        )
        yield counter(
            "clusterpool_gateway_ejections",
            "Passive outlier ejections of an endpoint",
            ["namespace", "pool", "endpoint"],
            self.ejections,
        )
        g = GaugeMetricFamily(
            "clusterpool_gateway_in_flight", "Requests in flight per pool", labels=["namespace", "pool"]
        )
        for ns, pool, n in self._in_flight():
            g.add_metric([ns, pool], n)
        yield g
        g = GaugeMetricFamily(
            "clusterpool_gateway_upstream_connections",
            "Open connections to endpoints, idle (kept alive) or busy; an endpoint that left every routing "
            "table loses its idle ones at once and its busy ones when their answer ends",
            labels=["endpoint", "state"],
        )
        for endpoint, state, n in self._connections():
            g.add_metric([endpoint, state], n)
        yield g
        yield counter(
            "clusterpool_gateway_rejected",
            "Requests or connections refused before routing, by reason",
            ["reason"],
            self.rejected,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
