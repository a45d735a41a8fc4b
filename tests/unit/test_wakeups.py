"""Wakeups: the pool loop's wake-ups carry a reason and a burst of them is one round."""

import asyncio
import time

from clusterpool.stages import Wakeups


async def test_a_burst_of_wakeups_is_one_round_that_knows_why():
    wake = Wakeups()
    for _ in range(10):
        wake("an EndpointSlice changed")
    wake("the spec changed")
    start = time.monotonic()
    await wake.wait(30)  # returns at once: woken
    assert time.monotonic() - start < 1
    assert wake.take() == {"an EndpointSlice changed", "the spec changed"}
    assert wake.take() == set()  # taken: the next round waits again


async def test_a_wakeup_during_a_round_wakes_the_next_one():
    wake = Wakeups()
    wake.take()  # a round starts
    wake("a sink's condition changed")  # during it
    await asyncio.wait_for(wake.wait(30), 1)
    assert wake.take() == {"a sink's condition changed"}


async def test_without_a_wakeup_it_waits_the_whole_delay():
    wake = Wakeups()
    start = time.monotonic()
    await wake.wait(0.2)
    assert time.monotonic() - start >= 0.19
