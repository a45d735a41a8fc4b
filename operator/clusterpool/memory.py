"""Giving memory back to the system (after pools are deleted, and regularly), and keeping
Python's garbage collector from stopping the operator for long.

What a deleted pool used is freed (nothing of it is kept: clusterpool_operator_remembered
counts it), but glibc's malloc keeps freed memory in its heaps for reuse, one heap per
thread that allocated (the write queue's threads, kopf's, the event loop's). Measured at
60 pools (docs/scale.md, "Memory across cycles"): 53 MiB of a 217 MiB RSS were free
memory held by malloc, and malloc_trim(0) gave 36 MiB back. So, after a burst of
deletes, the operator asks for that once. Pools that run also free memory all the time
(probe buffers, API answers, status renders): at 1,000 pools malloc held 33 MiB of it in
steady state, and asking for it every GIVE_BACK_EVERY seconds lowered the steady RSS by
23 MiB, 6% (each malloc_trim took 1-3 ms; docs/scale.md, round 9). Where the C library
has no malloc_trim (musl, macOS), neither is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


MALLOC_TRIM = _find_malloc_trim()
GIVE_BACK_EVERY = 30.0  # seconds between regular malloc_trim(0) calls while the operator runs


class FreedMemory:
    """`pools_gone()` after a pool is deleted: `delay` seconds after the last of a burst, a
    full garbage collection runs once, then malloc_trim(0), in a worker thread (it walks
    every heap). The collection matters most: a deleted pool's runner, tasks and futures
    hold each other in reference cycles, which young collections do not reach (see
    YOUNG_OBJECTS); left to the next full collection, they were still alive while the next
    pools allocated, pinning Python's 1 MiB arenas (1,000 pools, RSS after each of three
    deletes: 419, 557, 712 MiB; 415, 439, 445 MiB when a full collection ran after each,
    docs/scale.md round 7)."""

    def __init__(
        self,
        delay: float = 5.0,
        trim: Callable[[int], int] | None = MALLOC_TRIM,
        timed: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """`timed` is told how long each malloc_trim took (metrics)."""
        self.delay = delay
        self._trim = trim
        self._timed = timed
        self._due: asyncio.TimerHandle | None = None
        self.trims = 0

    def pools_gone(self) -> None:
        if self._due is not None:
            self._due.cancel()
        loop = asyncio.get_running_loop()
        self._due = loop.call_later(self.delay, self._give_back, loop)

    def _give_back(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = None
        self.trims += 1
        gc.collect()
        if self._trim is not None:
            loop.run_in_executor(None, self._trim_timed)

    async def give_back_every(self, seconds: float) -> None:
        """Run for the operator's lifetime: malloc_trim(0) every `seconds` (0: never), in a
        worker thread. No garbage collection here: a full one stops every thread for up
        to a second at 1,000 pools, and what pools free while they run is not in cycles."""
        if self._trim is None or seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(seconds)
            await loop.run_in_executor(None, self._trim_timed)

    def _trim_timed(self) -> None:
        if self._trim is None:
            return
        started = time.perf_counter()
        self._trim(0)
        self._timed(time.perf_counter() - started)


# A young collection every YOUNG_OBJECTS container allocations instead of 700. The event
# loop allocates quickly, and objects that live a few milliseconds (a probe's futures,
# handles and buffers) outlived 700 allocations, were promoted, and made full collections
# come often: at 1,000 pools a full collection (0.5-1 s, every thread stopped) every 8 s.
YOUNG_OBJECTS = 50_000


def collect_less_often() -> None:
    """Call once, after the imports and before the pools: what exists by then (modules,
    classes, the libraries' tables) lives as long as the process, so it is moved out of
    the collector's sight (gc.freeze); and young collections come less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, middle, old)
