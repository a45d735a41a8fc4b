"""Apply what core.publish renders: server-side apply, only when an object changed,
stale EndpointSlices pruned, and everything removed when the pool is deleted.

A Service of the pool's name that the pool does not own is never taken over: that is
reported as a PublishConflict and the rest is still published.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool.core.publish import POOL_LABEL, routing_configmap_name

FIELD_MANAGER = "clusterpool-operator"
APPLY = "application/apply-patch+yaml"


class PublishConflictError(Exception):
    pass


def _owned_by(obj: Any, uid: str) -> bool:
    owners = (obj.metadata.owner_references if obj.metadata else None) or []
    return any(o.uid == uid for o in owners)


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class Publisher:
    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.discovery = kubernetes.client.DiscoveryV1Api(client)
        self._applied: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> digest

    def _apply_sync(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        args = (meta["name"], meta["namespace"], obj)
        kw: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            "_request_timeout": 30,
        }
        if kind == "Service":
            self._check_owner(meta)
            self.core.patch_namespaced_service(*args, **kw)
        elif kind == "EndpointSlice":
            self.discovery.patch_namespaced_endpoint_slice(*args, **kw)
        elif kind == "ConfigMap":
            self.core.patch_namespaced_config_map(*args, **kw)
        else:
            raise ValueError(f"cannot publish a {kind}")

    def _check_owner(self, meta: dict[str, Any]) -> None:
        try:
            existing = self.core.read_namespaced_service(meta["name"], meta["namespace"], _request_timeout=30)
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
        """Apply the objects that changed since last applied. Returns the problems (the
        others are still applied)."""
        problems = []
        for obj in objs:
            key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            digest = _digest(obj)
            if self._applied.get(key) == digest:
                continue
            try:
                await asyncio.to_thread(self._apply_sync, obj)
            except PublishConflictError as exc:
                problems.append(str(exc))
                continue
            self._applied[key] = digest
        return problems

    async def prune_slices(self, namespace: str, pool: str, keep: set[str]) -> None:
        def run() -> None:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{POOL_LABEL}={pool}", _request_timeout=30
            )
            for s in slices.items:
                name = str(s.metadata.name) if s.metadata else ""
                if name and name not in keep:
                    self._delete(self.discovery.delete_namespaced_endpoint_slice, name, namespace)
                    self._applied.pop(("EndpointSlice", namespace, name), None)

        await asyncio.to_thread(run)

    @staticmethod
    def _delete(fn: Any, name: str, namespace: str) -> None:
        try:
            fn(name, namespace, _request_timeout=30)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_all(self, namespace: str, pool: str, uid: str) -> None:
        """Remove everything this pool published (no garbage collector needed)."""
        await self.prune_slices(namespace, pool, keep=set())

        def run() -> None:
            self._delete(self.core.delete_namespaced_config_map, routing_configmap_name(pool), namespace)
            try:
                svc = self.core.read_namespaced_service(pool, namespace, _request_timeout=30)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            if _owned_by(svc, uid):
                self._delete(self.core.delete_namespaced_service, pool, namespace)

        await asyncio.to_thread(run)
        for key in [k for k in self._applied if k[1] == namespace and (k[2] == pool or k[2].startswith(pool + "-"))]:
            self._applied.pop(key, None)
