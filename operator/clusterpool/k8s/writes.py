"""Every Kubernetes write the operator makes, off the event loop, on threads of its own.

The kubernetes client is synchronous. Sending each call to asyncio's default executor
(cores + 4 threads, shared with everything else) queued a pool's status behind other
pools' Service applies and Events: at a few hundred pools, detection took several
intervals. Here instead:

- two lanes with workers of their own: HEALTH (status, the Service, EndpointSlices, the
  routing ConfigMap, and their removal when a pool goes: what clients act on) and INFO
  (Events): an informational write never delays a health-changing one, and while health
  writes wait for a worker the INFO lane sends with one worker only (the API server
  is shared: at 1,000 pools, Events took a third of its writes during a detection);
- one write in flight per object; a newer write for an object replaces the one still
  waiting (latest wins), and whoever awaited the replaced write gets the newer result;
- the backlog is bounded by the number of objects, not by the number of rounds;
- `fence`, when given, is asked right before each write is sent: a replica that no longer
  certainly owns a pool sends nothing for it (see k8s/shards.py), and `request_timeout`
  bounds how long a write that was sent may take.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException


def api_unreachable(exc: BaseException) -> bool:
    """A connection failure or a 5xx from the API server (as opposed to a bug)."""
    if isinstance(exc, ApiException):
        return exc.status in (0, None) or exc.status >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError)


def send(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Make a write without turning the answer into model objects (the kubernetes client's
    deserialization was a large share of the operator's CPU); the body is read, so the
    connection goes back to the pool, and returned as it came. Non-2xx answers still raise
    ApiException."""
    body: bytes = call(*args, _preload_content=False, **kwargs).read()
    return body


def version_of(answer: bytes) -> str | None:
    """The resourceVersion of the object a write answered with (see send)."""
    try:
        version = json.loads(answer)["metadata"]["resourceVersion"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None


class Lane(enum.Enum):
    HEALTH = "health"
    INFO = "info"


class NotOwnedError(Exception):
    """The write was not sent: this replica no longer owns the object's pool."""


Fence = Callable[[Hashable], bool]  # pool key -> may this replica write for it now


@dataclass
class _Pending:
    call: Callable[[], Any]
    pool: Hashable
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class WriteQueue:
    def __init__(
        self, health_workers: int = 12, info_workers: int = 4, fence: Fence | None = None, request_timeout: float = 5.0
    ) -> None:
        self.fence = fence
        # every write's own timeout: with sharding, under a third of the Lease, so a write
        # decided while the pool was this replica's cannot land after another took over
        self.request_timeout = request_timeout
        self._workers = {Lane.HEALTH: health_workers, Lane.INFO: info_workers}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=health_workers + info_workers, thread_name_prefix="k8s-write"
        )
        self._pending: dict[Hashable, _Pending] = {}
        self._in_flight: dict[Hashable, Hashable] = {}  # object key -> the pool it was sent for
        self._landed = asyncio.Condition()  # notified whenever a sent write has returned
        self._ready: dict[Lane, asyncio.Queue[Hashable]] = {}
        self._lane_of: dict[Hashable, Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = dict.fromkeys(Lane, 0)  # writes sent per lane (refused by the fence: not counted)

    def _start(self) -> None:
        if self._tasks:
            return
        for lane, n in self._workers.items():
            self._ready[lane] = asyncio.Queue()
            self._tasks += [asyncio.create_task(self._work(lane, i), name=f"k8s-{lane.value}-{i}") for i in range(n)]

    def submit(self, lane: Lane, key: Hashable, pool: Hashable, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue `call` (a blocking client call) as the latest write of object `key`,
        made on behalf of `pool`. The future resolves with its result, or with that of a
        newer write of the same object that replaced it."""
        self._start()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending.get(key)
        if pending is not None:
            pending.call, pending.pool = call, pool
            pending.waiters.append(waiter)
            return waiter
        self._pending[key] = _Pending(call, pool, [waiter])
        self._lane_of[key] = lane
        if key not in self._in_flight:
            self._ready[lane].put_nowait(key)
        return waiter

    async def write(self, lane: Lane, key: Hashable, pool: Hashable, call: Callable[[], Any]) -> Any:
        return await self.submit(lane, key, pool, call)

    async def run_blocking(self, call: Callable[[], Any]) -> Any:
        """A read or any other call that is not a write of one object (no coalescing)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def settle(self, pool: Hashable) -> None:
        """Drop the pool's writes still waiting and wait for the ones already sent: once
        this returns nothing more is written for the pool unless it is submitted anew
        (the delete handler calls it before removing what the pool published, so a late
        apply cannot bring an object back)."""
        for key, pending in list(self._pending.items()):
            if pending.pool == pool:
                del self._pending[key]
                if key not in self._in_flight:
                    self._lane_of.pop(key, None)
                for w in pending.waiters:
                    w.cancel()
        async with self._landed:
            await self._landed.wait_for(lambda: pool not in self._in_flight.values())

    def backlog_by_lane(self) -> dict[Lane, int]:
        """Objects with a write waiting, per lane (a write in flight is not waiting)."""
        out = dict.fromkeys(Lane, 0)
        for key in self._pending:
            out[self._lane_of[key]] += 1
        return out

    def remembered(self) -> int:
        """Objects with a write waiting or in flight."""
        return len(self._pending.keys() | self._in_flight.keys())

    async def _work(self, lane: Lane, index: int) -> None:
        loop = asyncio.get_running_loop()
        queue = self._ready[lane]
        health = self._ready[Lane.HEALTH]
        while True:
            if lane is Lane.INFO and index > 0 and not health.empty():
                async with self._landed:  # a health worker takes the next one when its write lands
                    await self._landed.wait_for(health.empty)
            key = await queue.get()
            pending = self._pending.pop(key, None)
            if pending is None:
                continue
            self._in_flight[key] = pending.pool
            try:
                if self.fence is not None and not self.fence(pending.pool):
                    raise NotOwnedError(f"not sent: {pending.pool} is not certainly this replica's")
                self.sent[lane] += 1
                result = await loop.run_in_executor(self._executor, pending.call)
            except Exception as exc:
                for w in pending.waiters:
                    if not w.done():
                        w.set_exception(exc)
            else:
                for w in pending.waiters:
                    if not w.done():
                        w.set_result(result)
            finally:
                self._in_flight.pop(key, None)
                async with self._landed:
                    self._landed.notify_all()
                if key in self._pending:  # written again meanwhile: its turn now
                    self._ready[self._lane_of[key]].put_nowait(key)
                else:
                    self._lane_of.pop(key, None)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
