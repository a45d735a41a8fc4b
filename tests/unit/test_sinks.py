"""SinkTask: a sink runs on its own, and a write the shard fence refused is no failure."""

import asyncio
import logging

from clusterpool.core.status import ConditionSpec
from clusterpool.k8s.writes import NotOwnedError
from clusterpool.sinks import SinkTask

UP = ConditionSpec("Published", "True", "UpToDate", "published")


def sink_task(sink, changes: list, changed: asyncio.Event) -> SinkTask:
    def on_change() -> None:
        changes.append(task.condition)
        changed.set()

    task = SinkTask("publishing", sink, 5.0, on_change, logging.getLogger("t"), "Published")
    return task


async def test_a_write_the_fence_refused_changes_no_condition_and_logs_no_error(caplog):
    async def sink(state: str) -> ConditionSpec:
        if state == "while another replica holds the pool":
            raise NotOwnedError("not sent")
        return UP

    changes: list[ConditionSpec | None] = []
    changed = asyncio.Event()
    task = sink_task(sink, changes, changed)
    caplog.set_level(logging.DEBUG)
    task.offer("while another replica holds the pool")
    await asyncio.sleep(0)  # the task takes that state
    task.offer("back in charge")  # states are synced in order: this one after the refused one
    await asyncio.wait_for(changed.wait(), 5)
    await task.close()
    assert changes == [UP]  # no Failed before it: the refused write is no failure
    assert task.syncs == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not sent" in r.getMessage() for r in caplog.records)


async def test_a_failing_sink_reports_failed_and_logs_the_error(caplog):
    async def sink(state: str) -> ConditionSpec:
        raise RuntimeError("a bug")

    changes: list[ConditionSpec | None] = []
    changed = asyncio.Event()
    task = sink_task(sink, changes, changed)
    task.offer("state")
    await asyncio.wait_for(changed.wait(), 5)
    await task.close()
    assert [(c.status, c.reason) for c in changes] == [("False", "Failed")]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
