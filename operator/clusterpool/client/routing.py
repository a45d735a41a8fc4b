"""The routing table the operator publishes (docs/routing-table.md), and where a client
reads it from: a mounted ConfigMap file, or the ConfigMap itself through the API."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterpool.balancer import Target
from clusterpool.client.errors import RoutingTableError as RoutingTableError  # its old home
from clusterpool.core.backoff import Backoff
from clusterpool.core.cache_settings import CacheSettings
from clusterpool.core.failover import BreakerConfig
from clusterpool.core.hedging import HedgePolicy
from clusterpool.core.labels import as_labels
from clusterpool.core.load import LoadBound, LoadWeights
from clusterpool.core.names import ROUTING_KEY, ROUTING_SCHEMA_VERSION, routing_configmap_name

log = logging.getLogger(__name__)
OLDEST_MAJOR = 1  # the oldest routing-table major this client still reads; the newest is ROUTING_SCHEMA_VERSION


@dataclass(frozen=True)
class RoutingTable:
    revision: str
    strategy: str
    targets: tuple[Target, ...]  # eligible endpoints, with their effective weights
    breaker: BreakerConfig
    panic: bool = False
    cache: CacheSettings | None = None  # the pool's cache settings (spec.cache), None without a cache
    models: tuple[str, ...] = ()  # the model names the pool serves (spec.models); () without any
    namespace: str = ""  # which pool ("pool" in the table); "" in tables without it
    pool: str = ""
    engine: str | None = None  # spec.engine: whose load gauges to scrape (engines/profiles.py)
    hedging: HedgePolicy | None = None  # spec.hedging; None: no hedges
    load_weights: LoadWeights | None = None  # spec.leastLoaded; None: LeastLoaded's defaults
    load_bound: LoadBound | None = None  # spec.prefixAffinity.loadBound; None: PrefixAffinity's default

    @classmethod
    def parse(cls, text: str | bytes) -> RoutingTable:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RoutingTableError(f"the routing table is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise RoutingTableError("the routing table is not a JSON object")
        version = raw.get("schemaVersion")
        if not OLDEST_MAJOR <= schema_major(version) <= ROUTING_SCHEMA_VERSION:
            raise RoutingTableError(
                f"routing table schemaVersion {version!r} is not supported by this client (it reads majors "
                f"{OLDEST_MAJOR} to {ROUTING_SCHEMA_VERSION}, any minor); upgrade the clusterpool-client package"
            )
        try:
            targets = tuple(_target(e) for e in raw["endpoints"] if e.get("eligible"))
            cb = raw.get("circuitBreaker") or {}
            breaker = BreakerConfig(
                failure_threshold=int(cb.get("failureThreshold", 3)),
                open_seconds=int(cb.get("openSeconds", 30)),
                max_open_seconds=int(cb.get("maxOpenSeconds", 300)),
                half_open_max_probes=int(cb.get("halfOpenMaxProbes", 1)),
                success_threshold=int(cb.get("successThreshold", 2)),
            )
            cache = CacheSettings.from_json(raw["cache"]) if raw.get("cache") else None
            models = raw.get("models") or []
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise TypeError(f"models must be a list of strings, not {models!r}")
            pool = raw.get("pool") or {}
            if not isinstance(pool, dict):
                raise TypeError(f"pool must be an object with namespace and name, not {pool!r}")
            engine = str(raw["engine"]) if raw.get("engine") else None
            hedging = HedgePolicy.from_json(raw["hedging"]) if raw.get("hedging") else None
            weights = LoadWeights.from_json(raw["leastLoaded"]) if raw.get("leastLoaded") else None
            bound = LoadBound.from_json(raw["prefixAffinity"]) if raw.get("prefixAffinity") else None
            return cls(
                str(raw.get("revision", "")),
                str(raw["strategy"]),
                targets,
                breaker,
                bool(raw.get("panic")),
                cache,
                tuple(models),
                str(pool.get("namespace") or ""),
                str(pool.get("name") or ""),
                engine,
                hedging,
                weights,
                bound,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RoutingTableError(f"the routing table is malformed: {exc!r}") from exc


def schema_major(version: object) -> int:
    """The major of a table's schemaVersion: an integer major (1 reads as "1.0") or the
    string "<major>.<minor>". Minors only add fields, so a client reads every minor of a
    major it knows, older or newer (docs/upgrading.md)."""
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str):
        major, dot, minor = version.partition(".")
        if major.isdecimal() and (minor.isdecimal() if dot else True):
            return int(major)
    raise RoutingTableError(
        f'routing table schemaVersion {version!r} is not a version: write an integer major or "<major>.<minor>"'
    )


def _target(e: dict[str, Any]) -> Target:
    """An eligible endpoint. `labels` and `capacity` came later within schema 1: a table
    without them means no labels and no limit."""
    labels = e.get("labels") or {}
    if not isinstance(labels, dict):
        raise TypeError(f"endpoint {e.get('name')}: labels must be an object")
    capacity = e.get("capacity")
    return Target(
        e["name"],
        e["address"],
        int(e["port"]),
        max(1, int(e.get("effectiveWeight") or 1)),
        labels=as_labels({str(k): str(v) for k, v in labels.items()}),
        capacity=max(1, int(capacity)) if capacity is not None else None,
    )


class TableSource:
    """Where tables come from. `current()` is cheap and called on every request."""

    def current(self) -> RoutingTable:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StaticTable(TableSource):
    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def current(self) -> RoutingTable:
        return self.table


class FileTable(TableSource):
    """A mounted ConfigMap file (`.../routing.json`). Re-read when its modification time or
    size changes, checked at most once per `check_every` seconds. Kubernetes updates a
    mounted ConfigMap by swapping a symlink, which this sees. A bad or missing file keeps
    the last good table (and is logged)."""

    def __init__(self, path: str | os.PathLike[str], check_every: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self._stamp: tuple[float, int] | None = None
        self._next_check = 0.0
        self._table: RoutingTable | None = None
        self._lock = threading.Lock()
        self._load()
        if self._table is None:
            raise RoutingTableError(f"no usable routing table at {self.path}")

    def _load(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            table = RoutingTable.parse(self.path.read_bytes())
        except (OSError, RoutingTableError) as exc:
            log.warning("keeping the last routing table: %s", exc)
            return
        self._stamp, self._table = stamp, table

    def current(self) -> RoutingTable:
        now = time.monotonic()
        if now >= self._next_check:
            with self._lock:
                if now >= self._next_check:
                    self._next_check = now + self.check_every
                    self._load()
        assert self._table is not None
        return self._table


class ConfigMapTable(TableSource):
    """The ConfigMap `<pool>-routing` through the Kubernetes API, for applications that do
    not mount it: read once, then watched in a background thread that reconnects with
    backoff. While the API is unreachable the last table stays in use."""

    def __init__(
        self, namespace: str, pool: str, api_client: Any = None, on_change: Callable[[RoutingTable], None] | None = None
    ) -> None:
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace, self.name = namespace, routing_configmap_name(pool)
        self.on_change = on_change
        cm = self.core.read_namespaced_config_map(self.name, namespace)
        self._table = RoutingTable.parse((cm.data or {})[ROUTING_KEY])
        self._version = cm.metadata.resource_version if cm.metadata else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"clusterpool-watch-{pool}")
        self._thread.start()

    def _watch(self) -> None:
        import kubernetes

        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=self._version,
                    timeout_seconds=60,
                ):
                    obj = ev["object"]
                    self._version = obj.metadata.resource_version
                    data = (obj.data or {}).get(ROUTING_KEY)
                    if ev["type"] in ("ADDED", "MODIFIED") and data:
                        try:
                            self._table = RoutingTable.parse(data)
                        except RoutingTableError as exc:
                            log.warning("keeping the last routing table: %s", exc)
                            continue
                        if self.on_change:
                            self.on_change(self._table)
                    if self._stop.is_set():
                        break
                backoff.reset()
            except Exception as exc:  # the API is away: keep the last table, retry
                wait = backoff.next()
                log.warning("routing table watch failed (%s); retrying in %.1fs", exc, wait)
                self._version = None
                self._stop.wait(wait)
            finally:
                w.stop()  # type: ignore[no-untyped-call]

    def current(self) -> RoutingTable:
        return self._table

    def close(self) -> None:
        self._stop.set()
