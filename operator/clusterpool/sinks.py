"""Sinks: the stages that take a pool's state somewhere else (its Kubernetes objects,
Consul, the cache check), each on its own.

A sink is one coroutine function, `sync(state) -> condition`. `SinkTask` runs it in a task of its
own: the pool loop offers the newest state and goes on; the task syncs the latest state
offered (older ones are skipped, never queued) under the sink's own timeout. A slow,
failing or hanging sink therefore delays neither detection, nor the status write, nor
another sink; its condition says what went wrong, and the loop is woken when the
condition changes so the status shows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clusterpool.core.status import ConditionSpec
from clusterpool.k8s.writes import NotOwnedError, api_unreachable

Sink = Callable[[Any], Awaitable[ConditionSpec | None]]


class SinkTask:
    def __init__(
        self,
        name: str,
        sink: Sink,
        timeout: float,
        changed: Callable[[], None],
        log: logging.Logger | logging.LoggerAdapter[Any],
        condition_type: str,
    ) -> None:
        self.name, self.sink, self.timeout, self.changed, self.log = name, sink, timeout, changed, log
        self.condition_type = condition_type
        self.condition: ConditionSpec | None = None  # the wiring may seed it from the stored status
        self._latest: Any = None
        self._offered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.syncs = 0  # finished syncs (for tests and metrics)

    def offer(self, state: Any) -> None:
        """The newest state; replaces one not yet taken."""
        self._latest = state
        self._offered.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def _run(self) -> None:
        while True:
            await self._offered.wait()
            self._offered.clear()
            state = self._latest
            try:
                async with asyncio.timeout(self.timeout):
                    condition = await self.sink(state)
            except NotOwnedError:  # the replica lost the pool meanwhile: nothing to report, it writes nothing
                self.log.debug("%s: not sent, the pool is no longer certainly this replica's", self.name)
                continue
            except TimeoutError:
                condition = ConditionSpec(
                    self.condition_type,
                    "False",
                    "Timeout",
                    f"{self.name} took longer than {self.timeout:g}s; retrying with the newest state",
                )
            except Exception as exc:  # a bug or an unexpected answer: reported, the others go on
                condition = ConditionSpec(
                    self.condition_type, "False", "Failed", f"{self.name} failed: {type(exc).__name__}; retrying"
                )
                if not api_unreachable(exc):
                    self.log.exception("%s failed", self.name)
                elif condition != self.condition:  # the API server slow or away: one line when it starts
                    self.log.warning("%s failed: %s; retrying", self.name, exc)
            self.syncs += 1
            if condition != self.condition:
                self.condition = condition
                self.changed()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # until it ended; what it raised is of no interest here
