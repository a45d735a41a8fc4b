"""Where the gateway's tables (and API keys) come from: routing-table files, re-read when
they change, and the routing ConfigMaps of whole namespaces, listed and then watched
through the Kubernetes API in a thread each (the loop gets every change by
call_soon_threadsafe, milliseconds after the operator writes it)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clusterpool.client.routing import RoutingTable, RoutingTableError
from clusterpool.core.names import POOL_LABEL, ROUTING_KEY, routing_configmap_name
from clusterpool.gateway.routes import PoolKey, Routes

log = logging.getLogger(__name__)


class RoutingFiles:
    """Static routing-table files; `poll()` re-reads those whose stamp changed. A file's
    pool is its table's `pool` (namespace `default` and the file's stem without one)."""

    def __init__(self, paths: tuple[str, ...], routes: Routes) -> None:
        self.routes = routes
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._keys: dict[Path, PoolKey] = {}
        self.paths = [Path(p) for p in paths]

    @property
    def ready(self) -> bool:
        return len(self._keys) == len(self.paths)

    def poll(self) -> None:
        for path in self.paths:
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if self._stamps.get(path) == stamp:
                    continue
                table = RoutingTable.parse(path.read_bytes())
            except (OSError, RoutingTableError) as exc:
                log.warning("routing file %s: keeping the last table: %s", path, exc)
                continue
            self._stamps[path] = stamp
            key = (table.namespace or "default", table.pool or path.stem)
            old = self._keys.get(path)
            if old is not None and old != key:
                self.routes.remove(old)
            self._keys[path] = key
            self.routes.put(key, table)


def _parse_configmap(obj: Any) -> tuple[PoolKey, RoutingTable | None] | None:
    """(the pool, its table) of a routing ConfigMap; None for another ConfigMap."""
    meta = obj.metadata
    pool = (meta.labels or {}).get(POOL_LABEL)
    if not pool or meta.name != routing_configmap_name(pool):
        return None
    data = (obj.data or {}).get(ROUTING_KEY)
    if not data:
        return (meta.namespace, pool), None
    try:
        return (meta.namespace, pool), RoutingTable.parse(data)
    except RoutingTableError as exc:
        log.warning("ConfigMap %s/%s: keeping the last table: %s", meta.namespace, meta.name, exc)
        return None


class NamespaceWatch:
    """The routing ConfigMaps of one namespace: listed, then watched; a failed watch lists
    again (pools that went away meanwhile are dropped) after a backoff."""

    def __init__(self, namespace: str, routes: Routes, loop: asyncio.AbstractEventLoop, api_client: Any) -> None:
        import kubernetes

        self.namespace, self.routes, self.loop = namespace, routes, loop
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.ready = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"gateway-watch-{namespace}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def _list(self) -> str:
        cms = self.core.list_namespaced_config_map(self.namespace, label_selector=POOL_LABEL, _request_timeout=30)
        seen: dict[PoolKey, RoutingTable] = {}
        for cm in cms.items:
            parsed = _parse_configmap(cm)
            if parsed is not None and parsed[1] is not None:
                seen[parsed[0]] = parsed[1]
        self._call(self._replace, seen)
        return str(cms.metadata.resource_version)  # type: ignore[union-attr]

    def _replace(self, seen: dict[PoolKey, RoutingTable]) -> None:
        for key in [k for k in self.routes.pools if k[0] == self.namespace and k not in seen]:
            self.routes.remove(key)
        for key, table in seen.items():
            self.routes.put(key, table)
        self.ready = True

    def _run(self) -> None:
        follow(self._stop, f"routing ConfigMaps in {self.namespace}", self._round)

    def _round(self, w: Any) -> None:
        version = self._list()
        for ev in w.stream(
            self.core.list_namespaced_config_map,
            self.namespace,
            label_selector=POOL_LABEL,
            resource_version=version,
            timeout_seconds=300,
            allow_watch_bookmarks=True,
        ):
            if self._stop.is_set():
                break
            if ev["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            parsed = _parse_configmap(ev["object"])
            if parsed is None:
                continue
            key, table = parsed
            if ev["type"] == "DELETED" or table is None:
                self._call(self.routes.remove, key)
            else:
                self._call(self.routes.put, key, table)


class SecretWatch:
    """The API keys Secret: read, then watched; `apply(data or None)` runs on the loop."""

    def __init__(
        self,
        namespace: str,
        name: str,
        apply: Callable[[dict[str, str] | None], None],
        loop: asyncio.AbstractEventLoop,
        api_client: Any,
    ) -> None:
        import kubernetes

        self.namespace, self.name, self.apply, self.loop = namespace, name, apply, loop
        self.core = kubernetes.client.CoreV1Api(api_client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gateway-watch-keys")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        follow(self._stop, f"Secret {self.namespace}/{self.name}", self._round)

    def _round(self, w: Any) -> None:
        listed = self.core.list_namespaced_secret(
            self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=30
        )
        data: Any = (listed.items[0].data or {}) if listed.items else None
        if data is None:
            log.warning("API keys Secret %s/%s not found: every request is refused", self.namespace, self.name)
        self.loop.call_soon_threadsafe(self.apply, data)
        for ev in w.stream(
            self.core.list_namespaced_secret,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=listed.metadata.resource_version,  # type: ignore[union-attr]
            timeout_seconds=300,
        ):
            if self._stop.is_set():
                break
            if ev["type"] == "DELETED":
                self.loop.call_soon_threadsafe(self.apply, None)
            elif ev["type"] in ("ADDED", "MODIFIED"):
                self.loop.call_soon_threadsafe(self.apply, ev["object"].data or {})


def follow(stop: threading.Event, what: str, one_round: Callable[[Any], None]) -> None:
    """List and watch until stopped: `one_round(watch)` lists, then streams the watch; when
    it fails (the API is away, the watch expired) it runs again after a backoff, and what
    was read before stays in use meanwhile."""
    import kubernetes

    backoff = 0.5
    while not stop.is_set():
        w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        try:
            one_round(w)
            backoff = 0.5
        except Exception as exc:
            log.warning("watch of %s failed (%s); again in %.1fs", what, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            w.stop()  # type: ignore[no-untyped-call]


def kubernetes_client() -> Any:
    """In-cluster config in a pod, $KUBECONFIG (or ~/.kube/config) elsewhere."""
    import kubernetes

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return kubernetes.client.ApiClient()
    return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]


class Sources:
    """Everything the gateway follows: routing files, the namespaces' routing ConfigMaps, the
    API keys Secret; ready when each has been read once."""

    def __init__(
        self,
        routes: Routes,
        files: tuple[str, ...],
        namespaces: tuple[str, ...],
        keys_secret: tuple[str, str] | None,
        apply_keys: Callable[[dict[str, str] | None], None],
    ) -> None:
        self.files = RoutingFiles(files, routes)
        self.routes, self.namespaces = routes, namespaces
        self.keys_secret, self.apply_keys = keys_secret, apply_keys
        self.watches: list[NamespaceWatch] = []
        self.secret: SecretWatch | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.files.poll()
        if not self.namespaces and self.keys_secret is None:
            return
        api = kubernetes_client()
        self.watches = [NamespaceWatch(ns, self.routes, loop, api) for ns in self.namespaces]
        for w in self.watches:
            w.start()
        if self.keys_secret is not None:
            self.secret = SecretWatch(*self.keys_secret, self.apply_keys, loop, api)
            self.secret.start()

    @property
    def ready(self) -> bool:
        return self.files.ready and all(w.ready for w in self.watches)

    def stop(self) -> None:
        for w in self.watches:
            w.stop()
        if self.secret is not None:
            self.secret.stop()
