"""The one backoff schedule: bounds, growth, jitter spread and reset."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterpool.core.backoff import Backoff, BackoffPolicy


@given(
    first=st.floats(0.01, 10),
    spread=st.floats(1, 1000),
    attempt=st.integers(0, 10_000),
    draw=st.floats(0, 1),
)
def test_every_wait_lies_between_half_the_ceiling_and_the_ceiling_and_never_past_longest(first, spread, attempt, draw):
    policy = BackoffPolicy(first=first, longest=first * spread)
    wait = policy.delay(attempt, rand=lambda: draw)
    ceiling = policy.ceiling(attempt)
    assert first <= ceiling <= policy.longest
    assert ceiling * 0.5 <= wait <= ceiling


def test_the_ceiling_doubles_from_first_until_longest_and_stays_there():
    policy = BackoffPolicy(first=0.5, longest=30.0)
    assert [policy.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.ceiling(10**9) == 30.0  # no overflow after a very long outage


def test_replicas_failing_together_spread_their_retries_over_the_window():
    """After an outage every replica retries; jitter spreads them instead of a thundering herd."""
    rng = random.Random(7)
    waits = [Backoff(1.0, 60.0, rand=rng.random).next() for _ in range(1000)]
    assert min(waits) >= 0.5 and max(waits) <= 1.0
    buckets = [sum(0.5 + i * 0.05 <= w < 0.55 + i * 0.05 for w in waits) for i in range(10)]
    assert min(buckets) > 50  # about 100 each: spread evenly, not clustered at one moment


def test_next_lengthens_the_wait_and_reset_starts_over():
    backoff = Backoff(1.0, 8.0, rand=lambda: 0.0)  # no jitter drawn: the ceilings themselves
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    backoff.reset()
    assert backoff.next() == 1


def test_no_jitter_gives_the_plain_exponential_schedule():
    backoff = Backoff(0.25, 1.0, jitter=0.0)
    assert [backoff.next() for _ in range(4)] == [0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"first": 0, "longest": 1}, "first"),
        ({"first": 2, "longest": 1}, "longest"),
        ({"first": 1, "longest": 2, "factor": 0.5}, "factor"),
        ({"first": 1, "longest": 2, "jitter": 1.5}, "jitter"),
    ],
)
def test_nonsense_settings_are_refused_naming_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=named):
        BackoffPolicy(**kwargs)
