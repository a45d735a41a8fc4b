"""SinkTask: a sink runs on its own, and a write the shard fence refused is no failure."""

import asyncio
import logging

import urllib3

from clusterpool.core.status import ConditionSpec
from clusterpool.k8s.writes import NotOwnedError
from clusterpool.sinks.task import SinkTask

UP = ConditionSpec("Published", "True", "UpToDate", "published")


class FunctionSink:
    """A sink whose sync is the given coroutine function."""

    condition_type = "Published"

    def __init__(self, sync) -> None:
        self.sync = sync
        self.condition = None

    async def close(self) -> None:
        pass

    async def remove(self) -> None:
        pass


def sink_task(sync, changes: list, changed: asyncio.Event) -> SinkTask:
    sink = FunctionSink(sync)

    def on_change(reason: str) -> None:
        changes.append(sink.condition)
        changed.set()

    return SinkTask("publishing", sink, 5.0, on_change, logging.getLogger("t"))


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


async def test_an_api_server_that_does_not_answer_is_one_warning_not_a_traceback_per_try(caplog):
    """A read timeout from the API server (a busy one, under a creation storm) is
    reported in the condition; the log says it once, in one line, when it starts."""

    called = asyncio.Event()

    async def sink(state: str) -> ConditionSpec:
        called.set()  # (the task handles the answer in the same step, before the test resumes)
        if state.startswith("slow"):
            raise urllib3.exceptions.ReadTimeoutError(None, "/api", "Read timed out. (read timeout=3.75)")
        return UP

    changes: list[ConditionSpec | None] = []
    task = sink_task(sink, changes, asyncio.Event())
    for state in ("slow 1", "slow 2", "answers"):
        called.clear()
        task.offer(state)
        await asyncio.wait_for(called.wait(), 5)
    await task.close()
    assert [(c.status, c.reason) for c in changes] == [("False", "Failed"), ("True", "UpToDate")]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.exc_info) for r in warnings] == [(logging.WARNING, None)]
    assert "Read timed out" in warnings[0].getMessage()


async def test_close_stops_the_task_when_its_write_ends_at_the_same_moment():
    """A write refused by the fence (or answered) just as the runner closes the sink: the
    close must still end the task. (Python 3.11's wait_for returned the inner result
    instead of the cancellation then; the task went back to waiting for an offer and
    close() waited for it forever, which left a replica's pool undriven.)"""
    answer: asyncio.Future[ConditionSpec] = asyncio.get_running_loop().create_future()

    async def sink(state: str) -> ConditionSpec:
        return await answer

    task = sink_task(sink, [], asyncio.Event())
    task.offer("state")
    for _ in range(3):
        await asyncio.sleep(0)  # the sink is waiting for its answer
    answer.set_exception(NotOwnedError("not sent"))
    closing = asyncio.ensure_future(task.close())  # its cancel arrives in the same step as the answer
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert closing in done, "close() did not end the sink's task"
