from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from clusterpool.core.health import Endpoint, EndpointHealth, PoolHealth, ProbeResult, Thresholds, observe

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OK = ProbeResult(True, "ProbeSucceeded", "ok")
BAD = ProbeResult(False, "ConnectionRefused", "refused")
TH = Thresholds(healthy=2, unhealthy=3)


def run(results: list[ProbeResult], start: EndpointHealth | None = None) -> list[str]:
    h = start or EndpointHealth()
    seen = []
    for i, r in enumerate(results):
        h = observe(h, r, TH, T0 + timedelta(seconds=i))
        seen.append(h.health)
    return seen


def test_first_probe_decides_at_once():
    assert run([OK]) == ["Healthy"]
    assert run([BAD]) == ["Unhealthy"]


def test_healthy_turns_unhealthy_only_after_unhealthy_threshold_failures():
    assert run([OK, BAD, BAD, BAD]) == ["Healthy", "Healthy", "Healthy", "Unhealthy"]


def test_a_success_resets_the_failure_count():
    assert run([OK, BAD, BAD, OK, BAD, BAD]) == ["Healthy"] * 6


def test_unhealthy_turns_healthy_after_healthy_threshold_successes():
    assert run([BAD, OK, OK]) == ["Unhealthy", "Unhealthy", "Healthy"]


def test_last_transition_moves_only_on_change():
    h = observe(EndpointHealth(), OK, TH, T0)
    h2 = observe(h, OK, TH, T0 + timedelta(seconds=5))
    assert h.last_transition == T0 and h2.last_transition == T0
    h3 = observe(observe(observe(h2, BAD, TH, T0), BAD, TH, T0), BAD, TH, T0 + timedelta(seconds=9))
    assert h3.health == "Unhealthy" and h3.last_transition == T0 + timedelta(seconds=9)


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_health_flips_only_after_a_full_streak(outcomes, healthy_t, unhealthy_t):
    th = Thresholds(healthy=healthy_t, unhealthy=unhealthy_t)
    h = EndpointHealth()
    streak_ok = streak_bad = 0
    for i, ok in enumerate(outcomes):
        prev = h.health
        h = observe(h, OK if ok else BAD, th, T0)
        streak_ok, streak_bad = (streak_ok + 1, 0) if ok else (0, streak_bad + 1)
        if i == 0:
            assert h.health == ("Healthy" if ok else "Unhealthy")
        elif prev == "Healthy" and h.health == "Unhealthy":
            assert streak_bad >= unhealthy_t
        elif prev == "Unhealthy" and h.health == "Healthy":
            assert streak_ok >= healthy_t
        # never stuck: a full streak always flips
        if prev == "Healthy" and streak_bad >= unhealthy_t:
            assert h.health == "Unhealthy"
        if prev == "Unhealthy" and streak_ok >= healthy_t:
            assert h.health == "Healthy"


A = Endpoint("a", "127.0.0.2", 80)
B = Endpoint("b", "127.0.0.3", 80)


def test_pool_reports_transitions_and_counts():
    pool = PoolHealth(members=(A, B))
    pool, ts = pool.observe({"a": OK, "b": BAD}, TH, T0)
    assert [(t.endpoint.name, t.before, t.after) for t in ts] == [
        ("a", "Unknown", "Healthy"),
        ("b", "Unknown", "Unhealthy"),
    ]
    assert pool.counts() == (2, 1, 0)
    pool, ts = pool.observe({"a": OK, "b": BAD}, TH, T0)
    assert ts == []


def test_membership_change_keeps_health_of_unchanged_endpoints_only():
    pool, _ = PoolHealth(members=(A, B)).observe({"a": OK, "b": OK}, TH, T0)
    moved_b = Endpoint("b", "127.0.0.9", 80)
    reweighted_a = Endpoint("a", "127.0.0.2", 80, weight=5)
    c = Endpoint("c", "127.0.0.4", 80)
    pool = pool.with_members((reweighted_a, moved_b, c))
    assert [pool.of(n).health for n in ("a", "b", "c")] == ["Healthy", "Unknown", "Unknown"]
    assert pool.counts() == (3, 1, 2)


def test_removed_endpoints_leave_the_pool():
    pool, _ = PoolHealth(members=(A, B)).observe({"a": OK, "b": OK}, TH, T0)
    pool = pool.with_members((A,))
    assert pool.counts() == (1, 1, 0)
    assert pool.of("b").health == "Unknown"


SLOW = ProbeResult(True, "ProbeSucceeded", "HTTP 200", latency_s=0.9)
FAST = ProbeResult(True, "ProbeSucceeded", "HTTP 200", latency_s=0.01)
TH_LAT = Thresholds(healthy=2, unhealthy=2, degraded_latency_s=0.5)


def run_lat(results):
    h, seen = EndpointHealth(), []
    for r in results:
        h = observe(h, r, TH_LAT, T0)
        seen.append(h.health)
    return seen, h


def test_slow_answers_make_an_endpoint_degraded_not_dead():
    seen, h = run_lat([FAST, SLOW, SLOW, FAST, FAST])
    assert seen == ["Healthy", "Healthy", "Degraded", "Degraded", "Healthy"]
    seen, h = run_lat([FAST, SLOW, SLOW])
    assert h.reason == "SlowAnswer" and "slower than 500 ms" in h.message


def test_first_probe_slow_is_degraded_and_failures_still_eject_a_degraded_endpoint():
    seen, _ = run_lat([SLOW, BAD, BAD])
    assert seen == ["Degraded", "Degraded", "Unhealthy"]
    seen, _ = run_lat([BAD, SLOW, SLOW])
    assert seen == ["Unhealthy", "Unhealthy", "Degraded"]


def test_degraded_endpoints_still_count_as_serving():
    pool = PoolHealth(members=(A, B))
    pool, _ = pool.observe({"a": SLOW, "b": FAST}, TH_LAT, T0)
    assert pool.counts() == (2, 2, 0) and pool.degraded() == ["a"]
