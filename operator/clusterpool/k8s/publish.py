"""Apply what core.publish renders: server-side apply, only when an object changed,
stale EndpointSlices pruned, and everything removed when the pool is deleted.

A Service of the pool's name that the pool does not own is never taken over: that is
reported as a PublishConflict and the rest is still published.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool.core.publish import POOL_LABEL, routing_configmap_name
from clusterpool.k8s.writes import Lane, WriteQueue, send, version_of

FIELD_MANAGER = "clusterpool-operator"
APPLY = "application/apply-patch+yaml"


class PublishConflictError(Exception):
    pass


def _owned_by(obj: Any, uid: str) -> bool:
    owners = (obj.metadata.owner_references if obj.metadata else None) or []
    return any(o.uid == uid for o in owners)


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


REFUSED_FIRST, REFUSED_LONGEST = 5.0, 300.0  # backoff of an object the API server refused


@dataclass(frozen=True)
class _Refused:
    digest: str  # of what was refused
    error: ApiException
    retry_at: float  # on the Publisher's clock
    wait: float  # the backoff that led to retry_at


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


class Publisher:
    """Every object goes on the HEALTH lane (clients act on the EndpointSlices and the
    routing ConfigMap; a new pool's Service must not wait behind Events); each object's
    writes coalesce.

    An object applied before is applied again only on the version this replica last
    applied (its resourceVersion, a precondition): an apply that had passed the shard
    fence and was still being sent when its replica froze cannot overwrite what the new
    driver applied since. On a conflict the object is applied again, unconditionally,
    through the queue, so the fence is asked again first."""

    def __init__(
        self, client: kubernetes.client.ApiClient, writes: WriteQueue, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.writes = writes
        self._clock = clock
        self.core = kubernetes.client.CoreV1Api(client)
        self.discovery = kubernetes.client.DiscoveryV1Api(client)
        self._applied: dict[tuple[str, str], dict[tuple[str, str], _Applied]] = {}  # pool -> (kind, name) -> ...
        self._refused: dict[tuple[str, str], dict[tuple[str, str], _Refused]] = {}  # pool -> (kind, name) -> ...
        self.conflicts = 0  # applies refused for a stale version (each applied again)

    def _apply_sync(self, obj: dict[str, Any], pool: tuple[str, str], conditional: bool) -> str | None:
        kind, meta = obj["kind"], obj["metadata"]
        known = self._applied.get(pool, {}).get((kind, meta["name"])) if conditional else None
        if known is not None and known.version is not None:
            obj = {**obj, "metadata": {**meta, "resourceVersion": known.version}}
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

    async def apply(self, objs: list[dict[str, Any]]) -> list[str]:
        """Apply the objects that changed since last applied, concurrently. Returns the
        problems (the others are still applied). An object the API server refused as
        invalid or forbidden is not sent again unchanged until its backoff ran out (5 s,
        doubling up to 5 min): its refusal is raised again instead."""
        now = self._clock()
        changed = []
        failure: BaseException | None = None
        for obj in objs:
            meta = obj["metadata"]
            pool = (meta["namespace"], meta["labels"][POOL_LABEL])
            key = (obj["kind"], meta["name"])
            digest = _digest(obj)
            known = self._applied.get(pool, {}).get(key)
            if known is not None and known.digest == digest:
                continue
            refused = self._refused.get(pool, {}).get(key)
            if refused is not None and refused.digest == digest and now < refused.retry_at:
                failure = failure or refused.error.with_traceback(None)  # raised again: no frames piling up
                continue
            changed.append((pool, key, digest, asyncio.ensure_future(self._apply_one(obj, pool, key))))
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
                        self._refuse(pool, key, digest, exc)
                    failure = failure or exc
                    continue
                self._applied.setdefault(pool, {})[key] = _Applied(digest, version)
                self._refused.get(pool, {}).pop(key, None)
        finally:  # cut short (the sink's timeout): what was sent still lands, unawaited
            for *_, done in changed:
                done.cancel()
        if failure is not None:
            raise failure
        return problems

    def _refuse(self, pool: tuple[str, str], key: tuple[str, str], digest: str, error: ApiException) -> None:
        before = self._refused.get(pool, {}).get(key)
        wait = (
            min(before.wait * 2, REFUSED_LONGEST) if before is not None and before.digest == digest else REFUSED_FIRST
        )
        self._refused.setdefault(pool, {})[key] = _Refused(digest, error, self._clock() + wait, wait)

    async def _apply_one(self, obj: dict[str, Any], pool: tuple[str, str], key: tuple[str, str]) -> str | None:
        object_key = (*key, obj["metadata"]["namespace"])
        try:
            version: str | None = await self.writes.write(
                Lane.HEALTH, object_key, pool, partial(self._apply_sync, obj, pool, True)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.conflicts += 1
            version = await self.writes.write(
                Lane.HEALTH, object_key, pool, partial(self._apply_sync, obj, pool, False)
            )
        return version

    async def prune_slices(self, namespace: str, pool: str, keep: set[str]) -> None:
        def run() -> None:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{POOL_LABEL}={pool}", _request_timeout=self.writes.request_timeout
            )
            for s in slices.items:
                name = str(s.metadata.name) if s.metadata else ""
                if name and name not in keep:
                    self._delete(self.discovery.delete_namespaced_endpoint_slice, name, namespace)
                    self._applied.get((namespace, pool), {}).pop(("EndpointSlice", name), None)

        await self.writes.write(Lane.HEALTH, ("EndpointSlice/prune", namespace, pool), (namespace, pool), run)

    def _delete(self, fn: Any, name: str, namespace: str) -> None:
        try:
            fn(name, namespace, _request_timeout=self.writes.request_timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_all(self, namespace: str, pool: str, uid: str) -> None:
        """Remove everything this pool published (no garbage collector needed)."""
        await self.prune_slices(namespace, pool, keep=set())

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
        self.forget(namespace, pool)

    def forget(self, namespace: str, pool: str) -> None:
        """Forget what was applied for the pool (it went away, or another replica drives
        it now and may change its objects): the next apply writes everything again."""
        self._applied.pop((namespace, pool), None)
        self._refused.pop((namespace, pool), None)

    def remembered(self) -> int:
        """Pools whose applied (or refused) objects are kept."""
        return len(self._applied.keys() | self._refused.keys())
