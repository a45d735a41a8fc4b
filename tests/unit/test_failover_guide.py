"""The worked examples of docs/failover.md, run through the operator's core (`step`) on a
simulated clock: rounds every `interval` seconds, no jitter, failing probes fail at once."""

from datetime import UTC, datetime, timedelta

from clusterpool.core.failover import BreakerConfig, FailoverConfig
from clusterpool.core.health import Endpoint, ProbeResult, Thresholds
from clusterpool.core.pool import PoolState, step

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PASS = ProbeResult(True, "OK", "answered 200", 0.01)
FAIL = ProbeResult(False, "ConnectionRefused", "connection refused")


def run(endpoints, down, cfg, *, until, interval=5, back_at=None, unhealthy=2, healthy=2):
    """Probe every `interval` s from t=0 (all pass at t=0); the endpoints in `down` fail from
    the next round until `back_at`. Returns {t: (events' reasons, decision)}."""
    state = PoolState().with_members(tuple(endpoints))
    out = {}
    for t in range(0, until + 1, interval):
        failing = t > 0 and (back_at is None or t < back_at)
        results = {ep.name: FAIL if failing and ep.name in down else PASS for ep in endpoints}
        state, events = step(state, results, Thresholds(healthy, unhealthy), cfg, T0 + timedelta(seconds=t))
        out[t] = ([e.reason for e in events], state.decision)
    return out


def pool(n, tier_of=lambda i: 0):
    return [Endpoint(f"e{i}", f"198.18.0.{i + 1}", 80, weight=10, tier=tier_of(i)) for i in range(n)]


BREAKER = BreakerConfig(failure_threshold=2, open_seconds=30, max_open_seconds=300, success_threshold=2)


def test_a_restart_is_out_from_detection_until_two_trials_pass_then_ramps():
    timeline = run(pool(10), {"e0"}, FailoverConfig(breaker=BREAKER, slow_start_seconds=60), until=110, back_at=20)
    when = {reason: t for t, (reasons, _) in sorted(timeline.items(), reverse=True) for reason in reasons if t > 0}
    assert (when["EndpointUnhealthy"], when["EndpointEjected"]) == (10, 10)  # the floor: 5 s x 2
    assert when["EndpointHealthy"] == 25  # healthy again, but the breaker is still open
    assert (when["EndpointHalfOpen"], when["EndpointRecovered"]) == (40, 45)
    assert all("e0" not in timeline[t][1].eligible for t in range(10, 45, 5))
    ramp = [timeline[t][1].of("e0").effective_weight for t in range(45, 110, 5)]
    assert ramp == [1, 1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]  # every 5 s from 45 s; full at 105 s


def six_of_ten(**failover):
    cfg = FailoverConfig(breaker=BREAKER, **failover)
    reasons, decision = run(pool(10), {f"e{i}" for i in range(6)}, cfg, until=10)[10]
    return reasons, decision


def test_six_of_ten_failing_with_the_defaults_panics_and_routes_to_all_ten():
    reasons, d = six_of_ten()
    assert d.panic and len(d.eligible) == 10
    assert sum(x.ejection_limited for x in d.decisions) == 1  # the cap: 10 x 50% = 5 ejected
    assert reasons.count("EndpointEjected") == 6 and "EjectionLimited" in reasons and "PanicEntered" in reasons


def test_six_of_ten_without_panic_keeps_the_capped_one_in():
    _, d = six_of_ten(panic_threshold_percent=0)
    assert not d.panic and d.eligible == ["e5", "e6", "e7", "e8", "e9"]
    _, d = six_of_ten(panic_threshold_percent=0, max_ejection_percent=100)
    assert d.eligible == ["e6", "e7", "e8", "e9"]


def test_a_fallback_tier_serves_until_the_first_tier_passes_its_trials():
    endpoints = pool(14, tier_of=lambda i: 0 if i < 10 else 1)
    timeline = run(endpoints, {f"e{i}" for i in range(6)}, FailoverConfig(breaker=BREAKER), until=110, back_at=60)
    assert "TierFailover" in timeline[10][0]
    assert (timeline[10][1].active_tier, timeline[10][1].panic) == (1, False)
    assert timeline[40][0].count("EndpointReejected") == 6  # still down at the first trial: 60 s more
    assert all(timeline[t][1].active_tier == 1 for t in range(10, 105, 5))
    assert "TierFailback" in timeline[105][0] and timeline[105][1].active_tier == 0
