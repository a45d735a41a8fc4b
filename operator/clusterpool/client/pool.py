"""PoolClient: picks an endpoint per request from the operator's routing table, with
client-side circuit breakers and a retry budget. Used by the httpx transports, or
directly:

    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    with pool.request(key="session-42") as target:
        ...  # call http://{target.address}:{target.port}; an exception counts as a failure
    with pool.request(selector={"model": "llama-3-8b"}, wait=2.0) as target:
        ...  # only endpoints labelled model=llama-3-8b; wait up to 2 s for one with room

Labels and capacity (docs/labels.md): a selector keeps the pick among the endpoints whose
labels carry all of its key=value pairs; each selector gets a balancer of its own (the
strategy over that subset), fed with the in-flight counts of every request, so strategies
see all of this client's traffic whichever selector sent it. An endpoint with a capacity
takes at most that many of this client's requests at once: a request that finds every
matching endpoint full waits up to `wait` seconds for room (the client's `capacity_wait`
by default, 0: fail at once) and then raises CapacityError.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from clusterpool.balancer import Balancer, Target, make_balancer
from clusterpool.balancer.registry import LOAD_AWARE
from clusterpool.client.errors import CapacityError as CapacityError  # its old home
from clusterpool.client.errors import NoEndpointError
from clusterpool.client.load import LoadScraper, ScrapedPool
from clusterpool.client.outlier import OutlierDetector
from clusterpool.client.routing import RoutingTable, TableSource
from clusterpool.core.failover import Breaker, BreakerConfig, on_probe, tick
from clusterpool.core.labels import Selector, as_selector, describe, matches
from clusterpool.engines.profiles import find_profile

MAX_SELECTORS = 64  # balancers kept for distinct selectors; the oldest goes beyond this
CAPACITY_POLL = 0.01  # seconds between checks while an async request waits for room

SelectorArg = Mapping[str, str] | str | Selector | None


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
        capacity_wait: float = 0.0,
        outliers: OutlierDetector | None = None,
        load: LoadScraper | None = None,
    ) -> None:
        self.source = source
        # With a passive outlier detector (client/outlier.py), it decides which endpoints a
        # request may go to instead of this client's breakers; its owner feeds it outcomes.
        self.outliers = outliers
        self.load = load  # engine load for LeastLoaded and PrefixAffinity (client/load.py); None: opt out
        self._scraped: ScrapedPool | None = None
        self.retries = retries
        self.budget = budget or RetryBudget()
        self.strategy_override = strategy
        self.capacity_wait = capacity_wait  # seconds a request waits for room by default (0: fail at once)
        self._clock = clock or (lambda: datetime.now(UTC))
        # One re-entrant lock for the table, the breakers and the in-flight counts, so a
        # request takes an endpoint's room in one step; `_room` wakes requests waiting for it.
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting in acquire for room (finished wakes them)
        self._revision: str | None = None
        self._strategy: str | None = None
        self._balancer: Balancer | None = None
        self._subsets: dict[Selector, Balancer] = {}
        self._holding: dict[str, tuple[Balancer, ...]] = {}  # endpoint -> the subsets it is in
        self._breakers: dict[str, Breaker] = {}
        self._trials: dict[str, int] = {}
        self._cfg = BreakerConfig()
        self.table = source.current()
        if load is not None:
            self._scraped = ScrapedPool(load, self._scrape_failed)
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
            old = self._balancer
            self._balancer = make_balancer(strategy, self.load)
            self._balancer.update(table.targets, old.inflight if old is not None else None)
            self._strategy = strategy
            self._subsets = {}
        else:
            self._balancer.update(table.targets)
        for selector, subset in self._subsets.items():
            subset.update([t for t in table.targets if matches(t.labels, selector)])
        self._index_subsets()
        b = table.breaker
        self._cfg = BreakerConfig(
            b.failure_threshold, b.open_seconds, b.max_open_seconds, b.half_open_max_probes, b.success_threshold
        )
        names = {t.name for t in table.targets}
        if self.outliers is not None:
            self.outliers.retain(names)
        self._breakers = {n: s for n, s in self._breakers.items() if n in names}
        self.table = table
        self._revision = table.revision
        if self._scraped is not None:  # the scraper watches the eligible endpoints while the strategy reads load
            profile = find_profile(table.engine) if strategy in LOAD_AWARE else None
            self._scraped.follow(frozenset((t.address, t.port) for t in table.targets), profile)

    @property
    def balancer(self) -> Balancer:
        return self._sync()

    @property
    def strategy(self) -> str:
        """The strategy in force: the override, else the current table's."""
        self._sync()
        assert self._strategy is not None
        return self._strategy

    def balancer_for(self, selector: SelectorArg = None) -> Balancer:
        """The balancer over the endpoints that match `selector` (all of them without one)."""
        return self._subset(as_selector(selector))

    def _subset(self, selector: Selector) -> Balancer:
        main = self._sync()
        if not selector:
            return main
        subset = self._subsets.get(selector)
        if subset is not None:
            return subset
        with self._lock:
            main = self._sync()
            subset = self._subsets.get(selector)
            if subset is None:
                assert self._strategy is not None
                subset = make_balancer(self._strategy, self.load)
                subset.update([t for t in main.targets if matches(t.labels, selector)], main.inflight)
                if len(self._subsets) >= MAX_SELECTORS:
                    del self._subsets[next(iter(self._subsets))]
                self._subsets[selector] = subset
                self._index_subsets()
            return subset

    def _index_subsets(self) -> None:
        """Which subsets hold each endpoint, so a request's count goes only where it counts."""
        holding: dict[str, list[Balancer]] = {}
        for subset in self._subsets.values():
            for t in subset.targets:
                holding.setdefault(t.name, []).append(subset)
        self._holding = {name: tuple(subsets) for name, subsets in holding.items()}

    # -- breakers ----------------------------------------------------------------------------

    def _admit(self, name: str) -> bool:
        """Whether this client's breaker lets a request through to `name` (and, in HalfOpen,
        counts it as one of the allowed trials), or the outlier detector when there is one."""
        if self.outliers is not None:
            return self.outliers.admits(name)
        b = self._breakers.get(name)
        if b is None or b.state == "Closed":  # the common case; time moves only Open breakers
            return True
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
        b = self._breakers.get(target.name)
        if ok and (b is None or (b.state == "Closed" and b.failures == 0)):
            return  # a success that changes nothing (on_probe would return the same breaker)
        with self._lock:
            b = self._breakers.get(target.name, Breaker())
            if b.state == "HalfOpen":
                self._trials[target.name] = max(0, self._trials.get(target.name, 0) - 1)
            self._breakers[target.name] = on_probe(b, ok, self._cfg, self._clock())

    def _scrape_failed(self, address: str, port: int, why: str) -> None:
        """Passive health from the load scraper: a failed scrape of an endpoint's metrics
        (refused, timed out, an error status) counts as a failure for this client's breaker
        of every target at that address."""
        for t in self.table.targets:
            if t.address == address and t.port == port:
                self.record(t, ok=False)

    def breaker_state(self, name: str) -> str:
        return self._breakers.get(name, Breaker()).state

    # -- choosing ----------------------------------------------------------------------------

    def _has_room(self, target: Target) -> bool:
        return target.capacity is None or self._sync().inflight(target.name) < target.capacity

    def _choose_in(
        self, balancer: Balancer, selector: Selector, key: str | None, exclude: set[str] | frozenset[str]
    ) -> Target | None:
        """An eligible endpoint matching the selector, with room, whose breaker admits a
        request, not in `exclude`. If every breaker is open, fail open: any such endpoint
        with room (better a request that may fail than none). None when every candidate is
        at its capacity."""
        targets = balancer.targets
        if not targets:
            which = f" matching {describe(selector)}" if selector else ""
            raise NoEndpointError(f"the pool has no eligible endpoint{which} (routing table {self._revision})")
        for _ in range(2 * len(targets)):
            t = balancer.pick(key)
            if t.name not in exclude and self._has_room(t) and self._admit(t.name):
                return t
        rest = [t for t in targets if t.name not in exclude]
        if not rest:
            raise NoEndpointError("every eligible endpoint was tried")
        return next((t for t in rest if self._has_room(t)), None)

    def _full(self, selector: Selector, wait: float) -> CapacityError:
        which = f"matching {describe(selector)} " if selector else ""
        waited = f" after waiting {wait:g}s" if wait > 0 else " (no wait asked)"
        return CapacityError(
            f"every eligible endpoint {which}is at its capacity{waited}: retry later, raise the endpoints' "
            "capacity, or pass a longer wait"
        )

    def choose(
        self, key: str | None = None, exclude: set[str] | frozenset[str] = frozenset(), selector: SelectorArg = None
    ) -> Target:
        """An endpoint for one request, without counting it in flight (see acquire). Raises
        NoEndpointError when none is eligible, CapacityError when all are full."""
        sel = as_selector(selector)
        with self._lock:
            t = self._choose_in(self._subset(sel), sel, key, exclude)
        if t is None:
            raise self._full(sel, 0)
        return t

    def _try_acquire(self, sel: Selector, key: str | None, exclude: set[str] | frozenset[str]) -> Target | None:
        with self._lock:
            t = self._choose_in(self._subset(sel), sel, key, exclude)
            if t is not None:
                self._count_started(self._balancer, t)
            return t

    def acquire(
        self,
        key: str | None = None,
        exclude: set[str] | frozenset[str] = frozenset(),
        selector: SelectorArg = None,
        wait: float | None = None,
    ) -> Target:
        """choose and started in one step, so no other request takes the endpoint's last
        room in between. When every matching endpoint is full, waits up to `wait` seconds
        (default: capacity_wait) for a request to finish, then raises CapacityError."""
        sel = as_selector(selector)
        t = self._try_acquire(sel, key, exclude)
        if t is not None:
            return t
        wait = self.capacity_wait if wait is None else wait
        deadline = time.monotonic() + wait
        with self._room:
            while True:
                t = self._try_acquire(sel, key, exclude)
                if t is not None:
                    return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._full(sel, wait)
                self._waiting += 1
                try:
                    self._room.wait(min(left, 1.0))  # a finished request wakes it; a new table within 1 s
                finally:
                    self._waiting -= 1

    async def acquire_async(
        self,
        key: str | None = None,
        exclude: set[str] | frozenset[str] = frozenset(),
        selector: SelectorArg = None,
        wait: float | None = None,
    ) -> Target:
        """acquire for asyncio: waits for room without blocking the event loop."""
        sel = as_selector(selector)
        wait = self.capacity_wait if wait is None else wait
        deadline = time.monotonic() + wait
        while True:
            t = self._try_acquire(sel, key, exclude)
            if t is not None:
                return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._full(sel, wait)
            await asyncio.sleep(min(left, CAPACITY_POLL))

    def matching(self, selector: SelectorArg = None) -> int:
        """How many eligible endpoints match the selector."""
        return len(self._subset(as_selector(selector)).targets)

    def started(self, target: Target) -> None:
        with self._lock:
            self._count_started(self._sync(), target)

    def _count_started(self, main: Balancer | None, target: Target) -> None:
        """Count the request in flight, in every balancer that holds the endpoint (lock held)."""
        assert main is not None
        main.started(target)
        for subset in self._holding.get(target.name, ()):
            subset.started(target)

    def finished(self, target: Target, latency_s: float, ok: bool) -> None:
        with self._lock:  # `_room`'s lock; entered directly, as Condition's own enter is Python code
            if self.outliers is None:
                self.record(target, ok)
            self._sync().finished(target, latency_s, ok)
            for subset in self._holding.get(target.name, ()):
                subset.finished(target, latency_s, ok)
            if self._waiting:
                self._room.notify_all()

    @contextmanager
    def request(
        self, key: str | None = None, selector: SelectorArg = None, wait: float | None = None
    ) -> Iterator[Target]:
        target = self.acquire(key, selector=selector, wait=wait)
        start = time.perf_counter()
        ok = False
        try:
            yield target
            ok = True
        finally:
            self.finished(target, time.perf_counter() - start, ok)

    def close(self) -> None:
        if self._scraped is not None:
            self._scraped.close()
        self.source.close()
