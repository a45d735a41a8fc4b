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

from clusterpool.balancer import Balancer, Target
from clusterpool.balancer.registry import LOAD_AWARE
from clusterpool.client.admission import Admission
from clusterpool.client.balancers import TableBalancers
from clusterpool.client.errors import CapacityError as CapacityError  # its old home
from clusterpool.client.errors import NoEndpointError
from clusterpool.client.load import LoadScraper, ScrapedPool
from clusterpool.client.outlier import OutlierDetector
from clusterpool.client.routing import RoutingTable, TableSource
from clusterpool.core.labels import Selector, as_selector, describe
from clusterpool.engines.profiles import find_profile

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


class RoomWaiters:
    """The threads waiting in acquire() for an endpoint to have room, woken when a request
    finishes (or within a second, to see a new table). `lock` is the client's: hold it to wait."""

    def __init__(self, lock: threading.RLock) -> None:
        self._room = threading.Condition(lock)
        self.waiting = 0

    def wait(self, seconds: float) -> None:
        self.waiting += 1
        try:
            self._room.wait(min(seconds, 1.0))
        finally:
            self.waiting -= 1

    def wake(self) -> None:
        self._room.notify_all()


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
        self.load = load  # engine load for LeastLoaded and PrefixAffinity (client/load.py); None: opt out
        self.retries = retries
        self.budget = budget or RetryBudget()
        self.strategy_override = strategy
        self.capacity_wait = capacity_wait  # seconds a request waits for room by default (0: fail at once)
        # One re-entrant lock for the table, the breakers and the in-flight counts, so a
        # request takes an endpoint's room in one step; `_waiters` wait for room under it.
        self._lock = threading.RLock()
        self._waiters = RoomWaiters(self._lock)
        # With a passive outlier detector (client/outlier.py), it decides which endpoints a
        # request may go to instead of this client's breakers; its owner feeds it outcomes.
        self._admission = Admission(outliers, clock or (lambda: datetime.now(UTC)), self._lock)
        self._balancers = TableBalancers(load)
        self._scraped = ScrapedPool(load, self._scrape_failed) if load is not None else None
        self._sync()

    @property
    def outliers(self) -> OutlierDetector | None:
        return self._admission.outliers

    @property
    def table(self) -> RoutingTable:
        """The routing table in force (the source's latest, once a request or a property saw it)."""
        table = self._balancers.table
        assert table is not None
        return table

    # -- the table ---------------------------------------------------------------------------

    def _sync(self) -> Balancer:
        table = self.source.current()
        balancers = self._balancers
        main = balancers.main
        if main is not None and table.revision == balancers.revision:
            return main
        with self._lock:
            if balancers.main is None or table.revision != balancers.revision:
                self._apply(table)
            assert balancers.main is not None
            return balancers.main

    def _apply(self, table: RoutingTable) -> None:
        strategy = self.strategy_override or table.strategy
        self._admission.follow(table.breaker, {t.name for t in table.targets})
        self._balancers.apply(table, strategy)
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
        strategy = self._balancers.strategy
        assert strategy is not None
        return strategy

    def balancer_for(self, selector: SelectorArg = None) -> Balancer:
        """The balancer over the endpoints that match `selector` (all of them without one)."""
        return self._subset(as_selector(selector))

    def _subset(self, selector: Selector) -> Balancer:
        main = self._sync()
        if not selector:
            return main
        subset = self._balancers.subsets.get(selector)
        if subset is not None:
            return subset
        with self._lock:
            self._sync()
            return self._balancers.subset(selector)

    # -- breakers ----------------------------------------------------------------------------

    def record(self, target: Target, ok: bool) -> None:
        self._admission.record(target.name, ok)

    def _scrape_failed(self, address: str, port: int, why: str) -> None:
        """Passive health from the load scraper: a failed scrape of an endpoint's metrics
        (refused, timed out, an error status) counts as a failure for this client's breaker
        of every target at that address."""
        for t in self.table.targets:
            if t.address == address and t.port == port:
                self.record(t, ok=False)

    def breaker_state(self, name: str) -> str:
        return self._admission.breaker_state(name)

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
            revision = self._balancers.revision
            raise NoEndpointError(f"the pool has no eligible endpoint{which} (routing table {revision})")
        for _ in range(2 * len(targets)):
            t = balancer.pick(key)
            if t.name not in exclude and self._has_room(t) and self._admission.admits(t.name):
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
                self._balancers.started(t)
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
        with self._lock:
            while True:
                t = self._try_acquire(sel, key, exclude)
                if t is not None:
                    return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._full(sel, wait)
                self._waiters.wait(left)

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
            self._sync()
            self._balancers.started(target)

    def finished(self, target: Target, latency_s: float, ok: bool) -> None:
        with self._lock:
            admission = self._admission
            if admission.outliers is None:
                admission.record(target.name, ok)
            self._sync().finished(target, latency_s, ok)
            for subset in self._balancers.holding.get(target.name, ()):
                subset.finished(target, latency_s, ok)
            if self._waiters.waiting:
                self._waiters.wake()

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
