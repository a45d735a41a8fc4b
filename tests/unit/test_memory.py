"""Freed memory is handed back to the system: once after a burst of pool deletes, and
regularly while the operator runs."""

import asyncio
import gc
import threading
import time
import weakref

from clusterpool.memory import MALLOC_TRIM, FreedMemory


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test moves it (`advance`): timers
    fire exactly when due, whatever the machine's load."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on and run what became due (a turn of the loop)."""
        self.now += seconds
        self.run_until_complete(asyncio.sleep(0))


def test_a_burst_of_deletes_gives_memory_back_once_after_the_last():
    calls: list[int] = []
    called = threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        called.set()
        return 1

    loop = VirtualTimeLoop()
    try:
        freed = FreedMemory(delay=0.2, trim=trim)

        async def pool_deleted() -> None:
            freed.pools_gone()

        for _ in range(5):  # a burst over 0.4 s, each delete 0.1 s after the one before
            loop.run_until_complete(pool_deleted())
            loop.advance(0.1)
            assert freed.trims == 0, "memory given back within the burst"
        loop.advance(0.09)  # 0.19 s after the last delete
        assert freed.trims == 0
        loop.advance(0.02)  # 0.21 s after it
        assert freed.trims == 1
        assert called.wait(10), "malloc_trim was not called"
        loop.advance(60.0)  # and nothing more, however long after
        assert freed.trims == 1
        assert calls == [0]
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


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
    lasted: list[float] = []  # how long each trim took, as the trim itself measured it
    took: list[float] = []  # what the metrics were told
    third = asyncio.Event()

    def trim(pad: int) -> int:  # called in a worker thread
        started = time.perf_counter()
        calls.append(pad)
        time.sleep(0.01)  # a malloc_trim that walks large heaps
        lasted.append(time.perf_counter() - started)
        return 1

    def timed(seconds: float) -> None:
        took.append(seconds)
        if len(took) == 3:
            loop.call_soon_threadsafe(third.set)

    loop = asyncio.get_running_loop()
    freed = FreedMemory(trim=trim, timed=timed)
    regularly = asyncio.create_task(freed.give_back_every(0.01))
    try:
        await asyncio.wait_for(third.wait(), 10)
    finally:
        regularly.cancel()
        await asyncio.wait({regularly})
    assert calls[:3] == [0, 0, 0]
    # each give-back is timed, and the time told is that of the trim it followed
    for seconds, trim_lasted in zip(took[:3], lasted[:3], strict=True):
        assert trim_lasted <= seconds < trim_lasted + 1.0, (took, lasted)
    assert freed.trims == 0  # the count of give-backs after deletes


async def test_no_regular_give_back_when_told_never_or_without_malloc_trim():
    calls: list[int] = []
    await asyncio.wait_for(FreedMemory(trim=calls.append).give_back_every(0), 1)  # type: ignore[arg-type]
    await asyncio.wait_for(FreedMemory(trim=None).give_back_every(0.01), 1)
    assert calls == []
