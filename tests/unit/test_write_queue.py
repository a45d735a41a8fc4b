"""WriteQueue: settle(pool) drops the pool's waiting writes and waits for the one sent."""

import asyncio
import threading

from clusterpool.k8s.writes import Lane, WriteQueue


async def test_settle_drops_waiting_writes_and_waits_for_the_sent_one():
    q = WriteQueue(health_workers=1, info_workers=1)
    gate = threading.Event()
    written: list[str] = []

    def sent() -> None:
        gate.wait(5)
        written.append("sent")

    q.submit(Lane.HEALTH, "slice-a", ("ns", "p"), sent)
    await asyncio.sleep(0.1)  # now in flight
    late = q.submit(Lane.HEALTH, "slice-a", ("ns", "p"), lambda: written.append("late"))
    other = q.submit(Lane.HEALTH, "slice-b", ("ns", "q"), lambda: written.append("other pool"))
    settling = asyncio.create_task(q.settle(("ns", "p")))
    await asyncio.sleep(0.2)
    assert not settling.done(), "settle returned while a write of the pool was still in flight"
    gate.set()
    await asyncio.wait_for(settling, 5)
    assert "sent" in written
    await asyncio.wait_for(other, 5)  # another pool's write is not touched
    await asyncio.sleep(0.1)
    assert written == ["sent", "other pool"]
    assert late.cancelled() and q.remembered() == 0
    await q.close()


async def test_it_counts_writes_waiting_and_sent_per_lane():
    q = WriteQueue(health_workers=1, info_workers=1)
    gate = threading.Event()
    status = q.submit(Lane.HEALTH, "status-p", ("ns", "p"), lambda: gate.wait(5))
    await asyncio.sleep(0.1)  # in flight: sent, not waiting
    waiting = [q.submit(Lane.HEALTH, f"slice-{i}", ("ns", "p"), lambda: None) for i in range(2)]
    event = q.submit(Lane.INFO, "event-1", ("ns", "p"), lambda: gate.wait(5))
    await asyncio.sleep(0.1)
    assert q.backlog_by_lane() == {Lane.HEALTH: 2, Lane.INFO: 0}
    assert q.sent == {Lane.HEALTH: 1, Lane.INFO: 1}
    gate.set()
    await asyncio.wait_for(asyncio.gather(status, event, *waiting), 5)
    assert q.backlog_by_lane() == {Lane.HEALTH: 0, Lane.INFO: 0}
    assert q.sent == {Lane.HEALTH: 3, Lane.INFO: 1}
    await q.close()


async def test_events_give_way_to_health_writes_waiting_for_a_worker():
    """While health writes wait, the info lane sends one write at a time; once they are
    all sent, it uses its workers again. It never stops: one worker always sends."""
    q = WriteQueue(health_workers=1, info_workers=3)
    gate = threading.Event()
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def event() -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        gate.wait(5)
        with lock:
            in_flight[0] -= 1

    health = [q.submit(Lane.HEALTH, f"status-{i}", ("ns", f"p{i}"), lambda: gate.wait(5)) for i in range(3)]
    await asyncio.sleep(0.1)  # one status in flight, two waiting for the lane's one worker
    events = [q.submit(Lane.INFO, f"event-{i}", ("ns", "p0"), event) for i in range(6)]
    await asyncio.sleep(0.2)
    assert most[0] == 1, "more than one Event in flight while health writes waited"
    gate.set()
    await asyncio.wait_for(asyncio.gather(*health), 5)
    gate.clear()
    more = [q.submit(Lane.INFO, f"event-{i}", ("ns", "p1"), event) for i in range(6, 12)]
    await asyncio.sleep(0.2)
    assert in_flight[0] == 3, "the info lane did not use its workers once no health write waited"
    gate.set()
    await asyncio.wait_for(asyncio.gather(*events, *more), 5)
    await q.close()
