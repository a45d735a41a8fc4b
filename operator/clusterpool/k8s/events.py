"""Kubernetes Events for pools, posted the way Kubernetes' own components post them.

- A repeat of an Event (same pool, type, reason and message) within `REPEAT_WINDOW`
  updates the existing Event's `count` and `lastTimestamp` instead of creating another
  object (client-go's EventCorrelator does the same); count updates of one Event coalesce
  in the write queue, so a burst of repeats is one write.
- Every Event write of a pool, a new Event or a count update, takes a token of the pool's
  bucket (`BURST`, then one per `REFILL_SECONDS`), as client-go's spam filter charges
  every Event: a fleet of pools flapping together cannot flood the API server, whatever
  the flap rate. A new Event the bucket refuses is counted, logged at debug level, and
  left out; a count update it refuses is not lost: the count goes on growing and is
  written with the next token (at the latest `REFILL_SECONDS` later).
- `reportingComponent` is the operator's own name, `reportingInstance` the replica.

Posting never blocks the caller: Events go through the INFO lane of the write queue, so
they never delay a status or EndpointSlice write.
"""

from __future__ import annotations

import asyncio
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
from clusterpool.core.budget import TokenBucket
from clusterpool.core.publish import OPERATOR
from clusterpool.core.status import rfc3339
from clusterpool.k8s.writes import Lane, WriteQueue, send

log = logging.getLogger(__name__)

COMPONENT = OPERATOR
REPEAT_WINDOW = 600.0  # seconds, as client-go
BURST = 25
REFILL_SECONDS = 10.0
REMEMBERED = 4096  # Events remembered for counting repeats (least recently used dropped)


@dataclass
class _Posted:
    body: dict[str, Any]
    last_seen: float
    created: bool = False  # set by the writing thread once the API server has it
    unsent: bool = False  # a count newer than the last one sent, waiting for a token


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
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._flush_due: set[tuple[str, ...]] = set()  # Events with a count waiting for a token
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
            seen.unsent = True
            self._send_count(key)
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

    def _send_count(self, key: tuple[str, ...]) -> None:
        """Write the Event's newest count if the pool's bucket has a token; else try again
        when one has come."""
        posted = self._posted.get(key)
        if posted is None or not posted.unsent:
            return
        if self._take_token((key[0], key[1]), self._clock()):
            posted.unsent = False
            self._send(posted, (key[0], key[1]))
            return
        if key in self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait on: the next repeat carries the count
            return
        self._flush_due.add(key)

        def retry() -> None:
            self._flush_due.discard(key)
            self._send_count(key)

        loop.call_later(REFILL_SECONDS, retry)

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
            b = self._buckets[pool] = TokenBucket(BURST, REFILL_SECONDS, now)
        return b.take(now)

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
