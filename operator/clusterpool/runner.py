"""One pool's loop: spec -> observe -> probe round -> may this replica write -> status -> sinks -> next delay.

The runner knows nothing of kopf: the wiring hands it the live object body and a
PoolWiring (write status, post an Event, the logger, the shard fence, ...). Each round:

1. spec: re-validated when its generation moved (pool_spec.SpecTracker); a bad one is
   reported and the last valid spec stays in use;
2. observe: the Source spec.discovery names (discovery/source.py) says who exists and
   its own DiscoveryDegraded condition;
3. probe round: every endpoint probed concurrently, folded into the pure core's
   PoolState as answers arrive, an Event per transition; beside it, every few rounds, the
   engines' load gauges of the serving endpoints (health/load.py), for the status;
4. may this replica write (pool_status.PoolStatus.may_write): after a pause it resumes
   (learns what is stored now, posts the Events it held) before any write, mid-round too;
5. status: written when it differs from the last one (pool_status.py);
6. sinks: the Kubernetes objects, Consul and the cache check each get the new snapshot
   in a task of their own, under their own timeout (sinks/), so none of them delays
   detection, the status or another sink;

then it waits intervalSeconds plus jitter, or until woken (Wakeups: a spec or slice
change, a watcher, a sink whose condition changed; each with its reason, deduplicated).
It returns when stopped or when the pool no longer stays with this replica.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterpool.core.health import Endpoint
from clusterpool.core.models import ModelClaim
from clusterpool.core.pool import PoolState, step
from clusterpool.core.status import restore_state
from clusterpool.discovery.source import OutageNotice, SliceSource, SourceContext, SourceSlot, follows
from clusterpool.health.checks import Checks
from clusterpool.health.probes import probe_batches
from clusterpool.k8s.client import APIHealth
from clusterpool.k8s.writes import NotOwnedError, api_unreachable
from clusterpool.metrics import PoolMetrics
from clusterpool.pool_spec import SpecTracker, failover_of, thresholds_of
from clusterpool.pool_status import HeldEvents, InformationalPace, PoolStatus, WriteStatus
from clusterpool.sinks.objects import ObjectPublisher
from clusterpool.sinks.pool import PoolSinks
from clusterpool.sinks.task import SINK_TIMEOUT
from clusterpool.stages import Emit, Fence, Log, PoolRef, PoolSecrets, SecretReader, Snapshot, Wakeups, utcnow


@dataclass
class PoolWiring:
    """What the wiring hands a pool's loop."""

    write_status: WriteStatus
    emit: Emit
    log: Log
    publisher: ObjectPublisher | None = None
    slices: SliceSource | None = None
    secrets: SecretReader | None = None
    metrics: PoolMetrics | None = None
    fence: Fence = field(default_factory=Fence)
    api_health: APIHealth = field(default_factory=APIHealth)  # the operator's one record of API outages
    informational: InformationalPace | None = None  # None: every INFORMATIONAL_EVERY, no shared budget
    sink_timeout: float = SINK_TIMEOUT
    rand: Callable[[], float] = random.random
    model_claims: Callable[[], Iterable[ModelClaim]] = tuple  # the namespace's pools' claims on model names


class PoolRunner:
    def __init__(self, body: Mapping[str, Any], wiring: PoolWiring) -> None:
        self.body, self.w = body, wiring  # body: a live view (kopf updates it as the object changes)
        self.wake = Wakeups()
        self.done = asyncio.Event()  # set by the wiring once run() has returned
        self.stopping = False
        self.pool = PoolState()
        self.checks = Checks()  # the prober and the gauge reader the spec says
        events = HeldEvents(wiring.emit, wiring.fence.may_drive)
        self.specs = SpecTracker(body, events, wiring.log, wiring.model_claims)
        pace = wiring.informational or InformationalPace(lambda: True)
        self.status = PoolStatus(body, wiring.write_status, wiring.fence, events, pace, wiring.metrics)
        secrets = PoolSecrets(wiring.secrets, PoolRef.of(body).namespace)
        outage = OutageNotice(wiring.api_health, events, wiring.log, self.wake, self._size)
        self.ctx = SourceContext(secrets, events, self.wake, wiring.slices, outage, self._size)
        self.sources = SourceSlot()
        self.sinks = PoolSinks(body, wiring.publisher, secrets, events, self.wake, wiring.log, wiring.sink_timeout)

    @property
    def generation(self) -> int | None:
        """The spec generation this runner runs."""
        return self.specs.generation

    def follows(self, labels: Mapping[str, str]) -> bool:
        """Whether an EndpointSlice with these labels feeds this pool."""
        return follows(self.specs.spec, labels)

    def api_down(self, exc: BaseException) -> None:
        self.ctx.outage.down(exc)

    def api_up(self) -> None:
        self.ctx.outage.up()

    def _size(self) -> int:
        return len(self.pool.members)

    # -- the stages -----------------------------------------------------------------------

    async def refresh_spec(self) -> None:
        spec = self.specs.refresh()
        if spec is None:  # unchanged, or invalid (the last valid one stays in use)
            return
        stored = self.body.get("status") or {}
        await self.sources.use(spec.discovery, self.ctx, stored, self.specs.first)
        members = (await self.sources.observe()).members
        self.pool = restore_state(members, stored) if self.specs.first else self.pool.with_members(members)
        self.specs.spec = spec
        await self.checks.follow(spec)

    async def observe(self) -> None:
        """Discovered membership changes between spec changes: follow it."""
        if self.specs.spec is None:
            return
        members = (await self.sources.observe()).members
        if members != self.pool.members:
            self.pool = self.pool.with_members(members)

    async def probe_round(self) -> None:
        """Probe every endpoint and fold the results in as they arrive: a transition is
        written (and offered to the sinks) at once, not after the round's slowest probe,
        once this replica may write (resumed first after a pause)."""
        spec = self.specs.spec
        prober = self.checks.prober
        if spec is None or prober is None:
            return
        thresholds, failover = thresholds_of(spec), failover_of(spec)
        async for results in probe_batches(self.pool.members, prober, late=self._late_probe):
            self.pool, events = step(self.pool, results, thresholds, failover, utcnow())
            for e in events:
                self.w.log.info("%s: %s", e.reason, e.message)
                if e.posted:
                    self.status.events(e.type, e.reason, e.message)
            if events and await self.status.may_write():
                await self.publish()

    async def probe_and_read_load(self) -> None:
        """The probe round, and beside it (when due) the engines' load of the endpoints
        that served before it; the status carries the load only on writes made anyway."""
        reading = self.checks.start_load_read(self.pool)
        if reading is None:
            await self.probe_round()
            return
        try:
            await self.probe_round()
        except BaseException:
            reading.cancel()
            raise
        await reading

    def _late_probe(self, ep: Endpoint) -> None:
        self.w.log.debug("probe of %s not counted: the operator was too busy to read its answer in time", ep.name)
        if self.w.metrics is not None:
            self.w.metrics.late_probe()

    async def publish(self) -> None:
        """The status from the state (not behind the sinks), then the sinks."""
        seen = self.sources.seen.condition if self.specs.spec is not None else None
        models = self.specs.models_condition()
        conditions = [*self.sinks.conditions(), *(c for c in (seen, models) if c is not None)]
        load = self.checks.readings()
        await self.status.write(self.status.render(self.pool, self.specs, conditions, self.sinks.cache_status(), load))
        if self.specs.spec is not None:
            self.sinks.offer(Snapshot(self.specs.spec, self.pool, self.specs.models.served))

    # -- the loop -------------------------------------------------------------------------

    def next_delay(self, took: float) -> float:
        if self.specs.spec is None:
            return 30.0
        hc = self.specs.spec.health_check
        interval = hc.interval_seconds * (1 + hc.interval_jitter_percent / 100 * self.w.rand())
        return max(0.0, interval - took)

    async def run_once(self) -> float:
        start = time.monotonic()
        await self.refresh_spec()
        await self.observe()
        self.specs.refresh_models()
        await self.probe_and_read_load()
        if await self.status.may_write():  # else observe only: nothing is written until it may again
            await self.publish()
            if self.w.metrics is not None:
                self.w.metrics.round(time.monotonic() - start)
        return self.next_delay(time.monotonic() - start)

    def stop(self) -> None:
        """Finish the current round and return from run()."""
        self.stopping = True
        self.wake("stop")

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            await self.sinks.close()
            await self.checks.close()
            await self.sources.close()

    async def _loop(self) -> None:
        while not self.stopping and self.w.fence.keeps():
            woken = self.wake.take()  # before the round, so a wake-up during it wakes the next one
            if woken:
                self.w.log.debug("round woken: %s", "; ".join(sorted(woken)))
            try:
                delay = await self.run_once()  # (a round that wrote nothing says nothing of the API: see watch_api)
            except asyncio.CancelledError:
                raise
            except NotOwnedError:  # the Lease became uncertain between the decision and the send
                self.w.log.debug("status not written: the pool is no longer certainly this replica's")
                self.status.events.paused = True  # another replica may write it meanwhile: compare afresh later
                delay = self.next_delay(0.0)
            except Exception as exc:  # a failed write or a bug in one round must not stop probing
                if api_unreachable(exc):
                    self.api_down(exc)
                else:
                    self.w.log.exception("pool round failed; retrying")
                delay = 2.0
            await self.wake.wait(delay)
