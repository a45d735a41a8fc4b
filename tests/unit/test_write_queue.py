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
