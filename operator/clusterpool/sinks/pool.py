"""A pool's sinks together: each run by its own task, their conditions, and removing what they published."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clusterpool.core.status import ConditionSpec
from clusterpool.sinks.cache import CacheMonitor, CacheSink
from clusterpool.sinks.consul import ConsulSink
from clusterpool.sinks.objects import ObjectPublisher, ObjectsSink
from clusterpool.sinks.task import SinkTask, stored_condition
from clusterpool.stages import Emit, Log, PoolSecrets, Sink, Snapshot, Wake


class PoolSinks:
    """The Kubernetes objects, Consul and the cache check, offered each new snapshot."""

    def __init__(
        self,
        body: Mapping[str, Any],
        publisher: ObjectPublisher | None,
        secrets: PoolSecrets,
        emit: Emit,
        wake: Wake,
        log: Log,
        timeout: float,
    ) -> None:
        stored = body.get("status") or {}
        self.cache = CacheMonitor(secrets, emit, log, wake, stored.get("cache"))
        named: list[tuple[str, Sink]] = [
            ("publishing the Service, EndpointSlices and ConfigMap", ObjectsSink(body, publisher, emit)),
            ("registering in Consul", ConsulSink(body, secrets, emit)),
            ("checking the cache", CacheSink(body, self.cache, wake)),
        ]
        for _, sink in named:
            sink.condition = stored_condition(stored, sink.condition_type)
        self.tasks = [SinkTask(name, sink, timeout, wake, log) for name, sink in named]

    def offer(self, snapshot: Snapshot) -> None:
        for task in self.tasks:
            task.offer(snapshot)

    def conditions(self) -> list[ConditionSpec]:
        return [t.sink.condition for t in self.tasks if t.sink.condition is not None]

    def cache_status(self) -> dict[str, Any] | None:
        return self.cache.status()

    async def close(self) -> None:
        for task in self.tasks:
            await task.close()


async def remove_published(body: Mapping[str, Any], publisher: ObjectPublisher | None, secrets: PoolSecrets) -> None:
    """Remove everything the pool published: its Consul registrations (found by their
    meta, so also those an earlier operator made) and its Kubernetes objects. Raises when
    something could not be removed; the caller retries."""
    for sink in (ConsulSink(body, secrets, _no_events), ObjectsSink(body, publisher, _no_events)):
        await sink.remove()


def _no_events(type_: str, reason: str, message: str) -> None:
    """Removing posts no Events (the sinks post them only when a sync fails)."""
