"""Apply what core.publish renders: server-side apply, only when an object changed,
stale EndpointSlices pruned, and everything removed when the pool is deleted.

Every applied object carries the digest of what was applied (an annotation). A replica
that starts driving a pool which published before (after a restart, or taking it over
from another replica) lists what is stored, metadata only, and adopts each object whose
digest is what it would apply, instead of applying it again. The same listing, at least
once a minute, finds objects written or removed by anyone else since this replica applied
them (another resourceVersion): those are applied again.

A Service of the pool's name that the pool does not own is never taken over: that is
reported as a PublishConflict and the rest is still published.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool.core.backoff import BackoffPolicy
from clusterpool.core.publish import OPERATOR, POOL_LABEL, routing_configmap_name
from clusterpool.k8s.writes import Lane, WriteQueue, send, version_of

FIELD_MANAGER = OPERATOR
APPLY = "application/apply-patch+yaml"
DIGEST_ANNOTATION = "clusterpool.dev/applied-digest"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
LIST_PAGE = 500
LIST_GAP = 1.0  # seconds at least between two listings of what is stored
CHECK_EVERY = 60.0  # what was applied is compared with what is stored at least this often

log = logging.getLogger(__name__)

Pool = tuple[str, str]  # namespace, name
Key = tuple[str, str]  # kind, name


class PublishConflictError(Exception):
    pass


def _owned_by(obj: Any, uid: str) -> bool:
    owners = (obj.metadata.owner_references if obj.metadata else None) or []
    return any(o.uid == uid for o in owners)


def _pool_of(meta: dict[str, Any]) -> Pool:
    """The pool an object belongs to, from its metadata (namespace and pool label)."""
    return (meta["namespace"], meta["labels"][POOL_LABEL])


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


REFUSED_BACKOFF = BackoffPolicy(first=5.0, longest=300.0)  # of an object the API server refused


@dataclass(frozen=True)
class _Refused:
    digest: str  # of what was refused
    error: ApiException
    retry_at: float  # on the Publisher's clock
    attempt: int  # refusals in a row of this digest, less one


def _refused_as_such(exc: BaseException) -> TypeGuard[ApiException]:
    """The API server refused the object itself (invalid, forbidden, ...): sending it
    unchanged again will fail again. Conflicts, throttling and the API server being away
    are not that."""
    if not isinstance(exc, ApiException) or exc.status is None:
        return False
    return 400 <= exc.status < 500 and exc.status not in (408, 409, 429)


@dataclass(frozen=True)
class _Applied:
    digest: str  # of what was applied
    version: str | None  # the resourceVersion the API server answered with
    at: float  # when it was applied (or listed), on the Publisher's clock


@dataclass(frozen=True)
class _Listing:
    started: float  # on the Publisher's clock: it shows every write that landed before
    stored: dict[Pool, dict[Key, _Applied]]  # digest "" when the object carries none


def _with_digest(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    meta = obj["metadata"]
    annotations = {**(meta.get("annotations") or {}), DIGEST_ANNOTATION: digest}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


Keyed = tuple[Pool, Key, str, dict[str, Any]]  # an object to apply, with its pool, key and digest


class AppliedObjects:
    """What this replica applied of each pool's objects (digest and version) and what the
    API server refused (with a backoff). The event loop's alone: a write worker is handed
    what it needs and never reads or changes it (a worker forgetting pruned slices while
    the loop forgot drifted ones raised KeyError)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._applied: dict[Pool, dict[Key, _Applied]] = {}
        self._refused: dict[Pool, dict[Key, _Refused]] = {}
        self.adopted = 0  # objects found stored as they would have been applied
        self.drifted = 0  # objects found changed or removed by someone else (applied again)

    def knows(self, pool: Pool) -> bool:
        """Whether anything is known here of what the pool applied (adopted counts)."""
        return pool in self._applied

    def version(self, pool: Pool, key: Key) -> str | None:
        """The resourceVersion this replica last applied the object on, if it applied it."""
        known = self._applied.get(pool, {}).get(key)
        return known.version if known is not None else None

    def is_applied(self, pool: Pool, key: Key, digest: str) -> bool:
        known = self._applied.get(pool, {}).get(key)
        return known is not None and known.digest == digest

    def refusal(self, pool: Pool, key: Key, digest: str, now: float) -> ApiException | None:
        """The API server's refusal of exactly this object while its backoff runs."""
        refused = self._refused.get(pool, {}).get(key)
        if refused is not None and refused.digest == digest and now < refused.retry_at:
            return refused.error
        return None

    def applied(self, pool: Pool, key: Key, digest: str, version: str | None) -> None:
        self._applied.setdefault(pool, {})[key] = _Applied(digest, version, self._clock())
        self._refused.get(pool, {}).pop(key, None)

    def refused(self, pool: Pool, key: Key, digest: str, error: ApiException) -> None:
        before = self._refused.get(pool, {}).get(key)
        attempt = before.attempt + 1 if before is not None and before.digest == digest else 0
        wait = REFUSED_BACKOFF.delay(attempt)
        self._refused.setdefault(pool, {})[key] = _Refused(digest, error, self._clock() + wait, attempt)

    def adopt(self, keyed: list[Keyed], unknown: set[Pool], listing: _Listing | None) -> None:
        """The unknown pools become known; of their objects, each stored with the digest
        that would be applied counts as applied (none when `listing` is None)."""
        for pool in unknown:
            self._applied.setdefault(pool, {})
        if listing is None:  # could not list: everything is applied
            return
        for pool, key, digest, _ in keyed:
            stored = listing.stored.get(pool, {}).get(key)
            if pool in unknown and stored is not None and stored.digest == digest:
                self._applied[pool][key] = stored
                self.adopted += 1

    def forget_drifted(self, listing: _Listing) -> None:
        """What was applied here before the listing began and is stored in another version
        now (someone else wrote or removed it) is forgotten: the next apply sends it."""
        for pool, applied in self._applied.items():
            stored = listing.stored.get(pool, {})
            for key, known in list(applied.items()):
                now = stored.get(key)
                if known.at < listing.started and (now is None or now.version != known.version):
                    del applied[key]
                    self.drifted += 1

    def forget_slices(self, pool: Pool, keep: set[str]) -> None:
        """Forget the pool's EndpointSlices not named in `keep`: one applied again is sent again."""
        applied = self._applied.get(pool, {})
        for key in [k for k in applied if k[0] == "EndpointSlice" and k[1] not in keep]:
            del applied[key]

    def forget(self, pool: Pool) -> None:
        self._applied.pop(pool, None)
        self._refused.pop(pool, None)

    def remembered(self) -> int:
        """Pools whose applied (or refused) objects are kept."""
        return len(self._applied.keys() | self._refused.keys())


class StoredObjects:
    """Lists what the pools' objects are stored as (metadata only; one listing at a time,
    LIST_GAP apart, and at least every CHECK_EVERY), handing each listing to `on_listed`."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        writes: WriteQueue,
        clock: Callable[[], float],
        namespaces: tuple[str, ...],
        on_listed: Callable[[_Listing], None],
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.discovery = kubernetes.client.DiscoveryV1Api(client)
        self.writes = writes
        self.namespaces = namespaces
        self._clock = clock
        self._on_listed = on_listed
        self._listing: _Listing | None = None  # the latest listing of what is stored
        self._task: asyncio.Future[bool] | None = None
        self._listed_at: float | None = None  # when the latest listing started
        self._check_due = clock() + CHECK_EVERY

    def check_if_due(self, now: float) -> None:
        """Start a listing, unawaited, when the last one is CHECK_EVERY old and none runs."""
        if now >= self._check_due and self._task is None:
            self._task = asyncio.ensure_future(self._list())

    async def listing_since(self, since: float) -> _Listing | None:
        """A listing begun at `since` or later (a write that landed before `since` is in
        it); None when the API server could not be listed."""
        while self._listing is None or self._listing.started < since:
            if self._task is None:
                self._task = asyncio.ensure_future(self._list())
            if not await asyncio.shield(self._task):
                return None
        return self._listing

    async def _list(self) -> bool:
        """List what is stored (one at a time, LIST_GAP apart), then hand it to on_listed."""
        try:
            if self._listed_at is not None:
                await asyncio.sleep(max(0.0, self._listed_at + LIST_GAP - self._clock()))
            started = self._listed_at = self._clock()
            self._check_due = started + CHECK_EVERY
            try:
                stored = await self.writes.run_blocking(partial(self._list_sync, started))
            except Exception as exc:  # the next apply or check lists again
                hint = (
                    "; the operator's ClusterRole needs list on services, configmaps and endpointslices "
                    "(charts/clusterpool-operator, manifests/install/10-rbac.yaml)"
                    if isinstance(exc, ApiException) and exc.status == 403
                    else ""
                )
                log.warning("could not list the published objects (they are applied instead): %s%s", exc, hint)
                return False
            self._listing = _Listing(started, stored)
            self._on_listed(self._listing)
            return True
        finally:
            self._task = None

    def _list_sync(self, started: float) -> dict[Pool, dict[Key, _Applied]]:
        stored: dict[Pool, dict[Key, _Applied]] = {}
        calls: list[tuple[str, Callable[..., Any], tuple[str, ...]]] = [
            ("Service", self.core.list_service_for_all_namespaces, ()),
            ("ConfigMap", self.core.list_config_map_for_all_namespaces, ()),
            ("EndpointSlice", self.discovery.list_endpoint_slice_for_all_namespaces, ()),
        ]
        if self.namespaces:
            calls = [
                (kind, call, (namespace,))
                for namespace in self.namespaces
                for kind, call in (
                    ("Service", self.core.list_namespaced_service),
                    ("ConfigMap", self.core.list_namespaced_config_map),
                    ("EndpointSlice", self.discovery.list_namespaced_endpoint_slice),
                )
            ]
        for kind, call, args in calls:
            after: str | None = None
            while True:
                page = json.loads(
                    send(
                        call,
                        *args,
                        label_selector=POOL_LABEL,
                        limit=LIST_PAGE,
                        _continue=after,
                        _headers={"Accept": METADATA_ONLY},
                        _request_timeout=self.writes.request_timeout,
                    )
                )
                for item in page.get("items") or []:
                    meta = item["metadata"]
                    pool = _pool_of(meta)
                    digest = (meta.get("annotations") or {}).get(DIGEST_ANNOTATION, "")
                    version = meta.get("resourceVersion")
                    stored.setdefault(pool, {})[(kind, meta["name"])] = _Applied(digest, version, started)
                after = (page.get("metadata") or {}).get("continue")
                if not after:
                    break
        return stored

    def forget(self, pool: Pool) -> None:
        """An adoption of the pool needs a listing begun after this anyway."""
        if self._listing is not None:
            self._listing.stored.pop(pool, None)

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})


class ObjectWrites:
    """The writes of the published objects, through the write queue (HEALTH lane): apply
    one object (server-side, on a version), prune a pool's EndpointSlices, delete all it
    published. What runs on a worker gets what it needs as arguments: it never reads
    AppliedObjects."""

    def __init__(self, client: kubernetes.client.ApiClient, writes: WriteQueue) -> None:
        self.writes = writes
        self.core = kubernetes.client.CoreV1Api(client)
        self.discovery = kubernetes.client.DiscoveryV1Api(client)
        self.conflicts = 0  # applies refused for a stale version (each applied again)

    async def apply(self, obj: dict[str, Any], pool: Pool, key: Key, on_version: str | None) -> str | None:
        """Apply obj on `on_version` (None: unconditionally); on a conflict, once more
        unconditionally, through the queue (so the fence is asked again first)."""
        object_key = (*key, obj["metadata"]["namespace"])
        try:
            version: str | None = await self.writes.write(
                Lane.HEALTH, object_key, pool, partial(self._apply_sync, obj, on_version)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.conflicts += 1
            version = await self.writes.write(Lane.HEALTH, object_key, pool, partial(self._apply_sync, obj, None))
        return version

    def _apply_sync(self, obj: dict[str, Any], on_version: str | None) -> str | None:
        """On a write worker: apply `obj`, on `on_version` when given (a precondition)."""
        kind, meta = obj["kind"], obj["metadata"]
        if on_version is not None:
            obj = {**obj, "metadata": {**meta, "resourceVersion": on_version}}
        args = (meta["name"], meta["namespace"], obj)
        kw: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            "_request_timeout": self.writes.request_timeout,
        }
        if kind == "Service":
            self._check_owner(meta)
            return version_of(send(self.core.patch_namespaced_service, *args, **kw))
        if kind == "EndpointSlice":
            return version_of(send(self.discovery.patch_namespaced_endpoint_slice, *args, **kw))
        if kind == "ConfigMap":
            return version_of(send(self.core.patch_namespaced_config_map, *args, **kw))
        raise ValueError(f"cannot publish a {kind}")

    def _check_owner(self, meta: dict[str, Any]) -> None:
        try:
            existing = self.core.read_namespaced_service(
                meta["name"], meta["namespace"], _request_timeout=self.writes.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if not _owned_by(existing, meta["ownerReferences"][0]["uid"]):
            raise PublishConflictError(
                f"Service {meta['namespace']}/{meta['name']} exists and does not belong to this pool; "
                "rename or delete it to let the pool publish its Service"
            )

    async def prune_slices(self, namespace: str, pool: str, keep: set[str]) -> None:
        """Delete the pool's EndpointSlices not named in `keep`."""

        def run() -> None:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{POOL_LABEL}={pool}", _request_timeout=self.writes.request_timeout
            )
            for s in slices.items:
                name = str(s.metadata.name) if s.metadata else ""
                if name and name not in keep:
                    self._delete(self.discovery.delete_namespaced_endpoint_slice, name, namespace)

        await self.writes.write(Lane.HEALTH, ("EndpointSlice/prune", namespace, pool), (namespace, pool), run)

    async def delete_config_and_service(self, namespace: str, pool: str, uid: str) -> None:
        """Delete the pool's routing ConfigMap, and its Service when the pool (uid) owns it."""

        def run() -> None:
            self._delete(self.core.delete_namespaced_config_map, routing_configmap_name(pool), namespace)
            try:
                svc = self.core.read_namespaced_service(pool, namespace, _request_timeout=self.writes.request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            if _owned_by(svc, uid):
                self._delete(self.core.delete_namespaced_service, pool, namespace)

        # the health lane: a deleted pool's finalizer waits for this, not behind Events
        await self.writes.write(Lane.HEALTH, ("ClusterPool/delete", namespace, pool), (namespace, pool), run)

    def _delete(self, fn: Any, name: str, namespace: str) -> None:
        try:
            fn(name, namespace, _request_timeout=self.writes.request_timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise


class Publisher:
    """Every object goes on the HEALTH lane (clients act on the EndpointSlices and the
    routing ConfigMap; a new pool's Service must not wait behind Events); each object's
    writes coalesce.

    An object applied before is applied again only on the version this replica last
    applied (its resourceVersion, a precondition): an apply that had passed the shard
    fence and was still being sent when its replica froze cannot overwrite what the new
    driver applied since. On a conflict the object is applied again, unconditionally,
    through the queue, so the fence is asked again first.

    What was applied, refused and listed (AppliedObjects, StoredObjects) is the event
    loop's alone; the writes (ObjectWrites) are handed what they need; a metrics scrape
    only counts the pools (`remembered`)."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        writes: WriteQueue,
        clock: Callable[[], float] = time.monotonic,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        """`namespaces`: list what is stored in these only (the operator's watched namespaces,
        under namespaced RBAC); empty: in every namespace."""
        self._clock = clock
        self._applied = AppliedObjects(clock)
        self._stored = StoredObjects(client, writes, clock, namespaces, self._applied.forget_drifted)
        self._writes = ObjectWrites(client, writes)

    @property
    def conflicts(self) -> int:
        """Applies refused for a stale version (each applied again)."""
        return self._writes.conflicts

    @property
    def adopted(self) -> int:
        """Objects found stored as they would have been applied."""
        return self._applied.adopted

    @property
    def drifted(self) -> int:
        """Objects found changed or removed by someone else (applied again)."""
        return self._applied.drifted

    async def apply(self, objs: list[dict[str, Any]], adopt: bool = False) -> list[str]:
        """Apply the objects that changed since last applied, concurrently. Returns the
        problems (the others are still applied). An object the API server refused as
        invalid or forbidden is not sent again unchanged until its backoff ran out (2.5-5 s,
        doubling up to 5 min, jittered): its refusal is raised again instead.

        `adopt`: the pool may have published before; if nothing is known here of what it
        applied, what is stored now is listed first and kept where it is what would be
        applied."""
        now = self._clock()
        self._stored.check_if_due(now)
        keyed = [(_pool_of(obj["metadata"]), (obj["kind"], obj["metadata"]["name"]), _digest(obj), obj) for obj in objs]
        if adopt:
            await self._adopt(keyed, since=now)
        changed = []
        failure: BaseException | None = None
        for pool, key, digest, obj in keyed:
            if self._applied.is_applied(pool, key, digest):
                continue
            refusal = self._applied.refusal(pool, key, digest, now)
            if refusal is not None:
                failure = failure or refusal.with_traceback(None)  # raised again: no frames piling up
                continue
            on_version = self._applied.version(pool, key)  # read here, on the loop: the worker is handed it
            future = asyncio.ensure_future(self._writes.apply(_with_digest(obj, digest), pool, key, on_version))
            changed.append((pool, key, digest, future))
        problems = []
        try:
            for pool, key, digest, done in changed:
                try:
                    version = await done
                except PublishConflictError as exc:
                    problems.append(str(exc))
                    continue
                except Exception as exc:  # the others still count as applied; the first failure is raised
                    if _refused_as_such(exc):
                        self._applied.refused(pool, key, digest, exc)
                    failure = failure or exc
                    continue
                self._applied.applied(pool, key, digest, version)
        finally:  # cut short (the sink's timeout): what was sent still lands, unawaited
            for *_, done in changed:
                done.cancel()
        if failure is not None:
            raise failure
        return problems

    async def _adopt(self, keyed: list[Keyed], since: float) -> None:
        """Pools of which nothing is known here: keep what is stored where it carries the
        digest that would be applied (once per pool until it is forgotten)."""
        unknown = {pool for pool, *_ in keyed if not self._applied.knows(pool)}
        if not unknown:
            return
        listing = await self._stored.listing_since(since)
        self._applied.adopt(keyed, unknown, listing)

    async def close(self) -> None:
        await self._stored.close()

    async def prune_slices(self, namespace: str, pool: str, keep: set[str]) -> None:
        """Delete the pool's EndpointSlices not named in `keep`. What was applied of them is
        forgotten first, here on the event loop: one applied again later is sent again."""
        self._applied.forget_slices((namespace, pool), keep)
        await self._writes.prune_slices(namespace, pool, keep)

    async def delete_all(self, namespace: str, pool: str, uid: str) -> None:
        """Remove everything this pool published (no garbage collector needed)."""
        await self.prune_slices(namespace, pool, keep=set())
        await self._writes.delete_config_and_service(namespace, pool, uid)
        self.forget(namespace, pool)

    def forget(self, namespace: str, pool: str) -> None:
        """Forget what was applied for the pool (it went away, or another replica drives
        it now and may change its objects): the next apply writes everything again."""
        self._applied.forget((namespace, pool))
        self._stored.forget((namespace, pool))

    def remembered(self) -> int:
        """Pools whose applied (or refused) objects are kept."""
        return self._applied.remembered()
