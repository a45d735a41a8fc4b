"""WriteQueue: settle(pool) drops the pool's waiting writes and waits for the one sent; the
backlog and the writes sent are counted per lane; Events give way to health writes."""

import asyncio
import threading
from collections.abc import Callable

from clusterpool.k8s.writes import Lane, WriteQueue


class InFlight:
    """Blocking calls that hold until `release()`, counting how many are running."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.running = 0
        self.most = 0
        self._changed = threading.Condition()

    def call(self) -> None:
        with self._changed:
            self.running += 1
            self.most = max(self.most, self.running)
            self._changed.notify_all()
        self.gate.wait(10)
        with self._changed:
            self.running -= 1
            self._changed.notify_all()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (off the event loop) until `condition()` holds; fail after 10 s naming `what`."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(condition, 10)

        assert await asyncio.to_thread(wait), f"timed out waiting for {what} (running: {self.running})"


async def let_the_loop_run() -> None:
    """Turns of the event loop: whatever a worker can start without a thread's help
    (taking a write off its lane, counting it as sent) has started afterwards."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_settle_drops_waiting_writes_and_waits_for_the_sent_one():
    q = WriteQueue(health_workers=1, info_workers=1)
    held = InFlight()
    written: list[str] = []

    def sent() -> None:
        held.call()
        written.append("sent")

    first = q.submit(Lane.HEALTH, "slice-a", ("ns", "p"), sent)
    await held.until(lambda: held.running == 1, "the first write in flight")
    late = q.submit(Lane.HEALTH, "slice-a", ("ns", "p"), lambda: written.append("late"))
    other = q.submit(Lane.HEALTH, "slice-b", ("ns", "q"), lambda: written.append("other pool"))

    async def settle() -> bool:
        await q.settle(("ns", "p"))
        return first.done()  # the write in flight had landed when settle returned

    settling = asyncio.create_task(settle())
    await let_the_loop_run()
    assert not settling.done(), "settle returned while a write of the pool was still in flight"
    held.gate.set()
    assert await asyncio.wait_for(settling, 5), "settle returned before the write in flight landed"
    await asyncio.wait_for(other, 5)  # another pool's write is not touched
    # one health worker takes writes in order: a write queued after these runs after them
    marker = q.submit(Lane.HEALTH, "slice-c", ("ns", "q"), lambda: written.append("after"))
    await asyncio.wait_for(marker, 5)
    assert written == ["sent", "other pool", "after"]
    assert late.cancelled() and q.remembered() == 0
    await q.close()


async def test_it_counts_writes_waiting_and_sent_per_lane():
    q = WriteQueue(health_workers=1, info_workers=1)
    held = InFlight()
    status = q.submit(Lane.HEALTH, "status-p", ("ns", "p"), held.call)
    await held.until(lambda: held.running == 1, "the status write in flight")
    waiting = [q.submit(Lane.HEALTH, f"slice-{i}", ("ns", "p"), lambda: None) for i in range(2)]
    event = q.submit(Lane.INFO, "event-1", ("ns", "p"), held.call)
    await held.until(lambda: held.running == 2, "the Event in flight")
    assert q.backlog_by_lane() == {Lane.HEALTH: 2, Lane.INFO: 0}  # in flight: sent, not waiting
    assert q.sent == {Lane.HEALTH: 1, Lane.INFO: 1}
    held.gate.set()
    await asyncio.wait_for(asyncio.gather(status, event, *waiting), 5)
    assert q.backlog_by_lane() == {Lane.HEALTH: 0, Lane.INFO: 0}
    assert q.sent == {Lane.HEALTH: 3, Lane.INFO: 1}
    await q.close()


async def test_events_give_way_to_health_writes_waiting_for_a_worker():
    """While health writes wait, the info lane sends one write at a time; once they are
    all sent, it uses its workers again. It never stops: one worker always sends."""
    q = WriteQueue(health_workers=1, info_workers=3)
    health_held, events_held = InFlight(), InFlight()
    health = [q.submit(Lane.HEALTH, f"status-{i}", ("ns", f"p{i}"), health_held.call) for i in range(3)]
    await health_held.until(lambda: health_held.running == 1, "a status write in flight")  # two wait
    events = [q.submit(Lane.INFO, f"event-{i}", ("ns", "p0"), events_held.call) for i in range(6)]
    await events_held.until(lambda: events_held.running == 1, "one Event in flight")
    await let_the_loop_run()
    assert q.sent[Lane.INFO] == 1, "more than one Event sent while health writes waited"
    assert q.backlog_by_lane() == {Lane.HEALTH: 2, Lane.INFO: 5}
    health_held.gate.set()
    await asyncio.wait_for(asyncio.gather(*health), 5)
    await events_held.until(lambda: events_held.running == 3, "three Events in flight once no health write waits")
    assert events_held.most == 3
    events_held.gate.set()
    await asyncio.wait_for(asyncio.gather(*events), 5)
    await q.close()
