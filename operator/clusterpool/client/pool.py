"""PoolClient: picks an endpoint per request from the operator's routing table, with
client-side circuit breakers and a retry budget. Used by the httpx transports, or
directly:

    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    with pool.request(key="session-42") as target:
        ...  # call http://{target.address}:{target.port}; an exception counts as a failure
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from clusterpool.balancer import Balancer, NoEndpointError, Target, make_balancer
from clusterpool.client.routing import RoutingTable, TableSource
from clusterpool.core.failover import Breaker, BreakerConfig, on_probe, tick


class RetryBudget:
    """Retries may add at most `ratio` of the requests (default 20%), plus a burst of
    `burst`: each request deposits `ratio` tokens, each retry spends one. Under a real
    outage this keeps retries from multiplying the load."""

    def __init__(self, ratio: float = 0.2, burst: float = 10.0) -> None:
        self.ratio, self.burst = ratio, burst
        self._tokens = burst
        self._lock = threading.Lock()

    def deposit(self) -> None:
        with self._lock:
            self._tokens = min(self.burst, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        with self._lock:
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class PoolClient:
    def __init__(
        self,
        source: TableSource,
        *,
        retries: int = 2,
        budget: RetryBudget | None = None,
        strategy: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.source = source
        self.retries = retries
        self.budget = budget or RetryBudget()
        self.strategy_override = strategy
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._revision: str | None = None
        self._strategy: str | None = None
        self._balancer: Balancer | None = None
        self._breakers: dict[str, Breaker] = {}
        self._trials: dict[str, int] = {}
        self._cfg = BreakerConfig()
        self.table = source.current()
        self._sync()

    # -- the table ---------------------------------------------------------------------------

    def _sync(self) -> Balancer:
        table = self.source.current()
        balancer = self._balancer
        if balancer is not None and table.revision == self._revision:
            return balancer
        with self._lock:
            if self._balancer is None or table.revision != self._revision:
                self._apply(table)
            assert self._balancer is not None
            return self._balancer

    def _apply(self, table: RoutingTable) -> None:
        strategy = self.strategy_override or table.strategy
        if self._balancer is None or strategy != self._strategy:
            self._balancer = make_balancer(strategy)
            self._strategy = strategy
        self._balancer.update(table.targets)
        b = table.breaker
        self._cfg = BreakerConfig(
            b.failure_threshold, b.open_seconds, b.max_open_seconds, b.half_open_max_probes, b.success_threshold
        )
        names = {t.name for t in table.targets}
        self._breakers = {n: s for n, s in self._breakers.items() if n in names}
        self.table = table
        self._revision = table.revision

    @property
    def balancer(self) -> Balancer:
        return self._sync()

    # -- breakers ----------------------------------------------------------------------------

    def _admit(self, name: str) -> bool:
        """Whether this client's breaker lets a request through to `name` (and, in HalfOpen,
        counts it as one of the allowed trials)."""
        with self._lock:
            b = tick(self._breakers.get(name, Breaker()), self._clock())
            self._breakers[name] = b
            if b.state == "Closed":
                return True
            if b.state == "HalfOpen" and self._trials.get(name, 0) < self._cfg.half_open_max_probes:
                self._trials[name] = self._trials.get(name, 0) + 1
                return True
            return False

    def record(self, target: Target, ok: bool) -> None:
        with self._lock:
            b = self._breakers.get(target.name, Breaker())
            if b.state == "HalfOpen":
                self._trials[target.name] = max(0, self._trials.get(target.name, 0) - 1)
            self._breakers[target.name] = on_probe(b, ok, self._cfg, self._clock())

    def breaker_state(self, name: str) -> str:
        return self._breakers.get(name, Breaker()).state

    # -- choosing ----------------------------------------------------------------------------

    def choose(self, key: str | None = None, exclude: set[str] | frozenset[str] = frozenset()) -> Target:
        """An eligible endpoint whose breaker admits a request, not in `exclude`. If every
        breaker is open, fail open: any eligible endpoint not excluded (better a request
        that may fail than none)."""
        balancer = self._sync()
        targets = balancer.targets
        if not targets:
            raise NoEndpointError(f"the pool has no eligible endpoint (routing table {self._revision})")
        for _ in range(2 * len(targets)):
            t = balancer.pick(key)
            if t.name not in exclude and self._admit(t.name):
                return t
        rest = [t for t in targets if t.name not in exclude]
        if not rest:
            raise NoEndpointError("every eligible endpoint was tried")
        return rest[0]

    def started(self, target: Target) -> None:
        self._sync().started(target)

    def finished(self, target: Target, latency_s: float, ok: bool) -> None:
        self.record(target, ok)
        self._sync().finished(target, latency_s, ok)

    @contextmanager
    def request(self, key: str | None = None) -> Iterator[Target]:
        target = self.choose(key)
        self.started(target)
        start = time.perf_counter()
        ok = False
        try:
            yield target
            ok = True
        finally:
            self.finished(target, time.perf_counter() - start, ok)

    def close(self) -> None:
        self.source.close()
