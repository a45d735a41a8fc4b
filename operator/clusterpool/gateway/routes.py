"""The pools the gateway serves, and how a request finds its pool: the path prefix
`/pools/<namespace>/<pool>/`, the Host `<pool>.<namespace>[...]`, or the `model` field.

Each pool routes with the SDK's own PoolClient over a table the loaders replace, with a
passive outlier detector (client/outlier.py) in place of the client breakers, and the
gateway's one LoadScraper (client/load.py), which the client has scrape only the endpoints
of pools whose strategy reads engine load (LeastLoaded, PrefixAffinity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from clusterpool.balancer import NoEndpointError, Target
from clusterpool.client.load import LoadScraper
from clusterpool.client.outlier import OutlierDetector, OutlierSettings
from clusterpool.client.pool import PoolClient, RetryBudget
from clusterpool.client.routing import RoutingTable, TableSource
from clusterpool.core.labels import Selector

log = logging.getLogger(__name__)
PoolKey = tuple[str, str]  # (namespace, name)
# answers that send a request on to another endpoint while no byte went to the client
# (429: that endpoint is backed off, not ejected)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
HOST_CACHE = 1024  # distinct Host headers remembered (clients send few); beyond, the memory starts over


class LiveTable(TableSource):
    """The latest table of one pool, replaced by a loader (a file, a ConfigMap watch)."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def current(self) -> RoutingTable:
        return self.table


class PoolRoute:
    """One pool: its table, the SDK client that picks for it, its detector and its load."""

    def __init__(self, key: PoolKey, table: RoutingTable, client_for: Callable[[LiveTable], PoolClient]) -> None:
        self.namespace, self.name = key
        self.source = LiveTable(table)
        self.client = client_for(self.source)
        assert self.client.outliers is not None
        self.outliers: OutlierDetector = self.client.outliers  # an attribute, not a property: read per request
        self.in_flight = 0

    @property
    def table(self) -> RoutingTable:
        return self.source.table

    def acquire(self, key: str | None, tried: set[str], selector: Selector | None) -> Target:
        """An endpoint for one attempt, not one already tried, chosen by the pool's strategy;
        endpoints the detector backs off from only when nothing else is left. Raises the
        PoolClient's NoEndpointError or CapacityError (nothing waits for room here)."""
        avoid = self.outliers.avoid()
        try:
            return self.client.acquire(key, tried | avoid if avoid else tried, selector, wait=0)
        except NoEndpointError:
            if not avoid:
                raise
            return self.client.acquire(key, tried, selector, wait=0)


class Routes:
    def __init__(
        self,
        outliers: OutlierSettings,
        retries: int,
        budget_ratio: float,
        budget_burst: float,
        load: LoadScraper | None = None,
    ) -> None:
        self._outliers, self._retries = outliers, retries
        self.load = load
        self._budget = (budget_ratio, budget_burst)
        self.pools: dict[PoolKey, PoolRoute] = {}
        self.models: dict[str, PoolRoute] = {}
        self._hosts: dict[bytes, PoolRoute | None] = {}  # Host header -> its pool, as found; cleared on change
        self.on_change: list[Callable[[], None]] = []

    def _client(self, source: LiveTable) -> PoolClient:
        return PoolClient(
            source,
            retries=self._retries,
            budget=RetryBudget(*self._budget),
            outliers=OutlierDetector(self._outliers),
            load=self.load,
        )

    def put(self, key: PoolKey, table: RoutingTable) -> None:
        route = self.pools.get(key)
        if route is None:
            self.pools[key] = PoolRoute(key, table, self._client)
            log.info("serving pool %s/%s (%d endpoints)", key[0], key[1], len(table.targets))
        elif route.table.revision != table.revision or route.table.models != table.models:
            route.source.table = table
            route.client.balancer  # noqa: B018 - applies the table now, not at the next request
        else:
            return
        self._index()

    def remove(self, key: PoolKey) -> None:
        route = self.pools.pop(key, None)
        if route is not None:
            route.client.close()
            log.info("no longer serving pool %s/%s", *key)
            self._index()

    def _index(self) -> None:
        models: dict[str, PoolRoute] = {}
        for key in sorted(self.pools):
            route = self.pools[key]
            for m in route.table.models:
                other = models.get(m)
                if other is not None:
                    log.warning(
                        "model %r is served by %s/%s and %s/%s: requests go to the first; give each pool "
                        "distinct spec.models",
                        m,
                        other.namespace,
                        other.name,
                        route.namespace,
                        route.name,
                    )
                    continue
                models[m] = route
        self.models = models
        self._hosts = {}
        for fn in self.on_change:
            fn()

    def by_host(self, host: bytes | None) -> PoolRoute | None:
        """`<pool>.<namespace>`, with or without a port or a longer domain."""
        if not host:
            return None
        hosts = self._hosts
        if host in hosts:
            return hosts[host]
        if len(hosts) >= HOST_CACHE:
            hosts.clear()
        route = hosts[host] = self._find_host(host)
        return route

    def _find_host(self, host: bytes) -> PoolRoute | None:
        labels = host.split(b":", 1)[0].lower().split(b".")
        if len(labels) < 2:
            return None
        return self.pools.get((labels[1].decode("ascii", "replace"), labels[0].decode("ascii", "replace")))

    def by_prefix(self, target: bytes) -> tuple[PoolRoute, bytes] | None:
        """`/pools/<namespace>/<pool>/rest` -> (the pool, `/rest`); None for other paths or
        unknown pools."""
        if not target.startswith(b"/pools/"):
            return None
        parts = target.split(b"/", 4)
        if len(parts) < 4:
            return None
        route = self.pools.get((parts[2].decode("ascii", "replace"), parts[3].decode("ascii", "replace")))
        if route is None:
            return None
        rest = b"/" + parts[4] if len(parts) == 5 else b"/"
        return route, rest

    def endpoints(self) -> set[tuple[str, int]]:
        """The address and port of every endpoint of every table."""
        return {(t.address, t.port) for route in self.pools.values() for t in route.table.targets}

    def model_names(self) -> list[str]:
        return sorted(self.models)
