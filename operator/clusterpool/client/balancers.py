"""The balancers a PoolClient picks with, built from the routing table in force: one over every
eligible endpoint, one per selector asked for, all fed the in-flight counts of every request."""

from __future__ import annotations

from clusterpool.balancer import Balancer, Target, make_balancer
from clusterpool.client.routing import RoutingTable
from clusterpool.core.labels import Selector, matches
from clusterpool.core.load import LoadBound, LoadView, LoadWeights

MAX_SELECTORS = 64  # balancers kept for distinct selectors; the oldest goes beyond this


class TableBalancers:
    """The table in force (`table`, `revision`), the strategy's balancer over all its endpoints
    (`main`), and one over the endpoints matching each selector (`subsets`), with `holding`:
    which subsets hold each endpoint, so a request's count goes only where it counts. The
    caller holds its lock around `apply`, `subset`, `started` and `finished`; `main`,
    `revision` and `holding` are read without it on the request path."""

    def __init__(self, load: LoadView | None) -> None:
        self.load = load
        self.table: RoutingTable | None = None
        self.revision: str | None = None
        self.strategy: str | None = None
        self.tuning: tuple[LoadWeights | None, LoadBound | None] = (None, None)  # the table's, for the load-aware
        self.main: Balancer | None = None
        self.subsets: dict[Selector, Balancer] = {}
        self.holding: dict[str, tuple[Balancer, ...]] = {}

    def apply(self, table: RoutingTable, strategy: str) -> None:
        """Follow a new table: a new strategy, or new LoadWeights or LoadBound, starts new
        balancers (carrying the in-flight counts over); otherwise the ones there are are updated."""
        tuning = (table.load_weights, table.load_bound)
        if self.main is None or strategy != self.strategy or tuning != self.tuning:
            old = self.main
            self.main = make_balancer(strategy, self.load, *tuning)
            self.main.update(table.targets, old.inflight if old is not None else None)
            self.strategy, self.tuning = strategy, tuning
            self.subsets = {}
        else:
            self.main.update(table.targets)
        for selector, subset in self.subsets.items():
            subset.update([t for t in table.targets if matches(t.labels, selector)])
        self._index()
        self.table = table
        self.revision = table.revision

    def subset(self, selector: Selector) -> Balancer:
        """The balancer over the endpoints matching `selector`, made on first use (the oldest
        goes beyond MAX_SELECTORS)."""
        subset = self.subsets.get(selector)
        if subset is None:
            main = self.main
            assert main is not None and self.strategy is not None
            subset = make_balancer(self.strategy, self.load, *self.tuning)
            subset.update([t for t in main.targets if matches(t.labels, selector)], main.inflight)
            if len(self.subsets) >= MAX_SELECTORS:
                del self.subsets[next(iter(self.subsets))]
            self.subsets[selector] = subset
            self._index()
        return subset

    def _index(self) -> None:
        holding: dict[str, list[Balancer]] = {}
        for subset in self.subsets.values():
            for t in subset.targets:
                holding.setdefault(t.name, []).append(subset)
        self.holding = {name: tuple(subsets) for name, subsets in holding.items()}

    def started(self, target: Target) -> None:
        """Count the request in flight, in every balancer that holds the endpoint."""
        main = self.main
        assert main is not None
        main.started(target)
        for subset in self.holding.get(target.name, ()):
            subset.started(target)
