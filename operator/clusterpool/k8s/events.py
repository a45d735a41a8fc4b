"""Kubernetes Events for pools, posted the way Kubernetes' own components post them.

- A repeat of an Event (same pool, type, reason and message) within `REPEAT_WINDOW`
  updates the existing Event's `count` and `lastTimestamp` instead of creating another
  object (client-go's EventCorrelator does the same); count updates of one Event coalesce
  in the write queue, so a burst of repeats is one write.
- New Events are bounded per pool by a token bucket (`BURST`, then one per
  `REFILL_SECONDS`): a fleet of pools flapping together cannot flood the API server.
  What the bucket refuses is counted, logged at debug level, and left out.
- `reportingComponent` is the operator's own name, `reportingInstance` the replica.

Posting never blocks the caller: Events go through the INFO lane of the write queue, so
they never delay a status or EndpointSlice write.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from clusterpool import api
from clusterpool.core.status import rfc3339
from clusterpool.k8s.writes import Lane, WriteQueue, send

log = logging.getLogger(__name__)

COMPONENT = "clusterpool-operator"
REPEAT_WINDOW = 600.0  # seconds, as client-go
BURST = 25
REFILL_SECONDS = 10.0
REMEMBERED = 4096  # Events remembered for counting repeats (least recently used dropped)


@dataclass
class _Posted:
    body: dict[str, Any]
    last_seen: float
    created: bool = False  # set by the writing thread once the API server has it


@dataclass
class _Bucket:
    tokens: float
    at: float


class EventRecorder:
    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        writes: WriteQueue,
        instance: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = kubernetes.client.CoreV1Api(client)
        self._writes = writes
        self._instance = instance
        self._clock = clock
        self._posted: OrderedDict[tuple[str, ...], _Posted] = OrderedDict()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.suppressed = 0

    def post(self, pool: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
        """Post (or count a repeat of) an Event about `pool` (its metadata: namespace, name,
        uid). False when the per-pool budget refused it."""
        ns, name, uid = str(pool["namespace"]), str(pool["name"]), str(pool.get("uid") or "")
        now, stamp = self._clock(), rfc3339(datetime.now(UTC))
        key = (ns, name, uid, type_, reason, message)
        seen = self._posted.get(key)
        if seen is not None and now - seen.last_seen < REPEAT_WINDOW:
            seen.body["count"] += 1
            seen.body["lastTimestamp"] = stamp
            seen.last_seen = now
            self._posted.move_to_end(key)
            self._send(seen, (ns, name))
            return True
        if not self._take_token((ns, name), now):
            self.suppressed += 1
            log.debug("Event %s for %s/%s left out: over the per-pool budget", reason, ns, name)
            return False
        posted = _Posted(
            {
                "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": ns},
                "involvedObject": {
                    "apiVersion": f"{api.GROUP}/{api.VERSION}",
                    "kind": api.KIND,
                    "name": name,
                    "namespace": ns,
                    "uid": uid,
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": self._instance[:128],
            },
            now,
        )
        self._posted[key] = posted
        while len(self._posted) > REMEMBERED:
            self._posted.popitem(last=False)
        self._send(posted, (ns, name))
        return True

    def forget(self, namespace: str, name: str) -> None:
        """The pool is gone: drop what was remembered of it."""
        for key in [k for k in self._posted if k[0] == namespace and k[1] == name]:
            del self._posted[key]
        self._buckets.pop((namespace, name), None)

    def remembered(self) -> int:
        """Pools with remembered Events or an Event budget (read from the metrics thread:
        the keys are copied in one step before they are looked at)."""
        return len({k[:2] for k in list(self._posted)} | set(list(self._buckets)))

    def _take_token(self, pool: tuple[str, str], now: float) -> bool:
        b = self._buckets.get(pool)
        if b is None:
            b = self._buckets[pool] = _Bucket(float(BURST), now)
        b.tokens = min(float(BURST), b.tokens + (now - b.at) / REFILL_SECONDS)
        b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def _send(self, posted: _Posted, pool: tuple[str, str]) -> None:
        """Create the Event, or, once created, patch its count: one write in flight per
        Event, and repeats that pile up meanwhile become one patch."""
        body = dict(posted.body)  # as of now: the loop goes on counting while this waits
        meta = body["metadata"]

        timeout = self._writes.request_timeout

        def call() -> None:
            if not posted.created:
                send(self._core.create_namespaced_event, meta["namespace"], body, _request_timeout=timeout)
                posted.created = True
                return
            patch = {"count": body["count"], "lastTimestamp": body["lastTimestamp"]}
            try:
                name, namespace = meta["name"], meta["namespace"]
                send(self._core.patch_namespaced_event, name, namespace, patch, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 404:  # expired (the API server keeps Events for an hour): fine
                    raise

        self._writes.submit(Lane.INFO, ("Event", meta["namespace"], meta["name"]), pool, call).add_done_callback(
            _log_failure
        )


def _log_failure(done: Any) -> None:
    exc = done.exception() if not done.cancelled() else None
    if exc is not None:
        log.debug("posting an Event failed: %s", type(exc).__name__)
