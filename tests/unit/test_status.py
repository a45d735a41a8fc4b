import copy
from datetime import UTC, datetime, timedelta

from clusterpool.core.failover import BreakerConfig, FailoverConfig
from clusterpool.core.health import Endpoint, ProbeResult, Thresholds
from clusterpool.core.pool import PoolState, step
from clusterpool.core.status import render_status, restore_state, status_change

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TH = Thresholds(healthy=1, unhealthy=1)
CFG = FailoverConfig(
    breaker=BreakerConfig(failure_threshold=1, open_seconds=30, success_threshold=1),
    max_ejection_percent=100,
    panic_threshold_percent=0,
)
OK = ProbeResult(True, "ProbeSucceeded", "HTTP 200", 0.004)
BAD = ProbeResult(False, "ConnectionRefused", "connection refused")
EPS = (Endpoint("a", "127.0.0.2", 80), Endpoint("b", "127.0.0.3", 80, weight=3), Endpoint("c", "127.0.0.4", 80))


def run(rounds, cfg=CFG, members=EPS, start=None):
    state = start or PoolState().with_members(members)
    events = []
    for i, results in enumerate(rounds):
        state, ev = step(state, results, TH, cfg, T0 + timedelta(seconds=i))
        events += ev
    return state, events


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def render(state, prev=(), now=T0, **kw):
    return render_status(state, source="Static", generation=4, prev_conditions=list(prev), now=now, **kw)


def test_fresh_pool_is_probing_not_ready():
    s = render(PoolState().with_members(EPS))
    assert (s["total"], s["healthy"], s["eligible"]) == (3, 0, 0)
    assert (cond(s, "Ready")["status"], cond(s, "Ready")["reason"]) == ("Unknown", "Probing")
    assert [e["health"] for e in s["endpoints"]] == ["Unknown"] * 3
    assert s["observedGeneration"] == 4 and cond(s, "Ready")["observedGeneration"] == 4


def test_partial_failure_is_ready_degraded_and_ejects():
    state, events = run([{"a": OK, "b": BAD, "c": OK}])
    s = render(state)
    assert (s["total"], s["healthy"], s["eligible"], s["ejected"]) == (3, 2, 2, 1)
    assert (cond(s, "Ready")["status"], cond(s, "Ready")["message"]) == ("True", "2 of 3 endpoints healthy")
    assert cond(s, "Degraded")["status"] == "True" and cond(s, "Degraded")["message"].endswith(": b")
    b = s["endpoints"][1]
    assert b == {
        "name": "b",
        "address": "127.0.0.3",
        "port": 80,
        "tier": 0,
        "weight": 3,
        "effectiveWeight": 0,
        "eligible": False,
        "health": "Unhealthy",
        "sourceState": "Ready",
        "breaker": "Open",
        "ejections": 1,
        "consecutiveFailures": 1,
        "openUntil": "2026-01-01T00:00:30Z",
        "reason": "ConnectionRefused",
        "message": "connection refused",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    assert s["endpoints"][0]["lastProbeLatencyMilliseconds"] == 4
    assert [e.reason for e in events] == ["EndpointHealthy", "EndpointUnhealthy", "EndpointHealthy", "EndpointEjected"]
    # a and c, healthy from their first probe, changed nothing worth posting; b did
    assert [e.reason for e in events if e.posted] == ["EndpointUnhealthy", "EndpointEjected"]
    ejected = next(e for e in events if e.reason == "EndpointEjected")
    assert ejected.type == "Warning" and "ejected for 30s (ejection #1)" in ejected.message


def test_breaker_cycle_emits_every_transition():
    rounds = [{"a": BAD}] + [{"a": OK}] * 31
    state, events = run(rounds, members=EPS[:1])
    assert [e.reason for e in events] == [
        "EndpointUnhealthy",
        "EndpointEjected",
        "EndpointHealthy",
        "EndpointHalfOpen",
        "EndpointRecovered",
    ]
    assert render(state)["endpoints"][0]["breaker"] == "Closed"


def test_all_unhealthy_is_not_ready():
    state, _ = run([{"a": BAD, "b": BAD, "c": BAD}])
    ready = cond(render(state), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoHealthyEndpoints")


def test_panic_is_a_condition_and_an_event_both_ways():
    cfg = FailoverConfig(breaker=CFG.breaker, max_ejection_percent=100, panic_threshold_percent=50)
    state, events = run([{"a": OK, "b": BAD, "c": BAD}], cfg)
    s = render(state)
    assert s["panic"] is True and cond(s, "Panic")["status"] == "True" and s["eligible"] == 3
    assert "PanicEntered" in [e.reason for e in events]
    state, events = run([{"a": OK, "b": OK, "c": OK}] * 31, cfg, start=state)
    assert render(state)["panic"] is False and "PanicLeft" in [e.reason for e in events]


def test_tier_failover_and_failback_are_reported():
    eps = (Endpoint("p", "127.0.0.2", 80, tier=0), Endpoint("s", "127.0.0.3", 80, tier=1))
    state, events = run([{"p": BAD, "s": OK}], members=eps)
    assert render(state)["activeTier"] == 1 and "TierFailover" in [e.reason for e in events]
    assert [e["eligible"] for e in render(state)["endpoints"]] == [False, True]
    state, events = run([{"p": OK, "s": OK}] * 31, members=eps, start=state)
    assert render(state)["activeTier"] == 0 and "TierFailback" in [e.reason for e in events]


def test_condition_time_moves_only_when_status_flips():
    state, _ = run([{"a": OK, "b": OK, "c": OK}])
    first = render(state)
    state, _ = run([{"a": OK, "b": BAD, "c": OK}], start=state)
    later = render(state, prev=first["conditions"], now=T0 + timedelta(minutes=1))
    assert cond(later, "Ready")["lastTransitionTime"] == cond(first, "Ready")["lastTransitionTime"]
    assert cond(later, "Degraded")["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_rendering_is_stable_while_nothing_changes():
    state, _ = run([{"a": OK, "b": OK, "c": OK}])
    first = render(state)
    slightly_slower = ProbeResult(True, "ProbeSucceeded", "HTTP 200", 0.006)
    state, events = run([{"a": slightly_slower, "b": OK, "c": OK}], start=state)
    assert events == []
    assert render(state, prev=first["conditions"], now=T0 + timedelta(seconds=10)) == first


def test_invalid_spec_is_reported_without_dropping_the_pool():
    state, _ = run([{"a": OK, "b": OK, "c": OK}])
    s = render(state, spec_error="spec.healthCheck: bad")
    assert cond(s, "SpecValid")["status"] == "False"
    assert "last valid spec stays in use" in cond(s, "SpecValid")["message"]
    assert cond(s, "Ready")["status"] == "True" and s["healthy"] == 3
    never = render(PoolState(), spec_error="spec.discovery: bad", have_spec=False)
    assert cond(never, "Ready")["reason"] == "InvalidSpec"


def test_restore_round_trips_and_emits_nothing_new():
    state, _ = run([{"a": OK, "b": BAD, "c": OK}])
    status = render(state)
    restored = restore_state(EPS, status)
    assert render(restored, prev=status["conditions"]) == status
    assert restored.breaker("b").state == "Open" and restored.breaker("b").open_until == T0 + timedelta(seconds=30)
    again, events = step(restored, {"a": OK, "b": BAD, "c": OK}, TH, CFG, T0 + timedelta(seconds=2))
    assert events == []
    after = render(again, prev=status["conditions"])
    assert after["conditions"] == status["conditions"]
    assert after["endpoints"][1]["consecutiveFailures"] == 2  # the one thing that moved
    assert [{**e, "consecutiveFailures": 0} for e in after["endpoints"]] == [
        {**e, "consecutiveFailures": 0} for e in status["endpoints"]
    ]


def test_restore_ignores_endpoints_that_moved():
    state, _ = run([{"a": OK, "b": OK, "c": OK}])
    moved = (Endpoint("a", "127.0.0.9", 80), *EPS[1:])
    restored = restore_state(moved, render(state))
    assert restored.health.of("a").health == "Unknown" and restored.health.of("b").health == "Healthy"


def test_merge_patch_deletes_what_is_gone():
    from clusterpool.core.status import merge_patch

    old = {"cache": {"type": "Redis", "removedKeys": 3, "keys": 1}, "source": "Static", "endpoints": [{"a": 1}]}
    new = {"cache": {"type": "Redis", "keys": 2}, "endpoints": [{"b": 2}]}
    patch = merge_patch(old, new)
    assert patch == {
        "cache": {"type": "Redis", "keys": 2, "removedKeys": None},
        "endpoints": [{"b": 2}],
        "source": None,
    }

    def apply(target, p):  # RFC 7386
        out = dict(target)
        for k, v in p.items():
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = apply(out[k], v)
            else:
                out[k] = v
        return out

    assert apply(old, patch) == new


def test_status_change_says_what_moved_health_before_informational_before_load():
    state, _ = run([{"a": OK, "b": OK, "c": OK}])
    before = render_status(state, source="static", generation=1, prev_conditions=[], now=T0)
    before["endpoints"][0]["load"] = {"waiting": 1}

    def moved(edit):
        after = copy.deepcopy(before)
        edit(after)
        return status_change(before, after)

    assert moved(lambda s: None) == "none"
    assert moved(lambda s: s["endpoints"][0]["load"].update(waiting=7)) == "load"
    assert moved(lambda s: s.update(load={"waiting": 7})) == "load"
    assert moved(lambda s: s["endpoints"][1].update(lastProbeLatencyMilliseconds=99)) == "informational"
    assert moved(lambda s: s["endpoints"][2].update(message="slow", load={"waiting": 3})) == "informational"
    assert moved(lambda s: s["endpoints"][1].update(health="Unhealthy", consecutiveFailures=2)) == "health"
    assert moved(lambda s: s.update(healthy=2)) == "health"
    assert moved(lambda s: s["endpoints"].pop()) == "health"
