"""Exponential backoff with jitter: the one schedule every retry loop of the project uses.

    backoff = Backoff(first=0.5, longest=30.0)
    while True:
        try:
            ...
            backoff.reset()             # it worked: the next failure waits `first` again
        except OSError:
            await asyncio.sleep(backoff.next())    # or threading.Event.wait(backoff.next())

The n-th wait after a success is drawn uniformly from [(1 - jitter) * d, d], where
d = min(first * factor**n, longest): it never exceeds `longest`, never falls below
(1 - jitter) * first, and processes that failed at the same moment (every application
replica after an outage) spread their retries over the window instead of arriving together.
Pure: no sleeping here, so sync and async loops and schedules kept on a clock share it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait before retry number `attempt` (0 for the first retry)."""

    first: float
    longest: float
    factor: float = 2.0
    jitter: float = 0.5  # the fraction of each wait that is random

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.longest:
            raise ValueError(f"backoff: need 0 < first <= longest, got first={self.first}, longest={self.longest}")
        if self.factor < 1:
            raise ValueError(f"backoff: factor must be at least 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: jitter must be within [0, 1], got {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry `attempt` (no jitter)."""
        if attempt <= 0 or self.factor == 1:
            return self.first
        # Compared in exponent space: first * factor**attempt would overflow a float.
        if attempt * math.log(self.factor) >= math.log(self.longest / self.first):
            return self.longest
        return self.first * self.factor**attempt

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A wait drawn from [(1 - jitter) * ceiling, ceiling]."""
        return self.ceiling(attempt) * (1 - self.jitter * rand())


@dataclass
class Backoff:
    """A policy and the number of failures in a row: `next()` after each failure,
    `reset()` after a success."""

    first: float
    longest: float
    factor: float = 2.0
    jitter: float = 0.5
    rand: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        self.policy = BackoffPolicy(self.first, self.longest, self.factor, self.jitter)

    def next(self) -> float:
        """The wait before the next try; each call lengthens the following one."""
        wait = self.policy.delay(self.attempt, self.rand)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        self.attempt = 0
