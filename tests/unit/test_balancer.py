import random
import threading
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterpool.balancer import (
    STRATEGIES,
    Adaptive,
    ConsistentHash,
    LeastConnections,
    NoEndpointError,
    RoundRobin,
    Target,
    Weighted,
    make_balancer,
)
from clusterpool.balancer.strategies import smooth_schedule


def targets(n, weights=None):
    return [Target(f"t{i}", f"198.18.0.{i}", 8000, (weights or [1] * n)[i]) for i in range(n)]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_refuses_an_empty_pool_and_picks_from_the_targets(name):
    b = make_balancer(name)
    with pytest.raises(NoEndpointError):
        b.pick("k")
    b.update(targets(3))
    assert {b.pick(f"k{i}").name for i in range(300)} <= {"t0", "t1", "t2"}
    with pytest.raises(ValueError, match="unknown strategy"):
        make_balancer("Random")


def test_round_robin_takes_turns():
    b = RoundRobin()
    b.update(targets(3))
    assert [b.pick().name for _ in range(6)] == ["t0", "t1", "t2", "t0", "t1", "t2"]


def test_smooth_weighted_round_robin_spreads_a_heavy_target():
    assert smooth_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]  # nginx's example: a a b a c a a
    assert smooth_schedule([2, 4]) == [1, 0, 1]  # reduced by the gcd


@given(st.lists(st.integers(0, 50), min_size=1, max_size=12))
def test_weighted_shares_follow_the_weights_exactly_over_a_cycle(weights):
    b = Weighted()
    b.update(targets(len(weights), weights))
    live = [w for w in weights if w > 0]
    if not live:
        with pytest.raises(NoEndpointError):
            b.pick()
        return
    cycle = len(smooth_schedule(live))
    counts = Counter(b.pick().name for _ in range(cycle))
    total = sum(live)
    for i, w in enumerate(weights):
        assert counts[f"t{i}"] == w * cycle // total


def test_weighted_honours_slow_start_weights():
    b = Weighted()
    b.update(targets(2, [10, 1]))  # t1 ramping up at 10%
    counts = Counter(b.pick().name for _ in range(1100))
    assert counts == {"t0": 1000, "t1": 100}


def test_least_connections_prefers_the_least_loaded_and_shares_ties():
    b = LeastConnections()
    b.update(targets(3))
    b.started(b.targets[0])
    b.started(b.targets[0])
    b.started(b.targets[1])
    assert b.pick().name == "t2"
    idle = LeastConnections()
    idle.update(targets(4))
    assert Counter(idle.pick().name for _ in range(400)) == {f"t{i}": 100 for i in range(4)}


def test_least_connections_on_large_pools_uses_two_choices():
    b = LeastConnections(rng=random.Random(1))
    b.update(targets(100))
    for t in b.targets[:50]:
        for _ in range(5):
            b.started(t)
    picks = Counter(b.pick().name for _ in range(2000))
    busy = sum(picks[f"t{i}"] for i in range(50))
    assert busy < 0.3 * 2000  # only when both choices are busy (~25%)


def test_consistent_hash_is_sticky_and_moves_about_one_nth_of_keys():
    b = ConsistentHash()
    b.update(targets(10))
    keys = [f"session-{i}" for i in range(20000)]
    before = {k: b.pick(k).name for k in keys}
    assert all(b.pick(k).name == before[k] for k in keys[:1000])
    b.update([t for t in b.targets if t.name != "t3"])
    after = {k: b.pick(k).name for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] != "t3" for k in keys)
    assert all(k in moved for k in keys if before[k] == "t3")  # the removed target's keys move...
    others = [k for k in moved if before[k] != "t3"]
    assert len(others) / len(keys) < 0.01  # ...and hardly any other (Maglev: near-minimal disruption)
    assert 0.08 < len(moved) / len(keys) < 0.13  # ~1/10
    shares = Counter(before.values())
    assert max(shares.values()) / min(shares.values()) < 1.6


def test_consistent_hash_bounded_load_spills_to_the_next_target():
    b = ConsistentHash(load_factor=1.0)
    b.update(targets(4))
    hot = b.pick("hot")
    for _ in range(3):
        b.started(hot)
    assert b.pick("hot").name != hot.name
    plain = ConsistentHash()
    plain.update(targets(4))
    for _ in range(3):
        plain.started(hot)
    assert plain.pick("hot").name == hot.name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "finish", "update"]), st.integers(0, 5)), max_size=60))
def test_the_running_in_flight_total_matches_the_counts(ops):
    """ConsistentHash's bounded load reads a running total instead of summing every pick."""
    for b in (ConsistentHash(load_factor=1.25), Adaptive(), LeastConnections()):
        b.update(targets(4))
        for op, n in ops:
            t = Target(f"t{n}", "198.18.0.9", 8000)  # t4 and t5 are not (or no longer) targets
            if op == "start":
                b.started(t)
            elif op == "finish":
                b.finished(t, 0.01)
            else:
                b.update(targets(n % 4 + 1))
            assert b._total == sum(b._loads)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def simulate(b, clock, slow, seconds, rps=200):
    """Requests at `rps`; `slow` answers in 100 ms, others in 10 ms. Returns slow's share."""
    picks = Counter()
    for _ in range(int(seconds * rps)):
        clock.t += 1 / rps
        t = b.pick()
        picks[t.name] += 1
        b.started(t)
        b.finished(t, 0.1 if t.name in slow else 0.01)
    return picks


def test_adaptive_moves_traffic_away_from_a_slow_target_and_back():
    clock = Clock()
    b = Adaptive(decay_s=2.0, rng=random.Random(7), clock=clock)
    b.update(targets(4))
    even = simulate(b, clock, set(), 5)
    assert min(even.values()) > 0.15 * sum(even.values())
    slow = simulate(b, clock, {"t0"}, 5)
    assert slow["t0"] < 0.1 * sum(slow.values())
    simulate(b, clock, set(), 5)  # recovering: retried as its EWMA decays (~ln(10) x decay_s)
    back = simulate(b, clock, set(), 5)
    assert back["t0"] > 0.15 * sum(back.values())


def test_leases_count_in_flight_requests_across_threads():
    b = LeastConnections()
    b.update(targets(5))
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for i in range(2000):
            with b.lease(f"k{i}"):
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b.inflight(t.name) == 0 for t in b.targets)


def test_a_failed_lease_still_releases_and_counts_as_slow_for_adaptive():
    clock = Clock()
    b = Adaptive(clock=clock)
    b.update(targets(2))
    with pytest.raises(RuntimeError), b.lease() as t:
        raise RuntimeError("boom")
    assert b.inflight(t.name) == 0 and b.ewma(t.name) >= 1.0


@settings(max_examples=50)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=8), st.integers(0, 7))
def test_update_keeps_in_flight_counts_of_remaining_targets(weights, drop):
    b = LeastConnections()
    b.update(targets(len(weights), weights))
    for t in b.targets:
        b.started(t)
    keep = [t for i, t in enumerate(b.targets) if i != drop % len(weights)]
    b.update(keep)
    assert all(b.inflight(t.name) == 1 for t in keep)
