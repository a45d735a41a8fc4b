"""Freed memory is handed back to the system: once after a burst of pool deletes, and
regularly while the operator runs."""

import asyncio
import gc
import threading
import weakref

from clusterpool.memory import MALLOC_TRIM, FreedMemory


async def test_a_burst_of_deletes_gives_memory_back_once_after_the_last():
    calls: list[int] = []
    done = threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        done.set()
        return 1

    freed = FreedMemory(delay=0.2, trim=trim)
    for _ in range(5):
        freed.pools_gone()
        await asyncio.sleep(0.05)
    assert calls == []  # still within the burst
    assert await asyncio.to_thread(done.wait, 10)
    await asyncio.sleep(0.3)
    assert calls == [0]
    assert freed.trims == 1


async def test_the_real_malloc_trim_runs_where_the_c_library_has_it():
    freed = FreedMemory(delay=0.0)
    freed.pools_gone()
    for _ in range(500):
        if MALLOC_TRIM is None or freed.trims:
            break
        await asyncio.sleep(0.01)
    assert freed.trims == (0 if MALLOC_TRIM is None else 1)


async def test_a_deleted_pools_reference_cycles_are_collected_also_without_malloc_trim():
    class Node:
        pass

    gc.disable()  # no collection but the one under test
    try:
        node = Node()
        node.itself = node
        alive = weakref.ref(node)
        del node
        freed = FreedMemory(delay=0.0, trim=None)
        freed.pools_gone()
        for _ in range(100):
            if alive() is None:
                break
            await asyncio.sleep(0.01)
        assert alive() is None
        assert freed.trims == 1
    finally:
        gc.enable()


def test_collect_less_often_freezes_what_exists_and_raises_the_young_threshold():
    import gc

    from clusterpool.memory import YOUNG_OBJECTS, collect_less_often

    before = gc.get_threshold()
    try:
        collect_less_often()
        assert gc.get_threshold() == (YOUNG_OBJECTS, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # this process's modules and classes at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_while_the_operator_runs_memory_is_given_back_regularly_and_each_give_back_is_timed():
    calls: list[int] = []
    took: list[float] = []
    third = asyncio.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) == 3:  # called in a worker thread
            loop.call_soon_threadsafe(third.set)
        return 1

    loop = asyncio.get_running_loop()
    freed = FreedMemory(trim=trim, timed=took.append)
    regularly = asyncio.create_task(freed.give_back_every(0.01))
    try:
        await asyncio.wait_for(third.wait(), 10)
    finally:
        regularly.cancel()
        await asyncio.wait({regularly})
    assert calls[:3] == [0, 0, 0]
    assert len(took) >= 3 and all(t >= 0 for t in took)
    assert freed.trims == 0  # the count of give-backs after deletes


async def test_no_regular_give_back_when_told_never_or_without_malloc_trim():
    calls: list[int] = []
    await asyncio.wait_for(FreedMemory(trim=calls.append).give_back_every(0), 1)  # type: ignore[arg-type]
    await asyncio.wait_for(FreedMemory(trim=None).give_back_every(0.01), 1)
    assert calls == []
