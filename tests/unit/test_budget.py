"""TokenBucket: a burst, then one token per interval."""

from clusterpool.core.budget import TokenBucket


def test_a_burst_then_one_token_per_interval():
    b = TokenBucket(burst=3, every=2.0, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(101.0)  # half a token
    assert b.take(101.0 + 1.0)  # one interval after the burst ran out
    assert not b.take(102.0)
    assert [b.take(200.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst, no more


def test_a_clock_that_goes_back_refills_nothing():
    b = TokenBucket(burst=1, every=1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)
    assert not b.take(10.5)  # half a second since 10.0: nothing counted twice
