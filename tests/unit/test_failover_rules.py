from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from clusterpool.core.failover import (
    Breaker,
    BreakerConfig,
    FailoverConfig,
    Member,
    allowed_ejections,
    choose_tier,
    decide,
    on_probe,
    open_duration,
    slow_start_weight,
    tick,
)
from clusterpool.core.health import Endpoint, EndpointHealth

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CFG = BreakerConfig(failure_threshold=3, open_seconds=30, max_open_seconds=300, success_threshold=2)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_breaker_opens_after_failure_threshold_consecutive_failures():
    b = Breaker()
    for i in range(2):
        b = on_probe(b, False, CFG, at(i))
        assert b.state == "Closed"
    b = on_probe(b, True, CFG, at(2))  # a success resets the count
    for i in range(3):
        b = on_probe(b, False, CFG, at(3 + i))
    assert (b.state, b.ejections, b.open_until) == ("Open", 1, at(5 + 30))


def test_open_lasts_its_time_then_half_open_then_closed_after_successes():
    b = on_probe(on_probe(on_probe(Breaker(), False, CFG, T0), False, CFG, T0), False, CFG, T0)
    assert tick(b, at(29)).state == "Open"
    assert on_probe(b, True, CFG, at(10)).state == "Open"  # probes do not shorten the open time
    b = tick(b, at(30))
    assert b.state == "HalfOpen"
    b = on_probe(b, True, CFG, at(31))
    assert b.state == "HalfOpen"
    b = on_probe(b, True, CFG, at(32))
    assert (b.state, b.recovered_at) == ("Closed", at(32))


def test_a_failed_trial_reopens_for_longer_up_to_the_cap():
    b = Breaker()
    durations = []
    now = T0
    for _ in range(12):
        while b.state != "Open":
            b = on_probe(b, False, CFG, now)
        durations.append((b.open_until - now).total_seconds())
        now = b.open_until
        b = tick(b, now)
        assert b.state == "HalfOpen"
    assert durations[:4] == [30, 60, 90, 120]
    assert max(durations) == 300 and durations[-1] == 300


def test_ejections_are_forgiven_while_closed():
    b = Breaker(state="Closed", ejections=4, recovered_at=T0, since=T0)
    for _ in range(3):
        b = on_probe(b, False, CFG, at(650))  # 650s closed: two ejections forgiven
    assert b.ejections == 3 and (b.open_until - at(650)) == open_duration(CFG, 3)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 400)), max_size=80))
def test_breaker_invariants(steps):
    b, now = Breaker(), T0
    for ok, dt in steps:
        now += timedelta(seconds=dt)
        b = tick(b, now)
        b = on_probe(b, ok, CFG, now)
        assert b.state in ("Closed", "Open", "HalfOpen")
        if b.state == "Open":
            assert b.open_until is not None and timedelta(0) < b.open_until - b.since <= timedelta(seconds=300)
        assert b.failures < CFG.failure_threshold


def member(name, tier=0, health="Healthy", breaker="Closed", since=T0, weight=10, recovered_at=None):
    return Member(
        Endpoint(name, f"10.0.0.{ord(name[-1]) % 250}", 80, weight),
        tier,
        EndpointHealth(health=health, last_transition=since),
        Breaker(state=breaker, since=since, recovered_at=recovered_at),
    )


def test_small_pool_rule_always_allows_one_ejection():
    assert allowed_ejections(2, 10) == 1
    assert allowed_ejections(10, 10) == 1
    assert allowed_ejections(10, 50) == 5
    assert allowed_ejections(3, 0) == 0


def test_ejection_limit_keeps_later_failures_in_and_says_so():
    ms = [
        member("a", breaker="Open", since=at(1)),
        member("b", health="Unhealthy", since=at(2)),
        member("c", health="Unhealthy", since=at(3)),
        member("d"),
        member("e"),
    ]
    d = decide(ms, FailoverConfig(max_ejection_percent=40, panic_threshold_percent=0), 0, at(10))
    assert d.eligible == ["c", "d", "e"]
    assert d.of("c").ejection_limited and not d.of("a").ejection_limited
    assert d.of("a").ejected and d.of("b").ejected


def test_panic_routes_to_every_endpoint_of_the_tier():
    ms = [member("a", health="Unhealthy"), member("b", health="Unhealthy"), member("c")]
    d = decide(ms, FailoverConfig(max_ejection_percent=100, panic_threshold_percent=50), 0, T0)
    assert d.panic and d.eligible == ["a", "b", "c"]
    d = decide(ms, FailoverConfig(max_ejection_percent=100, panic_threshold_percent=30), 0, T0)
    assert not d.panic and d.eligible == ["c"]


def test_tier_failover_and_failback_with_hysteresis():
    assert choose_tier(0, {0: 100, 1: 100}, 50, 80) == 0
    assert choose_tier(0, {0: 40, 1: 100}, 50, 80) == 1  # fail over
    assert choose_tier(1, {0: 60, 1: 100}, 50, 80) == 1  # 60 >= 50 but < 80: stay
    assert choose_tier(1, {0: 80, 1: 100}, 50, 80) == 0  # fail back
    assert choose_tier(0, {0: 20, 1: 10}, 50, 80) == 0  # none good enough: the best share
    assert choose_tier(0, {0: 0, 1: 10, 2: 10}, 50, 80) == 1


def test_only_the_active_tier_serves():
    ms = [
        member("a", tier=0, health="Unhealthy"),
        member("b", tier=0, health="Unhealthy"),
        member("c", tier=1),
        member("d", tier=1),
    ]
    d = decide(ms, FailoverConfig(max_ejection_percent=100), 0, T0)
    assert (d.active_tier, d.panic, d.eligible) == (1, False, ["c", "d"])


def test_slow_start_ramps_in_steps_from_ten_percent():
    assert slow_start_weight(100, T0, 100, at(0)) == 10
    assert slow_start_weight(100, T0, 100, at(35)) == 30
    assert slow_start_weight(100, T0, 100, at(99)) == 90
    assert slow_start_weight(100, T0, 100, at(100)) == 100
    assert slow_start_weight(100, None, 100, at(0)) == 100
    assert slow_start_weight(1, T0, 100, at(0)) == 1
    ms = [member("a", recovered_at=at(0)), member("b")]
    d = decide(ms, FailoverConfig(slow_start_seconds=60), 0, at(30))
    assert (d.of("a").effective_weight, d.of("b").effective_weight) == (5, 10)


def test_composite_combination():
    from clusterpool.core.health import ProbeResult
    from clusterpool.health.probes import combine

    ok, bad = ProbeResult(True, "ProbeSucceeded", "fine", 0.1), ProbeResult(False, "Timeout", "slow", 0.3)
    assert combine("All", ["a", "b"], [ok, ok]).ok and not combine("All", ["a", "b"], [ok, bad]).ok
    assert combine("Any", ["a", "b"], [bad, ok]).ok and not combine("Any", ["a", "b"], [bad, bad]).ok
    assert combine("Majority", ["a", "b", "c"], [ok, ok, bad]).ok
    assert not combine("Majority", ["a", "b"], [ok, bad]).ok
    r = combine("All", ["a", "b"], [ok, bad])
    assert (r.reason, r.message, r.latency_s) == ("ChecksFailed", "1 of 2 checks passed (All): b: slow", 0.3)
