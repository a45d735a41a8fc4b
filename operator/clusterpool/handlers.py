"""kopf wiring: settings, one daemon per ClusterPool, and a nudge on spec changes.

Thin on purpose: the loop lives in runner.PoolRunner. Handlers return None and write
nothing themselves; the daemon writes status through k8s.client.StatusWriter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from clusterpool import api
from clusterpool.k8s.client import SecretReader, StatusWriter, load_config, watch_api
from clusterpool.k8s.publish import Publisher
from clusterpool.metrics import Metrics
from clusterpool.runner import PoolRunner

FINALIZER = f"{api.GROUP}/finalizer"
METRICS = Metrics()  # prometheus_client's default registry, served by __main__ with --metrics


def configure_settings(settings: kopf.OperatorSettings) -> None:
    # Our own prefixes for the finalizer and kopf's bookkeeping annotations, from day one:
    # changing them later strands objects with the old marks.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
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


@kopf.on.startup(id="configure")
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings)
    client = load_config()
    memo["status_writer"] = StatusWriter(client)
    memo["publisher"] = Publisher(client)
    memo["secrets"] = SecretReader(client)
    memo["runners"] = {}  # (namespace, name) -> PoolRunner; shared: per-object memos copy this dict's reference
    runners: dict[tuple[str, str], PoolRunner] = memo["runners"]
    memo["api_watch"] = asyncio.create_task(watch_api(client, lambda: [*runners.values(), METRICS]), name="api-watch")


@kopf.on.cleanup(id="stop-api-watch")
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("api_watch")
    if task is not None:
        task.cancel()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, id="pool", cancellation_backoff=5.0, cancellation_timeout=10.0)
async def pool_daemon(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    writer: StatusWriter = memo["status_writer"]
    namespace, name = body.metadata.namespace or "default", body.metadata.name or ""

    async def write_status(status: dict[str, Any]) -> bool:
        return await writer.patch_status(namespace, name, status)

    metrics = METRICS.pool(namespace, name)

    def emit(type_: str, reason: str, message: str) -> None:
        metrics.event(type_, reason)
        kopf.event(body, type=type_, reason=reason, message=message)

    index: kopf.Index[str, Any] = kwargs["slices_by_namespace"]

    def slices() -> list[Any]:
        return list(index.get(namespace, []))

    runner = PoolRunner(
        body,
        write_status,
        emit,
        logger,
        publisher=memo["publisher"],
        slices=slices,
        secrets=memo["secrets"].read,
        metrics=metrics,
    )
    memo["wake"] = runner.wake
    runners: dict[tuple[str, str], PoolRunner] = memo["runners"]
    runners[(namespace, name)] = runner

    async def relay_stop() -> None:
        await stopped.wait()
        runner.stop()

    relay = asyncio.create_task(relay_stop())
    try:
        await runner.run()
    finally:
        relay.cancel()
        runners.pop((namespace, name), None)
        metrics.forget()
    if body.metadata.get("deletionTimestamp"):
        # The pool is going away: remove what it published (a real cluster's garbage
        # collector would too, through the ownerReferences; the test control plane has none).
        await runner.unpublish()


@kopf.index("discovery.k8s.io", "v1", "endpointslices", id="slices_by_namespace")
def slices_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str | None, Any]:
    """EndpointSlices by namespace, for pools with Kubernetes discovery (kept by kopf's watch)."""
    return {
        namespace: {
            "metadata": {"name": body.metadata.name, "labels": dict(body.metadata.labels)},
            "ports": list(body.get("ports") or []),
            "endpoints": list(body.get("endpoints") or []),
        }
    }


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", id="slice-changed")
def slice_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Wake the pools that follow this slice, so a change reaches them at once."""
    for (ns, _name), runner in list(memo["runners"].items()):
        if ns == namespace and runner.follows(labels):
            runner.wake.set()


@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, id="spec-changed", field="spec")
def spec_changed(memo: kopf.Memo, **_: Any) -> None:
    """Wake the pool's daemon so a spec change applies now, not after the interval."""
    wake = memo.get("wake")
    if wake is not None:
        wake.set()
