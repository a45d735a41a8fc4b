"""The operator's own Kubernetes client, for writes kopf does not make for a daemon.

kopf applies a daemon's patch only when the daemon returns; a pool's daemon runs for
the pool's lifetime, so it writes status itself, through this adapter. The kubernetes
client is synchronous: every call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool import api
from clusterpool.core.status import merge_patch
from clusterpool.k8s.writes import Lane, WriteQueue, send, version_of

log = logging.getLogger(__name__)

CONNECTIONS = 32  # urllib3's pool: at least the write queue's workers plus the reads


def load_config() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = CONNECTIONS
    # No silent retries: a write decided while this replica owned a pool must land (or
    # fail) within a bounded time (WriteQueue.request_timeout); rounds retry instead.
    config.retries = False
    return kubernetes.client.ApiClient(config)


CONFLICT_RETRIES = 3  # status writes refused for a stale resourceVersion, re-read and sent again


class StatusWriter:
    """Merge-patches the status subresource of ClusterPools, on the HEALTH lane.

    Writes of one pool coalesce: the patch is computed when the write is sent, against
    the status last written, so a write that waited and was replaced loses nothing.

    Every patch carries the resourceVersion of the status it was computed against, so the
    API server applies it only to that very version (409 Conflict otherwise). A write that
    had passed the shard fence and was still being sent when its replica froze (SIGSTOP, a
    partition) lands, if at all, on a version another replica has not written since: it
    can never blend into the new driver's status. On a conflict the writer re-reads the
    pool and sends again, through the queue, so the fence is asked again first."""

    def __init__(self, client: kubernetes.client.ApiClient, writes: WriteQueue, field_manager: str) -> None:
        self._api = kubernetes.client.CustomObjectsApi(client)
        self._writes = writes
        self._field_manager = field_manager
        # per pool: the status this replica knows is stored, and the version storing it
        self._written: dict[tuple[str, str], tuple[dict[str, Any], str | None]] = {}
        self.conflicts = 0  # writes refused for a stale version (each re-read and sent again)

    async def write(
        self, namespace: str, name: str, status: dict[str, Any], stored: Mapping[str, Any], version: str | None
    ) -> bool:
        """Make the pool's status `status` (`stored`, `version`: the status and the
        resourceVersion this replica last saw when it knows of no write of its own since).
        True when written; False when the pool is gone."""
        key = (namespace, name)

        def patch() -> bool:
            before, known_version = self._written.get(key, (stored, version))
            body: dict[str, Any] = {"status": merge_patch(before, status)}
            if known_version is not None:
                body["metadata"] = {"resourceVersion": known_version}
            try:
                answer = send(
                    self._api.patch_namespaced_custom_object_status,
                    api.GROUP,
                    api.VERSION,
                    namespace,
                    api.PLURAL,
                    name,
                    body,
                    field_manager=self._field_manager,
                    _request_timeout=self._writes.request_timeout,
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            self._written[key] = (status, version_of(answer))
            return True

        conflicts = 0
        while True:
            try:
                return bool(await self._writes.write(Lane.HEALTH, ("ClusterPool/status", namespace, name), key, patch))
            except ApiException as exc:
                if exc.status != 409 or conflicts == CONFLICT_RETRIES:
                    raise
            conflicts += 1
            self.conflicts += 1
            pool = await self._read(namespace, name)
            if pool is None:
                return False
            self._written[key] = (pool.get("status") or {}, pool["metadata"]["resourceVersion"])

    async def read(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pool's status as the API server holds it now (a quorum read, not a watch's
        copy); None when the pool is gone."""
        pool = await self._read(namespace, name)
        if pool is None:
            return None
        status: Mapping[str, Any] = pool.get("status") or {}
        return status

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pool: Any = await asyncio.to_thread(
                self._api.get_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                _request_timeout=self._writes.request_timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(pool)

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)

    def remembered(self) -> int:
        """Pools whose last written status is kept."""
        return len(self._written)


class SecretsClient:
    """Reads one key of a Secret (credentials are only ever taken from Secrets). Values are
    never logged; a missing Secret or key reads as None."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._core = kubernetes.client.CoreV1Api(client)

    async def read(self, namespace: str, name: str, key: str) -> str | None:
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace, _request_timeout=30)
        except ApiException as exc:
            if exc.status in (403, 404):
                log.warning("cannot read Secret %s/%s: %s", namespace, name, exc.reason)
                return None
            raise
        value = (secret.data or {}).get(key)
        return base64.b64decode(value).decode() if value else None


class APIHealth:
    """Whether the API server answers, held once for the whole operator: since when it has
    not, and how long the last outage lasted."""

    def __init__(self) -> None:
        self.down_since: datetime | None = None
        self.last_outage: tuple[int, datetime] | None = None  # (seconds, when it ended)

    def down(self) -> None:
        if self.down_since is None:
            self.down_since = datetime.now(UTC)

    def up(self) -> None:
        if self.down_since is not None:
            now = datetime.now(UTC)
            self.last_outage = (int((now - self.down_since).total_seconds()), now)
            self.down_since = None


class APIReachable(Protocol):
    def api_down(self, exc: BaseException) -> None: ...
    def api_up(self) -> None: ...


async def watch_api(
    client: kubernetes.client.ApiClient,
    health: APIHealth,
    listeners: Callable[[], Iterable[APIReachable]],
    interval: float = 2.0,
) -> None:
    """Ask the API server whether it is ready every `interval` seconds and tell the
    listeners (the pools' runners) when it stops and starts being so. A pool with nothing
    to write would not notice an outage otherwise.

    This is the one place that says the API is back: /readyz covers etcd (the version
    endpoint answers without it), and a round that happened to write nothing proves
    nothing, so each outage is one APIServerUnreachable and one APIServerReachable Event."""

    def ready() -> None:
        method, url, headers, _, _ = client.param_serialize(
            "GET", "/readyz", header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"]
        )
        answer = client.call_api(method, url, headers, _request_timeout=3)
        answer.read()  # type: ignore[no-untyped-call]
        if answer.status != 200:
            raise ApiException(status=answer.status, reason=answer.reason)

    while True:
        try:
            await asyncio.to_thread(ready)
        except Exception as exc:  # any failure to answer is an outage here
            health.down()
            for listener in listeners():
                listener.api_down(exc)
        else:
            health.up()
            for listener in listeners():
                listener.api_up()
        await asyncio.sleep(interval)
