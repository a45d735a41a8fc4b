"""The pool's Source: one factory turns spec.discovery into who exists, with its DiscoveryDegraded condition.

Static, Kubernetes (the EndpointSlices kopf keeps), Consul or etcd (a watcher task each);
the loop only calls observe(). The API outage notices live here too: the Kubernetes
source reports the last one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from clusterpool import api
from clusterpool.core.health import Endpoint
from clusterpool.core.labels import as_labels, parse_capacity
from clusterpool.core.status import DISCOVERY_DEGRADED, ConditionSpec, rfc3339
from clusterpool.discovery.consul import ConsulWatcher
from clusterpool.discovery.etcd import EtcdWatcher, invalid_keys
from clusterpool.discovery.kubernetes import members_from_slices, selects
from clusterpool.discovery.static import static_members
from clusterpool.k8s.client import APIHealth
from clusterpool.stages import Emit, Log, Observation, PoolSecrets, Source, Wake

SLICES_REREAD = 60.0  # seconds: a Kubernetes source reads its slices at least this often, even unmoved


class SliceSource(Protocol):
    """The EndpointSlices of the pool's namespace, and a count that moves whenever they may
    have changed."""

    @property
    def version(self) -> int: ...

    def __call__(self) -> Iterable[Mapping[str, Any]]: ...


def members_from_status(status: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """The membership a status recorded (to start from after a restart while the source
    is unreachable)."""
    out = []
    for e in status.get("endpoints") or []:
        try:
            out.append(
                Endpoint(
                    str(e["name"]),
                    str(e["address"]),
                    int(e["port"]),
                    int(e.get("weight") or 1),
                    int(e.get("tier") or 0),
                    source_ready=e.get("sourceState") != "NotReady",
                    source_warning=e.get("sourceState") == "Warning",
                    labels=as_labels({str(k): str(v) for k, v in (e.get("labels") or {}).items()}),
                    capacity=parse_capacity(e["capacity"]) if e.get("capacity") is not None else None,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)


def follows(spec: api.ClusterPoolSpec | None, labels: Mapping[str, str]) -> bool:
    """Whether an EndpointSlice with these labels feeds a pool with this spec."""
    k8s = spec.discovery.kubernetes if spec else None
    return k8s is not None and selects(k8s, labels)


class OutageNotice:
    """A pool's side of an API server outage (the fact itself is the operator's APIHealth):
    one Event when the pool notices it, one when it is over, and the record of it that a
    Kubernetes source reports."""

    def __init__(self, health: APIHealth, emit: Emit, log: Log, wake: Wake, pool_size: Callable[[], int]) -> None:
        self.health, self.emit, self.log, self.wake, self.pool_size = health, emit, log, wake, pool_size
        self.announced = False
        self.record: str | None = None  # the last outage, as DiscoveryDegraded says it

    def down(self, exc: BaseException) -> None:
        self.health.down()
        if self.announced:
            return
        self.announced = True
        n = self.pool_size()
        self.log.warning(
            "the Kubernetes API is unreachable (%s); probing goes on with the last known %d endpoints",
            type(exc).__name__,
            n,
        )
        # kopf retries posting Events with backoff, so this one usually arrives after a short outage
        self.emit(
            "Warning",
            "APIServerUnreachable",
            f"the Kubernetes API is unreachable; probing goes on with the last known {n} endpoints",
        )

    def up(self) -> None:
        if not self.announced or self.health.last_outage is None:
            return
        self.announced = False
        seconds, until = self.health.last_outage
        self.record = (
            f"the Kubernetes API was unreachable for {seconds}s until {rfc3339(until)}; the last "
            f"known {self.pool_size()} endpoints stayed in use"
        )
        self.emit("Normal", "APIServerReachable", self.record)
        self.wake("the Kubernetes API is reachable again")  # write the record of it now


@dataclass(frozen=True)
class SourceContext:
    """What a source may use: the pool's Secrets and Events, the loop's wake-ups, kopf's
    EndpointSlices, the pool's outage record, and how many members the pool has now."""

    secrets: PoolSecrets
    emit: Emit
    wake: Wake
    slices: SliceSource | None
    outage: OutageNotice
    pool_size: Callable[[], int]


class StaticSource:
    def __init__(self, spec: api.StaticDiscovery) -> None:
        self.members = static_members(spec)

    async def observe(self) -> Observation:
        return Observation(self.members)


class KubernetesSource:
    """The EndpointSlices kopf keeps (one operator-wide watch)."""

    def __init__(self, spec: api.KubernetesDiscovery, slices: SliceSource | None, outage: OutageNotice) -> None:
        self.spec, self.slices, self.outage = spec, slices, outage
        self.read: tuple[int, float, tuple[Endpoint, ...]] | None = None  # (slices' version, when, members)

    async def observe(self) -> Observation:
        members = self._members()
        if self.outage.record is not None:
            return Observation(
                members, ConditionSpec(DISCOVERY_DEGRADED, "False", "RecoveredFromOutage", self.outage.record)
            )
        return Observation(
            members, ConditionSpec(DISCOVERY_DEGRADED, "False", "SourceReachable", "the EndpointSlice watch is up")
        )

    def _members(self) -> tuple[Endpoint, ...]:
        """Read from the slices again only when they may have changed: every round, it was
        every pool going over every slice of its namespace."""
        if self.slices is None:
            return ()
        version, now = self.slices.version, time.monotonic()
        if self.read is None or self.read[0] != version or now - self.read[1] >= SLICES_REREAD:
            self.read = (version, now, members_from_slices(self.spec, self.slices()))
        return self.read[2]


class WatchedSource:
    """Consul or etcd, followed by a watcher task; while it cannot be read the last known
    members stay (seeded from the stored status after a restart)."""

    def __init__(
        self, spec: api.ConsulDiscovery | api.EtcdDiscovery, ctx: SourceContext, seed: tuple[Endpoint, ...] | None
    ) -> None:
        self.ctx, self.members = ctx, seed
        self.problem: str | None = None  # what failed while the source cannot be read
        self.watcher: ConsulWatcher | EtcdWatcher
        if isinstance(spec, api.ConsulDiscovery):
            self.name = "Consul"
            self.watcher = ConsulWatcher(
                spec,
                ctx.secrets.value(spec.token_secret_ref),
                self._changed,
                self._health,
                ca=ctx.secrets.value(spec.ca_secret_ref),
            )
        else:
            self.name = "etcd"
            self.watcher = EtcdWatcher(spec, ctx.secrets.read, self._changed, self._health, self._resynced)

    async def observe(self) -> Observation:
        return Observation(self.members or (), self._condition())

    def _changed(self, members: tuple[Endpoint, ...]) -> None:
        self.members = members
        self.ctx.wake(f"{self.name} membership changed")

    def _resynced(self, why: str) -> None:
        self.ctx.emit("Normal", "DiscoveryResynced", why)

    def _health(self, problem: str | None) -> None:
        was, self.problem = self.problem, problem
        if (problem is None) == (was is None):
            return
        if problem is not None:
            self.ctx.emit(
                "Warning",
                "DiscoveryDegraded",
                f"{self.name} cannot be read ({problem}); keeping the last known "
                f"{self.ctx.pool_size()} endpoints and retrying",
            )
        else:
            self.ctx.emit("Normal", "DiscoveryRecovered", f"{self.name} answers again; following it")
        self.ctx.wake(f"{self.name} reachability changed")

    def _condition(self) -> ConditionSpec:
        if self.problem is not None:
            return ConditionSpec(
                DISCOVERY_DEGRADED, "True", "SourceUnreachable", f"{self.problem}; the last known endpoints stay in use"
            )
        if isinstance(self.watcher, EtcdWatcher) and self.watcher.invalid:
            bad = self.watcher.invalid
            message = (
                f"etcd answers, but {len(bad)} key(s) under {self.watcher.spec.prefix} are left out: "
                f"{'; '.join(invalid_keys(bad))}; each value must be JSON with address and port "
                "(weight, tier and labels optional)"
            )
            return ConditionSpec(DISCOVERY_DEGRADED, "True", "InvalidRegistrations", message[:1000])
        return ConditionSpec(DISCOVERY_DEGRADED, "False", "SourceReachable", f"{self.name} answers")


def seed_for(
    spec: api.Discovery, previous: Source | None, stored: Mapping[str, Any], first: bool
) -> tuple[Endpoint, ...] | None:
    """What a new watched source reports until it answers: what the previous watched source
    last said, or, on the first spec, what the stored status recorded from the same kind of source."""
    if isinstance(previous, WatchedSource) and previous.members is not None:
        return previous.members
    if first and stored.get("source") == spec.source:
        return members_from_status(stored)
    return None


class NoSource:
    async def observe(self) -> Observation:
        return Observation(())


@contextlib.asynccontextmanager
async def open_source(
    spec: api.Discovery, ctx: SourceContext, seed: tuple[Endpoint, ...] | None
) -> AsyncIterator[Source]:
    """The Source spec.discovery names, running while the context is open. `seed`: the
    members to report until a watched source (Consul, etcd) first answers."""
    if spec.static is not None:
        yield StaticSource(spec.static)
    elif spec.kubernetes is not None:
        yield KubernetesSource(spec.kubernetes, ctx.slices, ctx.outage)
    elif (spec.consul or spec.etcd) is not None:
        source = WatchedSource(spec.consul or spec.etcd, ctx, seed)  # type: ignore[arg-type]
        source.watcher.start()
        try:
            yield source
        finally:
            await source.watcher.stop()
    else:
        yield NoSource()


class SourceSlot:
    """The source in use: opened from spec.discovery, reopened (the old one closed first)
    only when spec.discovery changes, and what it said last."""

    def __init__(self) -> None:
        self.spec: api.Discovery | None = None
        self.source: Source | None = None
        self.seen = Observation(())
        self._stack = contextlib.AsyncExitStack()

    async def use(self, spec: api.Discovery, ctx: SourceContext, stored: Mapping[str, Any], first: bool) -> None:
        if spec == self.spec:
            return
        seed = seed_for(spec, self.source, stored, first)
        await self.close()
        self.source = await self._stack.enter_async_context(open_source(spec, ctx, seed))
        self.spec = spec

    async def observe(self) -> Observation:
        if self.source is not None:
            self.seen = await self.source.observe()
        return self.seen

    async def close(self) -> None:
        stack, self._stack = self._stack, contextlib.AsyncExitStack()
        self.spec = None
        await stack.aclose()
