"""One pool's loop, as stages: spec -> source -> probes and the core -> status; sinks.

The runner knows nothing of kopf: the wiring hands it the live object body and callables
(write status, emit an Event, the logger, whether this replica may drive the pool). Each
round:

1. spec: re-validated when its generation changed; a bad spec is reported (SpecValid=False
   and a Warning Event) and the last valid spec stays in use;
2. source: the members (static, the EndpointSlices kopf keeps, or the Consul or etcd watcher);
3. probes and the pure core: every endpoint probed concurrently, folded into PoolState,
   an Event per transition;
4. status: written (on the write queue's HEALTH lane) when it differs from the last one;
5. sinks: the Kubernetes objects, Consul, the cache check each get the new state and
   answer in a task of their own, under their own timeout (sinks.py), so none of them
   delays detection, the status or another sink;

then it sleeps intervalSeconds plus jitter, or until woken (a spec or slice change, a
sink whose condition changed). It returns when stopped or when this replica may no
longer drive the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from clusterpool import api
from clusterpool.cache_monitor import CacheMonitor
from clusterpool.core.failover import BreakerConfig, FailoverConfig
from clusterpool.core.health import Endpoint, Thresholds
from clusterpool.core.labels import as_labels, parse_capacity
from clusterpool.core.models import ModelClaim, ModelOwnership, conflict_message, models_condition, ownership
from clusterpool.core.pool import PoolState, step
from clusterpool.core.publish import (
    build_endpoint_slices,
    build_routing_configmap,
    build_routing_table,
    build_service,
    cache_settings,
)
from clusterpool.core.status import ConditionSpec, health_view, render_status, restore_state, rfc3339
from clusterpool.discovery.consul import ConsulError, ConsulWatcher
from clusterpool.discovery.consul_publish import ConsulPublisher, Instance
from clusterpool.discovery.etcd import EtcdWatcher, invalid_keys
from clusterpool.discovery.kubernetes import members_from_slices, selects
from clusterpool.discovery.static import static_members
from clusterpool.health.probes import Prober, probe_batches, prober_for
from clusterpool.k8s.writes import NotOwnedError, api_unreachable
from clusterpool.metrics import PoolMetrics
from clusterpool.sinks import SinkTask

# (status, the status as last seen stored, the resourceVersion it was seen in) -> written
WriteStatus = Callable[[dict[str, Any], dict[str, Any], str | None], Awaitable[bool]]
_NEVER = object()
INFORMATIONAL_EVERY = 30.0  # seconds: the pace of status writes that change no health (counters, messages)
INFORMATIONAL_PER_SECOND = 5.0  # such writes of all pools together (the wiring's shared budget)
HELD_EVENTS = 32  # Events kept while the replica may not write (the newest)
SINK_TIMEOUT = 20.0  # seconds a sink may take before its condition says Timeout


class ObjectPublisher(Protocol):
    async def apply(self, objs: list[dict[str, Any]], adopt: bool = False) -> list[str]: ...
    async def prune_slices(self, namespace: str, pool: str, keep: set[str]) -> None: ...
    async def delete_all(self, namespace: str, pool: str, uid: str) -> None: ...


Emit = Callable[[str, str, str], None]  # (type: Normal|Warning, reason, message)


def utcnow() -> datetime:
    return datetime.now(UTC)


SliceSource = Callable[[], Iterable[Mapping[str, Any]]]
SecretReader = Callable[[str, str, str], Awaitable[str | None]]  # (namespace, name, key)


def members_of(
    spec: api.ClusterPoolSpec, slices: SliceSource | None = None, watched: tuple[Endpoint, ...] | None = None
) -> tuple[Endpoint, ...]:
    """The members the source says exist; `watched` is what a Consul or etcd watcher last said."""
    if spec.discovery.static is not None:
        return static_members(spec.discovery.static)
    if spec.discovery.kubernetes is not None and slices is not None:
        return members_from_slices(spec.discovery.kubernetes, slices())
    if spec.discovery.consul is not None or spec.discovery.etcd is not None:
        return watched or ()
    return ()


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


def thresholds_of(spec: api.ClusterPoolSpec) -> Thresholds:
    hc = spec.health_check
    bound = hc.degraded_latency_milliseconds
    return Thresholds(hc.healthy_threshold, hc.unhealthy_threshold, bound / 1000 if bound is not None else None)


def failover_of(spec: api.ClusterPoolSpec) -> FailoverConfig:
    f, cb = spec.failover, spec.failover.circuit_breaker
    return FailoverConfig(
        breaker=BreakerConfig(
            failure_threshold=cb.failure_threshold or spec.health_check.unhealthy_threshold,
            open_seconds=cb.open_seconds,
            max_open_seconds=cb.max_open_seconds,
            half_open_max_probes=cb.half_open_max_probes,
            success_threshold=cb.success_threshold,
        ),
        max_ejection_percent=f.max_ejection_percent,
        panic_threshold_percent=f.panic_threshold_percent,
        failover_percent=f.tiers.failover_percent,
        failback_percent=f.tiers.failback_percent,
        slow_start_seconds=f.slow_start_seconds,
    )


class PoolRunner:
    def __init__(
        self,
        body: Mapping[str, Any],
        write_status: WriteStatus,
        emit: Emit,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        rand: Callable[[], float] = random.random,
        publisher: ObjectPublisher | None = None,
        slices: SliceSource | None = None,
        secrets: SecretReader | None = None,
        metrics: PoolMetrics | None = None,
        may_drive: Callable[[], bool] = lambda: True,
        keeps: Callable[[], bool] = lambda: True,
        sink_timeout: float = SINK_TIMEOUT,
        identity: str | None = None,
        forget_written: Callable[[], None] = lambda: None,
        read_stored_status: Callable[[], Awaitable[Mapping[str, Any] | None]] | None = None,
        informational_budget: Callable[[], bool] = lambda: True,
        model_claims: Callable[[], Iterable[ModelClaim]] = tuple,
    ) -> None:
        self.body = body
        self.metrics = metrics  # a live view: kopf updates it as the object changes
        self.write_status_fn = write_status
        self._emit = emit
        self.held_events: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=HELD_EVENTS)
        self.log = logger
        self.rand = rand
        self.wake = asyncio.Event()
        self.done = asyncio.Event()  # set by the wiring once run() has returned
        self.stopping = False
        self.spec: api.ClusterPoolSpec | None = None
        self.spec_error: str | None = None
        self.generation: int | None = None
        self.prober: Prober | None = None
        self.pool = PoolState()
        self.last_written: dict[str, Any] | None = None
        # when a change of informational status fields alone is written: not at once after a
        # start either (a restarted operator finds latencies and messages moved, nothing else)
        self.informational_due = time.monotonic() + INFORMATIONAL_EVERY
        # shared by every pool of the operator: a write of informational fields alone takes
        # a token, so at many pools they come less often than INFORMATIONAL_EVERY instead
        # of filling the write queue ahead of health changes
        self.informational_budget = informational_budget
        self.publisher = publisher
        self.slices = slices
        self.secrets = secrets
        self.watcher: ConsulWatcher | EtcdWatcher | None = None  # the watched source (Consul, etcd)
        self.watched_members: tuple[Endpoint, ...] | None = None
        self.discovery_problem: str | None = None
        self.consul_publisher: ConsulPublisher | None = None
        self.api_down_since: datetime | None = None
        self.last_api_outage: str | None = None
        self.slice_names: set[str] | None = None
        self.may_drive = may_drive  # may write now (this replica certainly holds the pool)
        self.keeps = keeps  # the pool stays with this replica (while unsure: probe, write nothing)
        self.identity = identity  # the replica driving the pool, written as status.drivenBy
        # Forgets what the writers below remember having written for the pool: when after
        # a pause another replica may have written it (see _resume), the next writes
        # compare with what the API server holds, not with this runner's last write.
        self.forget_written = forget_written
        # the pool's status as the API server holds it now (a quorum read; kopf's copy in
        # `body` may lag): after a pause it tells whether another replica wrote meanwhile
        self.read_stored_status = read_stored_status or self._status_seen
        self.paused = False  # a round found may_drive False since the last write
        self.foreign_version_seen: object = _NEVER  # resourceVersion of the last status another replica wrote
        self.model_claims = model_claims  # the claims of the namespace's pools on model names
        self.models = ModelOwnership()  # what this pool serves of spec.models (refresh_models)
        self.objects = SinkTask(
            "publishing the Service, EndpointSlices and ConfigMap",
            self.sync_objects,
            sink_timeout,
            self.wake.set,
            logger,
            "Published",
        )
        self.consul_sink = SinkTask(
            "registering in Consul", self.sync_consul, sink_timeout, self.wake.set, logger, "PublishedToConsul"
        )
        self.cache_sink = SinkTask(
            "checking the cache", self.check_cache, sink_timeout, self.wake.set, logger, "CacheReady"
        )
        stored = (body.get("status") or {}).get("conditions") or []
        for sink in (self.objects, self.consul_sink, self.cache_sink):
            # until the sink answers, its condition stays as stored (no flapping after a restart)
            sink.condition = next(
                (
                    ConditionSpec(c["type"], c["status"], c["reason"], c.get("message", ""))
                    for c in stored
                    if c.get("type") == sink.condition_type
                ),
                None,
            )
        meta = body.get("metadata") or {}
        self.cache = CacheMonitor(
            str(meta.get("namespace")),
            secrets,
            self.emit,
            logger,
            self.wake.set,
            (body.get("status") or {}).get("cache"),
        )

    def emit(self, type_: str, reason: str, message: str) -> None:
        """Post an Event now, or, while this replica may not write for the pool (its Lease
        is uncertain, e.g. the API server is away), hold it until it may (the newest
        HELD_EVENTS are kept)."""
        if self.may_drive():
            self._emit(type_, reason, message)
        else:
            self.held_events.append((type_, reason, message))

    def _post_held_events(self) -> None:
        while self.held_events:
            self._emit(*self.held_events.popleft())

    # -- spec ---------------------------------------------------------------------------

    def _current_generation(self) -> int | None:
        gen = (self.body.get("metadata") or {}).get("generation")
        return int(gen) if gen is not None else None

    async def refresh_spec(self) -> None:
        """Re-validate the spec when its generation changed (objects stored under an
        older schema, or edits the CRD cannot check, end up here)."""
        generation = self._current_generation()
        if self.generation is not None and generation == self.generation:
            return
        first = self.generation is None
        self.generation = generation
        try:
            spec = api.parse_spec(dict(self.body.get("spec") or {}))
            self.spec_error = api.pool_name_error(str((self.body.get("metadata") or {}).get("name")))
        except ValidationError as exc:
            self.spec_error = api.spec_errors(exc)
        if self.spec_error is not None:
            self.log.warning("invalid spec (generation %s): %s", generation, self.spec_error)
            self.emit(
                "Warning",
                "InvalidSpec",
                f"{self.spec_error}; "
                + ("the last valid spec stays in use" if self.spec else "nothing runs until it is fixed"),
            )
            return
        await self._follow_watched_source(spec, first)
        await self._publish_to_consul(spec)
        members = members_of(spec, self.slices, self.watched_members)
        if first:
            self.pool = restore_state(members, self.body.get("status") or {})
        else:
            self.pool = self.pool.with_members(members)
        self.spec = spec
        old, self.prober = self.prober, prober_for(spec.health_check)
        if old is not None:
            await old.close()

    async def _follow_watched_source(self, spec: api.ClusterPoolSpec, first: bool) -> None:
        """Start (or restart on a change) the watcher of a Consul or etcd source."""
        want = spec.discovery.consul or spec.discovery.etcd
        if self.watcher is not None and (want is None or want != self.watcher.spec):
            await self.watcher.stop()
            self.watcher = None
        if want is None or self.watcher is not None:
            return
        status = self.body.get("status") or {}
        if first and status.get("source") == spec.discovery.source and self.watched_members is None:
            self.watched_members = members_from_status(status)  # until the source answers
        if isinstance(want, api.ConsulDiscovery):
            self.watcher = ConsulWatcher(
                want,
                self._secret_reader(want.token_secret_ref),
                self._watched_changed,
                self._watched_health,
                ca=self._secret_reader(want.ca_secret_ref),
            )
        else:
            self.watcher = EtcdWatcher(
                want, self._read_secret, self._watched_changed, self._watched_health, self._watched_resync
            )
        self.watcher.start()

    async def _read_secret(self, ref: api.SecretKeyRef) -> str | None:
        return await self._secret_reader(ref)()

    def _secret_reader(self, ref: api.SecretKeyRef | None) -> Callable[[], Awaitable[str | None]]:
        return secret_reader(self.secrets, str((self.body.get("metadata") or {}).get("namespace")), ref)

    async def _publish_to_consul(self, spec: api.ClusterPoolSpec) -> None:
        want = spec.publish.consul if spec.publish else None
        current = self.consul_publisher
        if current is not None and (
            want is None or want != current.spec or current.ttl != f"{3 * spec.health_check.interval_seconds}s"
        ):
            if want is None:
                with contextlib.suppress(Exception):
                    await current.deregister_all()
            await current.close()
            self.consul_publisher = None
            self.consul_sink.condition = None
        if want is not None and self.consul_publisher is None:
            meta = self.body.get("metadata") or {}
            self.consul_publisher = ConsulPublisher(
                want,
                str(meta.get("namespace")),
                str(meta.get("name")),
                spec.health_check.interval_seconds,
                self._secret_reader(want.token_secret_ref),
                self._secret_reader(want.ca_secret_ref),
            )

    async def sync_consul(self, state: PoolState) -> ConditionSpec | None:
        """Sink: the pool's endpoints in Consul, with checks carrying the probe results."""
        publisher = self.consul_publisher
        if publisher is None:
            return None
        decisions = {d.name: d for d in state.decision.decisions} if state.decision else {}
        instances = []
        for ep in state.members:
            h, d = state.health.of(ep.name), decisions.get(ep.name)
            if d is None or not d.eligible:
                status = "critical"
            elif h.health == "Healthy" and not ep.source_warning and not d.ejection_limited:
                status = "passing"
            else:
                status = "warning"
            instances.append(Instance(ep.name, ep.address, ep.port, status, h.message or h.health))
        try:
            await publisher.sync(instances)
        except (httpx.HTTPError, ConsulError, ssl.SSLError, ValueError) as exc:
            problem = ConditionSpec("PublishedToConsul", "False", "ConsulUnreachable", f"{type(exc).__name__}: {exc}")
            before = self.consul_sink.condition
            if before is None or before.status == "True":
                self.emit("Warning", "ConsulPublishFailed", problem.message)
            return problem
        return ConditionSpec(
            "PublishedToConsul",
            "True",
            "UpToDate",
            f"{len(instances)} instances of {publisher.spec.service or meta_name(self.body)} in Consul",
        )

    def _watched_changed(self, members: tuple[Endpoint, ...]) -> None:
        self.watched_members = members
        self.wake.set()

    def _watched_resync(self, why: str) -> None:
        self.emit("Normal", "DiscoveryResynced", why)

    def _watched_source_name(self) -> str:
        return "etcd" if isinstance(self.watcher, EtcdWatcher) else "Consul"

    def _watched_health(self, problem: str | None) -> None:
        if (problem is None) == (self.discovery_problem is None):
            self.discovery_problem = problem
            return
        self.discovery_problem = problem
        if problem is not None:
            self.emit(
                "Warning",
                "DiscoveryDegraded",
                f"{self._watched_source_name()} cannot be read ({problem}); keeping the last known "
                f"{len(self.pool.members)} endpoints and retrying",
            )
        else:
            self.emit("Normal", "DiscoveryRecovered", f"{self._watched_source_name()} answers again; following it")
        self.wake.set()

    def refresh_members(self) -> None:
        """Discovered membership changes between spec changes: follow it."""
        if self.spec is None or self.spec.discovery.static is not None:
            return
        members = members_of(self.spec, self.slices, self.watched_members)
        if members != self.pool.members:
            self.pool = self.pool.with_members(members)

    def follows(self, labels: Mapping[str, str]) -> bool:
        """Whether an EndpointSlice with these labels feeds this pool."""
        k8s = self.spec.discovery.kubernetes if self.spec else None
        return k8s is not None and selects(k8s, labels)

    def refresh_models(self) -> None:
        """spec.models against the claims of the namespace's other pools (core/models.py):
        what this pool serves; an Event when a conflict appears, changes or clears."""
        meta = self.body.get("metadata") or {}
        name = str(meta.get("name"))
        declared = tuple(self.spec.models or ()) if self.spec is not None else ()
        owned = ownership(ModelClaim(name, str(meta.get("creationTimestamp") or ""), declared), self.model_claims())
        if owned.held_elsewhere != self.models.held_elsewhere:
            if owned.held_elsewhere:
                self.emit("Warning", "ModelsConflict", conflict_message(name, owned.held_elsewhere))
            else:
                self.emit("Normal", "ModelsConflictResolved", f"serves {', '.join(owned.served) or 'no model'} now")
        self.models = owned

    # -- one round ----------------------------------------------------------------------

    async def probe_round(self) -> None:
        """Probe every endpoint and fold the results in as they arrive: a transition is
        written (and offered to the sinks) at once, not after the round's slowest probe."""
        if self.spec is None or self.prober is None:
            return
        thresholds, failover = thresholds_of(self.spec), failover_of(self.spec)
        async for results in probe_batches(self.pool.members, self.prober, late=self._late_probe):
            self.pool, events = step(self.pool, results, thresholds, failover, utcnow())
            for e in events:
                self.log.info("%s: %s", e.reason, e.message)
                if e.posted:
                    self.emit(e.type, e.reason, e.message)
            if events and self.may_drive():
                await self.write_status()
                self.offer_to_sinks()

    def _late_probe(self, ep: Endpoint) -> None:
        self.log.debug("probe of %s not counted: the operator was too busy to read its answer in time", ep.name)
        if self.metrics is not None:
            self.metrics.late_probe()

    def offer_to_sinks(self) -> None:
        if self.spec is not None:
            self.objects.offer((self.spec, self.pool))
            self.consul_sink.offer(self.pool)
            self.cache_sink.offer(self.spec)

    def render(self) -> dict[str, Any]:
        status = self.last_written if self.last_written is not None else (self.body.get("status") or {})
        out = render_status(
            self.pool,
            source=self.spec.discovery.source if self.spec else None,
            generation=self.generation,
            prev_conditions=list(status.get("conditions") or []),
            now=utcnow(),
            spec_error=self.spec_error,
            have_spec=self.spec is not None,
            extra_conditions=self._extra_conditions(),
            failure_cap=_failure_cap(self.spec),
        )
        cache = self.cache.status()
        if cache is not None:
            out["cache"] = cache
        if self.spec is not None and self.spec.models:
            out["models"] = list(self.models.served)
        if self.identity is not None:
            out["drivenBy"] = self.identity
        return out

    async def check_cache(self, spec: api.ClusterPoolSpec) -> ConditionSpec | None:
        """Sink: Redis checked, old versions cleaned; CacheMonitor keeps status.cache."""
        meta = self.body.get("metadata") or {}
        settings = cache_settings(spec, str(meta.get("namespace")), str(meta.get("name")))
        before = self.cache.status()
        await self.cache.update(spec.cache, settings)
        if self.cache.status() != before:
            self.wake.set()  # status.cache changed (a new version, a count): written now, not next interval
        return self.cache.condition()

    def api_down(self, exc: BaseException) -> None:
        if self.api_down_since is None:
            self.api_down_since = utcnow()
            self.log.warning(
                "the Kubernetes API is unreachable (%s); probing goes on with the last known %d endpoints",
                type(exc).__name__,
                len(self.pool.members),
            )
            # kopf retries posting Events with backoff, so this one usually arrives after a short outage
            self.emit(
                "Warning",
                "APIServerUnreachable",
                f"the Kubernetes API is unreachable; probing goes on with the last known "
                f"{len(self.pool.members)} endpoints",
            )

    def api_up(self) -> None:
        if self.api_down_since is None:
            return
        since, now = self.api_down_since, utcnow()
        self.api_down_since = None
        seconds = int((now - since).total_seconds())
        self.last_api_outage = (
            f"the Kubernetes API was unreachable for {seconds}s until {rfc3339(now)}; the last "
            f"known {len(self.pool.members)} endpoints stayed in use"
        )
        self.emit("Normal", "APIServerReachable", self.last_api_outage)
        self.wake.set()  # write the record of it now

    def _extra_conditions(self) -> list[ConditionSpec]:
        out = [c for c in (self.objects.condition, self.consul_sink.condition) if c is not None]
        if self.spec is not None and self.spec.discovery.kubernetes is not None:
            if self.last_api_outage is not None:
                out.append(ConditionSpec("DiscoveryDegraded", "False", "RecoveredFromOutage", self.last_api_outage))
            else:
                out.append(
                    ConditionSpec("DiscoveryDegraded", "False", "SourceReachable", "the EndpointSlice watch is up")
                )
        if self.cache_sink.condition is not None:
            out.append(self.cache_sink.condition)
        if self.spec is not None and (self.spec.discovery.consul or self.spec.discovery.etcd) is not None:
            out.append(self._watched_source_condition())
        models = models_condition(meta_name(self.body), bool(self.spec and self.spec.models), self.models)
        if models is not None:
            out.append(models)
        return out

    def _watched_source_condition(self) -> ConditionSpec:
        if self.discovery_problem is not None:
            return ConditionSpec(
                "DiscoveryDegraded",
                "True",
                "SourceUnreachable",
                f"{self.discovery_problem}; the last known endpoints stay in use",
            )
        if isinstance(self.watcher, EtcdWatcher) and self.watcher.invalid:
            bad = self.watcher.invalid
            message = (
                f"etcd answers, but {len(bad)} key(s) under {self.watcher.spec.prefix} are left out: "
                f"{'; '.join(invalid_keys(bad))}; each value must be JSON with address and port "
                "(weight, tier and labels optional)"
            )
            return ConditionSpec("DiscoveryDegraded", "True", "InvalidRegistrations", message[:1000])
        return ConditionSpec("DiscoveryDegraded", "False", "SourceReachable", f"{self._watched_source_name()} answers")

    async def sync_objects(self, snapshot: tuple[api.ClusterPoolSpec, PoolState]) -> ConditionSpec | None:
        """Sink: the Service, the EndpointSlices of eligible endpoints and the routing ConfigMap."""
        if self.publisher is None:
            return None
        spec, state = snapshot
        meta = self.body.get("metadata") or {}
        pool = {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation")}}
        slices, refused = build_endpoint_slices(pool, state)
        table = build_routing_table(pool, spec, state, models=self.models.served)
        objs = [build_service(pool, state), *slices, build_routing_configmap(pool, table)]
        try:
            # a pool whose stored status says it published may find its objects as it would apply them
            problems = await self.publisher.apply(objs, adopt=self.objects.condition is not None)
            names = {s["metadata"]["name"] for s in slices}
            if names != self.slice_names:
                await self.publisher.prune_slices(str(meta.get("namespace")), str(meta.get("name")), names)
                self.slice_names = names
        except ApiException as exc:
            published = ConditionSpec(
                "Published",
                "False",
                "PublishFailed",
                f"the API server answered {exc.status}: {_api_message(exc)}; retrying",
            )
        else:
            if problems:
                published = ConditionSpec("Published", "False", "PublishConflict", "; ".join(problems))
            elif refused:
                published = ConditionSpec(
                    "Published",
                    "True",
                    "SomeAddressesUnpublishable",
                    f"{', '.join(refused)}: loopback or link-local addresses and names that are not lowercase "
                    "DNS names of two labels or more are not allowed in an EndpointSlice; they are in the "
                    "routing table only",
                )
            else:
                published = ConditionSpec(
                    "Published",
                    "True",
                    "UpToDate",
                    f"Service {meta.get('name')} with {len(slices)} EndpointSlice(s) and ConfigMap "
                    f"{meta.get('name')}-routing",
                )
        before = self.objects.condition
        if published.status == "False" and (before is None or before.status == "True"):
            self.emit("Warning", published.reason, published.message)
        return published

    async def write_status(self) -> None:
        """Status from the state (not behind the sinks), when it changed."""
        status = self.render()
        if self.metrics is not None:
            self.metrics.status(status)
        previous = self.last_written if self.last_written is not None else _plain(self.body.get("status") or {})
        if _same(previous, status):
            self.last_written = status
            return
        if _same(health_view(previous), health_view(status)) and (
            time.monotonic() < self.informational_due or not self.informational_budget()
        ):
            return  # only counters, latencies and messages moved: they go with a later write
        self._emit_ready_change(status)
        stored = _plain(self.body.get("status") or {})
        version = (self.body.get("metadata") or {}).get("resourceVersion")
        if await self.write_status_fn(status, stored, version):
            self.last_written = status
            self.informational_due = time.monotonic() + INFORMATIONAL_EVERY

    def _emit_ready_change(self, status: dict[str, Any]) -> None:
        before = _condition(self.last_written or dict(self.body.get("status") or {}), "Ready")
        after = _condition(status, "Ready")
        if after is None or (before is not None and before.get("status") == after.get("status")):
            return
        if after["status"] == "True":
            self.emit("Normal", "PoolReady", after["message"])
        elif after["status"] == "False":
            self.emit("Warning", "PoolNotReady", f"{after['reason']}: {after['message']}")

    # -- the loop -----------------------------------------------------------------------

    def next_delay(self, took: float) -> float:
        if self.spec is None:
            return 30.0
        hc = self.spec.health_check
        interval = hc.interval_seconds * (1 + hc.interval_jitter_percent / 100 * self.rand())
        return max(0.0, interval - took)

    async def run_once(self) -> float:
        start = time.monotonic()
        await self.refresh_spec()
        self.refresh_members()
        self.refresh_models()
        await self.probe_round()
        if not self.may_drive():  # observe only: nothing is written until this replica may again
            self.paused = True
            return self.next_delay(time.monotonic() - start)
        if self.paused or self._another_replica_wrote():
            await self._resume()
        self._post_held_events()
        await self.write_status()
        self.offer_to_sinks()
        took = time.monotonic() - start
        if self.metrics is not None:
            self.metrics.round(took)
        return self.next_delay(took)

    def _another_replica_wrote(self) -> bool:
        """The stored status names another driver, in a version not seen here before: the
        rounds may have missed the pause (one round longer than the hand-over)."""
        stored_by = (self.body.get("status") or {}).get("drivenBy")
        if self.last_written is None or stored_by in (None, self.identity):
            return False
        return (self.body.get("metadata") or {}).get("resourceVersion") != self.foreign_version_seen

    async def _resume(self) -> None:
        """Writing again after a pause: while this replica's Lease was uncertain or its
        hand-over wait ran, another replica may have driven the pool and written its
        status and objects. Whoever drives a pool writes its status, naming itself, before
        any of its objects; so a stored status that still names this replica says no one
        else wrote anything since, and what was written here is still what is stored.
        Otherwise every writer compares with what is stored from now on."""
        stored = await self.read_stored_status()
        self.paused = False
        self.foreign_version_seen = (self.body.get("metadata") or {}).get("resourceVersion")
        self.last_written = None if stored is None else _plain(stored)
        if self.identity is None or stored is None or stored.get("drivenBy") != self.identity:
            self.forget_written()

    async def _status_seen(self) -> Mapping[str, Any] | None:
        return self.body.get("status")

    def stop(self) -> None:
        """Finish the current round and return from run()."""
        self.stopping = True
        self.wake.set()

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            for sink in (self.objects, self.consul_sink, self.cache_sink):
                await sink.close()
            if self.prober is not None:
                await self.prober.close()
            if self.watcher is not None:
                await self.watcher.stop()
            await self.cache.close()

    async def _loop(self) -> None:
        while not self.stopping and self.keeps():
            self.wake.clear()  # before the round, so a change during it wakes the next one
            try:
                delay = await self.run_once()  # (a round that wrote nothing says nothing of the API: see watch_api)
            except asyncio.CancelledError:
                raise
            except NotOwnedError:  # the Lease became uncertain between the decision and the send
                self.log.debug("status not written: the pool is no longer certainly this replica's")
                self.paused = True  # another replica may write it meanwhile: compare afresh later
                delay = self.next_delay(0.0)
            except Exception as exc:  # a failed write or a bug in one round must not stop probing
                if api_unreachable(exc):
                    self.api_down(exc)
                else:
                    self.log.exception("pool round failed; retrying")
                delay = 2.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()


def secret_reader(
    secrets: SecretReader | None, namespace: str, ref: api.SecretKeyRef | None
) -> Callable[[], Awaitable[str | None]]:
    async def value() -> str | None:
        if ref is None or secrets is None:
            return None
        return await secrets(namespace, ref.name, ref.key)

    return value


async def remove_published(
    body: Mapping[str, Any], publisher: ObjectPublisher | None, secrets: SecretReader | None
) -> None:
    """Remove everything the pool published: its Consul registrations (found by their
    meta, so also those an earlier operator made) and its Kubernetes objects. Raises when
    something could not be removed; the caller retries."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    publish = (body.get("spec") or {}).get("publish") or {}
    if publish.get("consul") is not None:
        spec = api.ConsulPublish.model_validate(dict(publish["consul"]))
        consul = ConsulPublisher(
            spec,
            namespace,
            name,
            1,
            secret_reader(secrets, namespace, spec.token_secret_ref),
            secret_reader(secrets, namespace, spec.ca_secret_ref),
        )
        try:
            await consul.deregister_all()
        finally:
            await consul.close()
    if publisher is not None:
        await publisher.delete_all(namespace, name, str(meta.get("uid")))


def meta_name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name"))


def _failure_cap(spec: api.ClusterPoolSpec | None) -> int:
    if spec is None:
        return 100
    return max(spec.health_check.unhealthy_threshold, failover_of(spec).breaker.failure_threshold)


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])[:500]
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal as the API server would store them (kopf's views are not plain dicts)."""
    return bool(_plain(a) == _plain(b))


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
