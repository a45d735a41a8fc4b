"""The operator's own Kubernetes client, for writes kopf does not make for a daemon.

kopf applies a daemon's patch only when the daemon returns; a pool's daemon runs for
the pool's lifetime, so it writes status itself, through this adapter. The kubernetes
client is synchronous: every call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool import api

log = logging.getLogger(__name__)


def load_config() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


class StatusWriter:
    """Merge-patches the status subresource of ClusterPools."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._api = kubernetes.client.CustomObjectsApi(client)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """True when written; False when the pool is gone (deleted meanwhile)."""
        try:
            await asyncio.to_thread(
                self._api.patch_namespaced_custom_object_status,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                {"status": status},
                _request_timeout=30,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


class SecretReader:
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


class APIReachable(Protocol):
    def api_down(self, exc: BaseException) -> None: ...
    def api_up(self) -> None: ...


async def watch_api(
    client: kubernetes.client.ApiClient, listeners: Callable[[], Iterable[APIReachable]], interval: float = 2.0
) -> None:
    """Ask the API server for its version every `interval` seconds and tell the listeners
    (the pools' runners) when it stops and starts answering. A pool with nothing to write
    would not notice an outage otherwise."""
    version = kubernetes.client.VersionApi(client)
    while True:
        try:
            await asyncio.to_thread(version.get_code, _request_timeout=3)
        except Exception as exc:  # any failure to answer is an outage here
            for listener in listeners():
                listener.api_down(exc)
        else:
            for listener in listeners():
                listener.api_up()
        await asyncio.sleep(interval)
