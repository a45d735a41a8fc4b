from datetime import UTC, datetime, timedelta

from clusterpool.core.health import Endpoint, PoolHealth, ProbeResult, Thresholds
from clusterpool.core.status import render_status, restore_health

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TH = Thresholds(healthy=1, unhealthy=1)
OK = ProbeResult(True, "ProbeSucceeded", "HTTP 200")
BAD = ProbeResult(False, "ConnectionRefused", "connection refused")
EPS = (Endpoint("a", "127.0.0.2", 80), Endpoint("b", "127.0.0.3", 80, weight=3), Endpoint("c", "127.0.0.4", 80))


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def render(pool, prev=(), now=T0, **kw):
    return render_status(pool, source="Static", generation=4, prev_conditions=list(prev), now=now, **kw)


def test_fresh_pool_is_probing_not_ready():
    s = render(PoolHealth(members=EPS))
    assert (s["total"], s["healthy"]) == (3, 0)
    assert cond(s, "Ready")["status"] == "Unknown" and cond(s, "Ready")["reason"] == "Probing"
    assert [e["health"] for e in s["endpoints"]] == ["Unknown"] * 3
    assert s["observedGeneration"] == 4 and cond(s, "Ready")["observedGeneration"] == 4


def test_partial_health_is_ready_and_degraded():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": BAD, "c": OK}, TH, T0)
    s = render(pool)
    assert (s["total"], s["healthy"]) == (3, 2)
    assert (cond(s, "Ready")["status"], cond(s, "Ready")["message"]) == ("True", "2 of 3 endpoints healthy")
    assert cond(s, "Degraded")["status"] == "True" and "b" in cond(s, "Degraded")["message"]
    b = s["endpoints"][1]
    assert b == {
        "name": "b",
        "address": "127.0.0.3",
        "port": 80,
        "weight": 3,
        "health": "Unhealthy",
        "reason": "ConnectionRefused",
        "message": "connection refused",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def test_all_unhealthy_is_not_ready():
    pool, _ = PoolHealth(members=EPS).observe({"a": BAD, "b": BAD, "c": BAD}, TH, T0)
    ready = cond(render(pool), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoHealthyEndpoints")


def test_condition_time_moves_only_when_status_flips():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": OK, "c": OK}, TH, T0)
    first = render(pool)
    pool2, _ = pool.observe({"a": OK, "b": BAD, "c": OK}, TH, T0 + timedelta(minutes=1))
    later = render(pool2, prev=first["conditions"], now=T0 + timedelta(minutes=1))
    assert cond(later, "Ready")["lastTransitionTime"] == cond(first, "Ready")["lastTransitionTime"]
    assert cond(later, "Degraded")["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_rendering_is_stable_while_nothing_changes():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": OK, "c": OK}, TH, T0)
    first = render(pool)
    pool, _ = pool.observe({"a": OK, "b": OK, "c": OK}, TH, T0 + timedelta(seconds=10))
    assert render(pool, prev=first["conditions"], now=T0 + timedelta(seconds=10)) == first


def test_invalid_spec_is_reported_without_dropping_the_pool():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": OK, "c": OK}, TH, T0)
    s = render(pool, spec_error="spec.healthCheck: bad")
    assert cond(s, "SpecValid")["status"] == "False"
    assert "last valid spec stays in use" in cond(s, "SpecValid")["message"]
    assert cond(s, "Ready")["status"] == "True" and s["healthy"] == 3
    never = render(PoolHealth(), spec_error="spec.discovery: bad", have_spec=False)
    assert cond(never, "Ready")["reason"] == "InvalidSpec"


def test_restore_health_from_status_round_trips():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": BAD, "c": OK}, TH, T0)
    status = render(pool)
    restored = restore_health(EPS, status)
    assert [restored.of(e.name).health for e in EPS] == ["Healthy", "Unhealthy", "Healthy"]
    assert restored.of("b").last_transition == T0
    assert render(restored, prev=status["conditions"]) == status


def test_restore_ignores_endpoints_that_moved():
    pool, _ = PoolHealth(members=EPS).observe({"a": OK, "b": OK, "c": OK}, TH, T0)
    moved = (Endpoint("a", "127.0.0.9", 80), *EPS[1:])
    restored = restore_health(moved, render(pool))
    assert restored.of("a").health == "Unknown" and restored.of("b").health == "Healthy"
