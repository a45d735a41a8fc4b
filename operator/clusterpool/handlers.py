"""kopf wiring: settings, one daemon per ClusterPool, cleanup on delete, and nudges on
spec and slice changes.

Thin on purpose: the loop lives in runner.PoolRunner. Handlers are async (kopf runs sync
ones in threads, where the runners' asyncio objects must not be touched), return None
and write nothing themselves; every write goes through the write queue (k8s/writes.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import kopf

from clusterpool import api
from clusterpool.core.budget import TokenBucket
from clusterpool.core.models import ModelClaim, claims_from
from clusterpool.core.publish import MANAGED_BY, OPERATOR, SLICE_MANAGED_BY_LABEL
from clusterpool.k8s.client import APIHealth, SecretsClient, StatusWriter, load_config, watch_api
from clusterpool.k8s.events import COMPONENT, EventRecorder
from clusterpool.k8s.publish import FIELD_MANAGER, Publisher
from clusterpool.k8s.shards import Shards
from clusterpool.k8s.writes import NotOwnedError, WriteQueue
from clusterpool.memory import GIVE_BACK_EVERY, FreedMemory
from clusterpool.metrics import Metrics
from clusterpool.pool_status import InformationalPace
from clusterpool.readiness import serve_readiness
from clusterpool.runner import PoolRunner, PoolWiring
from clusterpool.sinks.pool import remove_published
from clusterpool.stages import Fence, PoolSecrets

FINALIZER = f"{api.GROUP}/finalizer"
STOP_GRACE = 3.0  # seconds a stopped pool's round may take to finish before it is cancelled
FINALIZER_WAIT = 10.0  # seconds a new pool's daemon waits for kopf's finalizer before its first write
NOT_OURS_WAIT = 120.0  # seconds a replica's delete handler waits for a pool another replica drives
METRICS = Metrics()  # prometheus_client's default registry, served by __main__ with --metrics
INFORMATIONAL_PER_SECOND = 5.0  # status writes of informational fields alone, all pools together


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps no last-handled configuration on the pools: every pool looks as last
    handled, so kopf finds no creations or updates to handle. None are needed: the daemon
    re-reads the spec when its generation moves and `spec_changed` wakes it for that. Storing
    it cost a PATCH per pool and replica when pools were created (1,000 pools over 3
    replicas: 3,000 PATCHes, each a full write of the object) and one per spec change."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def configure_settings(settings: kopf.OperatorSettings) -> None:
    # Our own prefixes for the finalizer and kopf's bookkeeping annotations, from day one:
    # changing them later strands objects with the old marks.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Watches: the server ends each stream after ~4.5 min and kopf reconnects; the client
    # gives up a little later. kopf >= 1.44 also restarts a stream that sends nothing,
    # not even a bookmark, for `inactivity_timeout` (70 s by default; bookmarks come every 60 s).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # One replica (kopf has no lease-based leader election): no peering objects needed.
    settings.peering.standalone = True
    # Handler log lines stay in the log (kopf's default); Events are posted explicitly,
    # by the runner, on transitions.
    settings.posting.loggers = False
    # Should kopf post an Event of its own (kopf.event(), or loggers turned on), it names the
    # operator as the reporter, as EventRecorder does, not "kopf".
    settings.posting.reporting_component = COMPONENT


@kopf.on.startup(id="configure")
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings)
    identity = str(memo.get("identity") or OPERATOR)
    settings.posting.reporting_instance = identity
    client = load_config()
    lease_seconds = float(memo.get("lease_seconds") or 15)
    writes = WriteQueue(request_timeout=lease_seconds / 4)
    memo["writes"] = writes
    memo["status_writer"] = StatusWriter(client, writes, field_manager=FIELD_MANAGER)
    memo["publisher"] = Publisher(client, writes, namespaces=tuple(memo.get("list_namespaces") or ()))
    memo["events"] = EventRecorder(client, writes, identity)
    memo["secrets"] = SecretsClient(client)
    freed_memory = memo["freed_memory"] = FreedMemory(timed=METRICS.give_back.observe)
    memo["give_back"] = asyncio.create_task(
        freed_memory.give_back_every(float(memo.get("give_back_seconds", GIVE_BACK_EVERY))), name="give-back"
    )
    memo["informational"] = TokenBucket(INFORMATIONAL_PER_SECOND, 1 / INFORMATIONAL_PER_SECOND, time.monotonic())
    memo["runners"] = {}  # (namespace, name) -> PoolRunner; shared: per-object memos copy this dict's reference
    memo["models_seen"] = {}  # (namespace, name) -> the spec.models last seen (see models_changed)
    memo["model_claims"] = {}  # namespace -> its pools' claims, until one changes (see _model_claims)
    memo["slice_versions"] = collections.Counter()  # namespace -> moves on each change of its slices
    runners: dict[tuple[str, str], PoolRunner] = memo["runners"]
    memo["api_health"] = api_health = APIHealth()  # held once: whether the API server answers
    memo["api_watch"] = asyncio.create_task(
        watch_api(client, api_health, lambda: [*runners.values(), METRICS]), name="api-watch"
    )
    memo["loop_lag"] = asyncio.create_task(METRICS.watch_loop_lag(), name="loop-lag")
    memo["unwatch_gc"] = METRICS.watch_gc()
    shards = Shards(
        client,
        identity,
        str(memo.get("lease_namespace") or "default"),
        lease_seconds=lease_seconds,
        renew_seconds=lease_seconds / 10,  # one failed renewal keeps the hold period (gap < L/3 - T)
        request_timeout=lease_seconds / 10,  # 1.5 s at the default: a busy API server may be slow
        on_members=METRICS.shards_changed,
    )
    memo["shards"] = shards
    status_writer: StatusWriter = memo["status_writer"]
    publisher: Publisher = memo["publisher"]
    events: EventRecorder = memo["events"]
    METRICS.count_writes(
        lambda: {lane.value: n for lane, n in writes.sent.items()},
        lambda: {lane.value: n for lane, n in writes.backlog_by_lane().items()},
        lambda: {"status": status_writer.conflicts, "published": publisher.conflicts},
        lambda: {"as_applied": publisher.adopted, "changed_by_others": publisher.drifted},
    )
    METRICS.count_remembered(  # what the operator keeps per pool: all 0 once every pool is gone
        lambda: {
            "runners": len(runners),
            "status_writer": status_writer.remembered(),
            "publisher": publisher.remembered(),
            "events": events.remembered(),
            "write_queue": writes.remembered(),
            "pool_series": METRICS.pools_exported(),
        }
    )
    writes.fence = lambda pool: shards.may_drive(*pool)  # type: ignore[misc]
    memo["shards_task"] = asyncio.create_task(shards.run(), name="shards")
    if str(memo.get("readiness") or "none") != "none":
        memo["readiness_task"] = asyncio.create_task(
            serve_readiness(str(memo["readiness"]), shards.drives_its_share), name="readiness"
        )
    memo["shards_relay"] = asyncio.create_task(_wake_on_shard_changes(shards, runners), name="shards-relay")


async def _wake_on_shard_changes(shards: Shards, runners: dict[tuple[str, str], PoolRunner]) -> None:
    """A pool this replica may no longer drive stops at once, not after its interval."""
    while True:
        await shards.changed()
        for (namespace, name), runner in list(runners.items()):
            if not shards.may_drive(namespace, name):
                runner.wake("this replica may no longer drive the pool")


@kopf.on.cleanup(id="stop-api-watch")
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for key in ("api_watch", "loop_lag", "shards_relay", "give_back", "readiness_task"):
        task = memo.get(key)
        if task is not None:
            task.cancel()
    if memo.get("unwatch_gc") is not None:
        memo["unwatch_gc"]()
    shards_task: asyncio.Task[None] | None = memo.get("shards_task")
    if shards_task is not None:  # gives the Lease up, so the other replicas take over at once
        shards_task.cancel()
        await asyncio.wait({shards_task})
    publisher: Publisher | None = memo.get("publisher")
    if publisher is not None:
        await publisher.close()
    writes: WriteQueue | None = memo.get("writes")
    if writes is not None:
        await writes.close()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, id="pool", cancellation_backoff=5.0, cancellation_timeout=10.0)
async def pool_daemon(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """Drives the pool while it exists. Cleanup is not here: it is the delete handler's."""
    writer: StatusWriter = memo["status_writer"]
    events: EventRecorder = memo["events"]
    namespace, name = _pool_key(body)

    async def write_status(status: dict[str, Any], stored: dict[str, Any], version: str | None) -> bool:
        return await writer.write(namespace, name, status, stored, version)

    metrics = METRICS.pool(namespace, name)

    def emit(type_: str, reason: str, message: str) -> None:
        if events.post(body.metadata, type_, reason, message):
            metrics.event(type_, reason)

    index: kopf.Index[str, Any] = kwargs["slices_by_namespace"]
    models_index: kopf.Index[str, Any] = kwargs["models_by_namespace"]

    shards: Shards = memo["shards"]

    def may_drive() -> bool:
        return shards.may_drive(namespace, name)

    def keeps() -> bool:
        """The pool stays here unless another live replica is assigned it: while this
        one's Lease is uncertain (no one is known to take over) it keeps probing."""
        return shards.owner_of(namespace, name) in (None, shards.identity)

    def forget_written() -> None:
        memo["publisher"].forget(namespace, name)
        writer.forget(namespace, name)

    runners: dict[tuple[str, str], PoolRunner] = memo["runners"]
    await _until_finalizer_seen(body, stopped)
    while not stopped:
        if not may_drive():  # another replica's pool, or not yet certainly ours
            await _first_of(shards.changed(), stopped.wait())
            continue
        fence = Fence(may_drive, keeps, memo.get("identity"), forget_written, lambda: writer.read(namespace, name))
        slices = NamespaceSlices(index, memo["slice_versions"], namespace)
        wiring = PoolWiring(write_status, emit, logger, memo["publisher"], slices, memo["secrets"].read, metrics, fence)
        wiring.api_health = memo["api_health"]
        wiring.informational = InformationalPace(lambda: memo["informational"].take(time.monotonic()))
        wiring.model_claims = lambda: _model_claims(memo, models_index, namespace)
        runner = PoolRunner(body, wiring)
        runners[(namespace, name)] = runner
        run = asyncio.create_task(runner.run(), name=f"pool {namespace}/{name}")
        relay = asyncio.create_task(_stop_when(stopped, runner, run))
        try:
            # The runner ends when stopped or when the pool is no longer ours; one whose
            # round outlived STOP_GRACE ends cancelled, which is a normal end here (awaited
            # directly, its CancelledError would end this daemon as if kopf had cancelled it).
            await asyncio.wait({run})
        finally:
            if not run.done():  # kopf cancelled this daemon: the runner goes with it
                run.cancel()
                await asyncio.wait({run})
            relay.cancel()
            if runners.get((namespace, name)) is runner:
                del runners[(namespace, name)]
            try:
                # a write sent before the runner ended may still land: wait for it, so that
                # what it records is forgotten too
                await memo["writes"].settle((namespace, name))
            finally:
                # what this replica last wrote may be overwritten by the next one to drive
                # it, and the pool's series are exported by the replica that drives it
                forget_written()
                metrics.forget()
                runner.done.set()
        if not run.cancelled():
            run.result()  # a runner that failed ends the daemon with its error, as before
        if not stopped:
            logger.info("no longer driving the pool here (it belongs to %s now)", shards.owner_of(namespace, name))


def _pool_key(body: kopf.Body) -> tuple[str, str]:
    """(namespace, name): how the wiring knows a pool (the runners, the shards, the writers)."""
    return body.metadata.namespace or "default", body.metadata.name or ""


async def _until_finalizer_seen(body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    """kopf spawns a new pool's daemon, then patches its finalizer in: a status write
    sent before the watch shows that patch names the version before it, is refused (409)
    and costs a read and a second write (1,000 new pools: 1,000 of each). So wait until
    the live body shows the finalizer (kopf adds it at once), FINALIZER_WAIT at most."""
    deadline = time.monotonic() + FINALIZER_WAIT
    while FINALIZER not in (body.metadata.get("finalizers") or []) and time.monotonic() < deadline:
        await stopped.wait(0.1)
        if stopped:
            return


async def _stop_when(stopped: kopf.DaemonStopped, runner: PoolRunner, run: asyncio.Task[None]) -> None:
    """Once kopf says stop: let the round finish for a moment, then cut it short."""
    await stopped.wait()
    runner.stop()
    try:
        async with asyncio.timeout(STOP_GRACE):
            await asyncio.shield(run)
    except TimeoutError:
        run.cancel()


async def _until_drivable(shards: Shards, namespace: str, name: str, seconds: float) -> bool:
    """Whether this replica may drive the pool, waiting up to `seconds` for it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not shards.may_drive(namespace, name):
                await shards.changed()
    return shards.may_drive(namespace, name)


async def _first_of(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, id="remove-published", backoff=2.0)
async def remove_pool_objects(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Remove what the pool published (Consul registrations, the Service, EndpointSlices,
    ConfigMap) once its daemon here has stopped, whether it stopped gracefully or was
    cancelled. Any failure raises, kopf retries, and the finalizer stays until this
    succeeds. (A real cluster's garbage collector would remove the Kubernetes objects
    through their ownerReferences too; Consul has no such collector.)"""
    namespace, name = _pool_key(body)
    shards: Shards = memo["shards"]
    # The replica that drives the pool cleans it up. The others wait here, for the pool to
    # become theirs or for a long while, rather than fail and be retried at once: every
    # kopf retry PATCHes the pool twice (its progress and a touch), and 1,000 pools deleted
    # at once over 3 replicas made that a storm that starved the Lease renewals.
    deadline = time.monotonic() + NOT_OURS_WAIT
    while True:
        if not await _until_drivable(shards, namespace, name, deadline - time.monotonic()):
            raise kopf.TemporaryError(f"the pool is driven by {shards.owner_of(namespace, name)}", delay=NOT_OURS_WAIT)
        runner: PoolRunner | None = memo["runners"].get((namespace, name))
        if runner is not None:
            runner.stop()
            try:
                async with asyncio.timeout(15):
                    await runner.done.wait()
            except TimeoutError:
                raise kopf.TemporaryError("the pool's loop has not stopped yet", delay=2) from None
        # a write the stopped loop queued (an EndpointSlice apply) must not land after the removal
        await memo["writes"].settle((namespace, name))
        try:
            secrets = PoolSecrets(memo["secrets"].read, namespace)
            await remove_published(body, memo["publisher"], secrets)
        except NotOwnedError:
            # The shard fence refused a removal: this replica's Lease turned uncertain
            # meanwhile (renewals time out under a delete storm). Wait here until the pool
            # is certainly this replica's again (or another's), not as a kopf retry.
            logger.debug("removal refused by the shard fence; waiting until the pool is certainly ours")
            continue
        except Exception as exc:
            raise kopf.TemporaryError(
                f"removing what the pool published failed ({type(exc).__name__}: {exc}); retrying", delay=5
            ) from exc
        break
    memo["events"].forget(namespace, name)
    memo["freed_memory"].pools_gone()
    logger.info("removed what the pool published")


def _not_ours(labels: kopf.Labels, **_: Any) -> bool:
    """The EndpointSlices pools publish feed no pool: kopf drops their events early."""
    return labels.get(SLICE_MANAGED_BY_LABEL) != MANAGED_BY


@kopf.index("discovery.k8s.io", "v1", "endpointslices", id="slices_by_namespace", when=_not_ours)
async def slices_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str | None, Any]:
    """EndpointSlices by namespace, for pools with Kubernetes discovery (kept by kopf's watch)."""
    return {
        namespace: {
            "metadata": {"name": body.metadata.name, "labels": dict(body.metadata.labels)},
            "ports": list(body.get("ports") or []),
            "endpoints": list(body.get("endpoints") or []),
        }
    }


class NamespaceSlices:
    """A pool's SliceSource: its namespace's EndpointSlices in kopf's index, and the count
    slice_changed moves (kopf updates an index before it calls the event's handlers)."""

    def __init__(self, index: kopf.Index[str, Any], versions: collections.Counter[str | None], namespace: str) -> None:
        self.index, self.versions, self.namespace = index, versions, namespace

    @property
    def version(self) -> int:
        return self.versions[self.namespace]

    def __call__(self) -> list[Any]:
        return list(self.index.get(self.namespace, []))


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", id="slice-changed", when=_not_ours)
async def slice_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Wake the pools that follow this slice, so a change reaches them at once. Async, so
    it runs on the event loop, where the runners' asyncio.Events live."""
    memo["slice_versions"][namespace] += 1
    for (ns, _name), runner in list(memo["runners"].items()):
        if ns == namespace and runner.follows(labels):
            runner.wake("an EndpointSlice changed")


def _spec_moved(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """The pool's spec moved past what its runner runs. A filter, not a check inside the
    handler: kopf logs every handler call, and nearly every event is a status write. A
    pool being deleted is left out (setting deletionTimestamp moves the generation too):
    its loop is stopped by kopf, not woken."""
    if body.metadata.get("deletionTimestamp") is not None:
        return False
    runner = memo["runners"].get(_pool_key(body))
    return runner is not None and runner.generation != body.metadata.get("generation")


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="spec-changed", when=_spec_moved)
async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Wake the pool's runner, so a spec change applies now, not after the interval."""
    runner = memo["runners"].get(_pool_key(body))
    if runner is not None:
        runner.wake("the spec changed")


# -- spec.models: unique per namespace (core/models.py decides; each runner reports) ------


def _claimed_models(body: kopf.Body) -> tuple[str, ...]:
    """The models a pool claims: none once it is being deleted."""
    if body.metadata.get("deletionTimestamp") is not None:
        return ()
    models = (body.get("spec") or {}).get("models")
    return tuple(m for m in models if isinstance(m, str)) if isinstance(models, list) else ()


def _claims_models(body: kopf.Body, **_: Any) -> bool:
    return bool(_claimed_models(body))


@kopf.index(api.GROUP, api.VERSION, api.PLURAL, id="models_by_namespace", when=_claims_models)
async def models_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str | None, Any]:
    """Each claim on model names, by namespace (kopf keeps it from its watch, and drops a
    pool's once it claims none: most pools claim none, and most events are status writes)."""
    return {
        namespace: {
            "name": body.metadata.name,
            "created": body.metadata.get("creationTimestamp"),
            "models": list(_claimed_models(body)),
        }
    }


def _model_claims(memo: kopf.Memo, index: kopf.Index[str, Any], namespace: str) -> tuple[ModelClaim, ...]:
    """The claims of the namespace's pools on model names: one tuple shared by its pools
    until models_changed drops it (so a pool finds them unchanged by identity)."""
    cache: dict[str, tuple[ModelClaim, ...]] = memo["model_claims"]
    claims = cache.get(namespace)
    if claims is None:
        claims = cache[namespace] = claims_from(index.get(namespace, []))
    return claims


def _models_moved(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> bool:  # noqa: A002 - kopf's name
    """A pool's claim changed (its spec.models, its deletion): the other pools of its
    namespace may gain or lose a model. Most events (status writes) change nothing here."""
    claimed = () if type == "DELETED" else _claimed_models(body)
    return bool(memo["models_seen"].get((body.metadata.namespace, body.metadata.name), ()) != claimed)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="models-changed", when=_models_moved)
async def models_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:  # noqa: A002
    """Wake the namespace's pools, so a conflict appears or clears now, not after their interval."""
    key = (body.metadata.namespace, body.metadata.name)
    claimed = () if type == "DELETED" else _claimed_models(body)
    if claimed:
        memo["models_seen"][key] = claimed
    else:
        memo["models_seen"].pop(key, None)
    memo["model_claims"].pop(key[0], None)
    for (ns, _name), runner in list(memo["runners"].items()):
        if ns == key[0]:
            runner.wake("a pool's spec.models changed")
