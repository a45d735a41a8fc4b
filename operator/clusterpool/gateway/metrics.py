"""The gateway's Prometheus metrics (names are a contract: the chart's alerts and the
dashboards read them). Labelled children are cached, so a request costs dict lookups."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clusterpool_gateway_requests",
            "Requests answered, by pool, the endpoint that served (empty: none) and status code",
            ["namespace", "pool", "endpoint", "code"],
            registry=r,
        )
        self.ttfb = Histogram(
            "clusterpool_gateway_time_to_first_byte_seconds",
            "From a request's arrival to the first byte of its response sent to the client",
            ["namespace", "pool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "clusterpool_gateway_request_duration_seconds",
            "From a request's arrival to the last byte of its response",
            ["namespace", "pool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "clusterpool_gateway_retries",
            "Attempts moved to another endpoint before the first response byte, by reason",
            ["namespace", "pool", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "clusterpool_gateway_ejections",
            "Passive outlier ejections of an endpoint",
            ["namespace", "pool", "endpoint"],
            registry=r,
        )
        self.in_flight = Gauge(
            "clusterpool_gateway_in_flight", "Requests in flight per pool", ["namespace", "pool"], registry=r
        )
        self.rejected = Counter(
            "clusterpool_gateway_rejected", "Requests or connections refused before routing, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def answered(self, ns: str, pool: str, endpoint: str, code: int, ttfb: float | None, duration: float) -> None:
        self._child(self.requests, ns, pool, endpoint, str(code)).inc()
        if ttfb is not None:
            self._child(self.ttfb, ns, pool).observe(ttfb)
        self._child(self.duration, ns, pool).observe(duration)

    def retried(self, ns: str, pool: str, reason: str) -> None:
        self._child(self.retries, ns, pool, reason).inc()

    def ejected(self, ns: str, pool: str, endpoint: str) -> None:
        self._child(self.ejections, ns, pool, endpoint).inc()

    def in_flight_of(self, ns: str, pool: str) -> Any:
        return self._child(self.in_flight, ns, pool)

    def reject(self, reason: str) -> None:
        self._child(self.rejected, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
