"""SinkTask: runs one sink in a task of its own, on the newest state offered, under its timeout.

The pool loop offers the newest snapshot and goes on; the task syncs the latest one
offered (older ones are skipped, never queued) under the sink's own timeout. A slow,
failing or hanging sink therefore delays neither detection, nor the status write, nor
another sink; its condition says what went wrong, and the loop is woken when the
condition changes so the status shows it. Only this task calls the sink's sync() and,
after the task ended, its close(): a sink is never used by two tasks at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clusterpool.core.status import ConditionSpec
from clusterpool.k8s.writes import NotOwnedError, api_unreachable
from clusterpool.stages import Log, Sink, Snapshot, Wake

SINK_TIMEOUT = 20.0  # seconds a sink may take before its condition says Timeout


class SinkTask:
    def __init__(self, name: str, sink: Sink, timeout: float, wake: Wake, log: Log) -> None:
        self.name, self.sink, self.timeout, self.wake, self.log = name, sink, timeout, wake, log
        self._latest: Snapshot | None = None
        self._offered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, snapshot: Snapshot) -> None:
        """The newest snapshot; replaces one not yet taken."""
        self._latest = snapshot
        self._offered.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def _run(self) -> None:
        while True:
            await self._offered.wait()
            self._offered.clear()
            snapshot = self._latest
            if snapshot is None:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    condition = await self.sink.sync(snapshot)
            except NotOwnedError:  # the replica lost the pool meanwhile: nothing to report, it writes nothing
                self.log.debug("%s: not sent, the pool is no longer certainly this replica's", self.name)
                continue
            except TimeoutError:
                condition = self._failed(
                    "Timeout", f"{self.name} took longer than {self.timeout:g}s; retrying with the newest state"
                )
            except Exception as exc:  # a bug or an unexpected answer: reported, the others go on
                condition = self._failed("Failed", f"{self.name} failed: {type(exc).__name__}; retrying")
                if not api_unreachable(exc):
                    self.log.exception("%s failed", self.name)
                elif condition != self.sink.condition:  # the API server slow or away: one line when it starts
                    self.log.warning("%s failed: %s; retrying", self.name, exc)
            if condition != self.sink.condition:
                self.sink.condition = condition
                self.wake(f"{self.sink.condition_type} changed")

    def _failed(self, reason: str, message: str) -> ConditionSpec:
        return ConditionSpec(self.sink.condition_type, "False", reason, message)

    async def close(self) -> None:
        """Stop the task (what it raised is of no interest here), then close the sink."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await self.sink.close()


def stored_condition(status: Any, condition_type: str) -> ConditionSpec | None:
    """A sink's condition as the stored status has it: kept until the sink answers, so a
    restart does not flap it."""
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == condition_type:
            return ConditionSpec(c["type"], c["status"], c["reason"], c.get("message", ""))
    return None
