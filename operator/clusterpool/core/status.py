"""Render a ClusterPool's status from its state, and read the state back from a status.

Pure functions: no clock (the caller passes `now`), no I/O. The output contains only
fields the CRD declares, and it stays the same while nothing changes, so the operator
can skip writes by comparing dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from clusterpool.core.failover import Breaker, Decision, PoolDecision
from clusterpool.core.health import Endpoint, EndpointHealth, PoolHealth
from clusterpool.core.load import EngineReading
from clusterpool.core.pool import PoolState

# the condition types the stages report (Ready, Degraded, Panic and SpecValid are the core's own)
PUBLISHED = "Published"
PUBLISHED_TO_CONSUL = "PublishedToConsul"
CACHE_READY = "CacheReady"
DISCOVERY_DEGRADED = "DiscoveryDegraded"
FAILURE_CAP = 100  # consecutive failures reported at most, before a spec says how many eject


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(s: Any) -> datetime | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class ConditionSpec:
    type: str
    status: str
    reason: str
    message: str


def condition(
    prev: Sequence[Mapping[str, Any]], want: ConditionSpec, generation: int | None, now: datetime
) -> dict[str, Any]:
    """A metav1.Condition whose lastTransitionTime moves only when status flips."""
    old = next((c for c in prev if c.get("type") == want.type), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == want.status else None
    out: dict[str, Any] = {
        "type": want.type,
        "status": want.status,
        "reason": want.reason,
        "message": want.message,
        "lastTransitionTime": since or rfc3339(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def pool_conditions(state: PoolState, spec_error: str | None, have_spec: bool) -> list[ConditionSpec]:
    total, healthy, unknown = state.health.counts()
    decision = state.decision
    ejected = sorted(d.name for d in decision.decisions if d.ejected) if decision else []
    share = f"{healthy} of {total} endpoints healthy"
    if not have_spec:
        ready = ConditionSpec("Ready", "False", "InvalidSpec", "the spec cannot be used: see SpecValid")
    elif healthy > 0:
        ready = ConditionSpec("Ready", "True", "EndpointsAvailable", share)
    elif unknown > 0:
        ready = ConditionSpec("Ready", "Unknown", "Probing", f"waiting for the first probe of {unknown} endpoints")
    else:
        ready = ConditionSpec("Ready", "False", "NoHealthyEndpoints", share)
    slow = state.health.degraded()
    if ejected:
        degraded = ConditionSpec(
            "Degraded", "True", "EndpointsEjected", f"{len(ejected)} of {total} endpoints ejected: {', '.join(ejected)}"
        )
    elif slow:
        degraded = ConditionSpec(
            "Degraded", "True", "EndpointsSlow", f"{len(slow)} of {total} endpoints answer slowly: {', '.join(slow)}"
        )
    else:
        degraded = ConditionSpec("Degraded", "False", "NoneEjected", share)
    if decision is not None and decision.panic:
        panic = ConditionSpec(
            "Panic",
            "True",
            "TooFewHealthy",
            f"too few healthy endpoints in tier {decision.active_tier}: routing to all of its "
            f"{len(decision.eligible)} endpoints",
        )
    else:
        panic = ConditionSpec("Panic", "False", "EnoughHealthy", "routing to healthy endpoints only")
    if spec_error is None:
        valid = ConditionSpec("SpecValid", "True", "Accepted", "the spec is in use")
    else:
        what = "the last valid spec stays in use" if have_spec else "nothing can run until it is fixed"
        valid = ConditionSpec("SpecValid", "False", "InvalidSpec", f"{spec_error}; {what}")
    return [ready, degraded, panic, valid]


def source_state(ep: Endpoint) -> str:
    if not ep.source_ready:
        return "NotReady"
    if ep.terminating:
        return "Terminating"
    return "Warning" if ep.source_warning else "Ready"


def endpoint_status(
    ep: Endpoint, h: EndpointHealth, b: Breaker, d: Decision | None, latency_ms: int | None, failure_cap: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": ep.name,
        "address": ep.address,
        "port": ep.port,
        "tier": ep.tier,
        "weight": ep.weight,
        "effectiveWeight": d.effective_weight if d else 0,
        "eligible": d.eligible if d else False,
        "health": h.health,
        "sourceState": source_state(ep),
        "breaker": b.state,
        "ejections": b.ejections,
        "consecutiveFailures": min(h.failures, failure_cap),
    }
    if ep.labels:
        out["labels"] = dict(ep.labels)
    if ep.capacity is not None:
        out["capacity"] = ep.capacity
    if d is not None and d.ejection_limited:
        out["ejectionLimited"] = True
    if b.open_until is not None:
        out["openUntil"] = rfc3339(b.open_until)
    if b.recovered_at is not None:
        out["recoveredAt"] = rfc3339(b.recovered_at)
    if latency_ms is not None:
        out["lastProbeLatencyMilliseconds"] = latency_ms
    if h.reason:
        out["reason"] = h.reason
    if h.message:
        out["message"] = h.message[:1024]
    if h.last_transition:
        out["lastTransitionTime"] = rfc3339(h.last_transition)
    return out


SERVING = ("Healthy", "Degraded")  # the health of an endpoint whose load is shown


def _count(x: float | None) -> int | None:
    return max(0, round(x)) if x is not None and math.isfinite(x) else None


def load_status(r: EngineReading) -> dict[str, Any]:
    """status.endpoints[].load: the counts as integers, the KV use as a percentage."""
    out: dict[str, Any] = {"readAt": rfc3339(r.at)}
    if r.load is not None:
        waiting, running = _count(r.load.waiting), _count(r.load.running)
        kv = _count(r.load.kv_usage * 100) if r.load.kv_usage is not None else None
        if waiting is not None:
            out["waiting"] = waiting
        if running is not None:
            out["running"] = running
        if kv is not None:
            out["kvCacheUsagePercent"] = min(100, kv)
    if r.reason:
        out["reason"] = r.reason
        out["message"] = (r.message or "")[:1024]
    return out


def pool_load_status(shown: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """status.load: the queue and batch summed over the serving endpoints whose engine
    reported its queue, and the oldest of those readings."""
    reporting = [e for e in shown.values() if "waiting" in e]
    out: dict[str, Any] = {
        "waiting": sum(e["waiting"] for e in reporting),
        "running": sum(e.get("running", 0) for e in reporting),
        "reporting": len(reporting),
    }
    if reporting:
        out["readAt"] = min(e["readAt"] for e in reporting)  # RFC 3339 in UTC sorts as time
    return out


def render_status(
    state: PoolState,
    *,
    source: str | None,
    generation: int | None,
    prev_conditions: Sequence[Mapping[str, Any]],
    now: datetime,
    spec_error: str | None = None,
    have_spec: bool = True,
    extra_conditions: Sequence[ConditionSpec] = (),
    failure_cap: int = FAILURE_CAP,
    load: Mapping[str, EngineReading] | None = None,
) -> dict[str, Any]:
    """`failure_cap`: consecutive failures are reported up to the count that ejects, so a
    long-dead endpoint does not rewrite the status every round. `load`: the engine readings
    by endpoint name when the pool's engine reports load (None: no load fields), shown for
    serving endpoints only."""
    total, healthy, _ = state.health.counts()
    decision = state.decision
    decisions = {d.name: d for d in decision.decisions} if decision else {}
    out: dict[str, Any] = {
        "total": total,
        "healthy": healthy,
        "eligible": sum(1 for d in decisions.values() if d.eligible),
        "ejected": sum(1 for d in decisions.values() if d.ejected and not d.ejection_limited),
        "activeTier": decision.active_tier if decision else 0,
        "panic": decision.panic if decision else False,
        "endpoints": [
            endpoint_status(
                ep,
                state.health.of(ep.name),
                state.breaker(ep.name),
                decisions.get(ep.name),
                state.latency_ms.get(ep.name),
                failure_cap,
            )
            for ep in state.members
        ],
        "conditions": [
            condition(prev_conditions, c, generation, now)
            for c in [*pool_conditions(state, spec_error, have_spec), *extra_conditions]
        ],
    }
    if load is not None:
        shown = {
            ep.name: load_status(load[ep.name])
            for ep in state.members
            if ep.name in load and state.health.of(ep.name).health in SERVING
        }
        for e in out["endpoints"]:
            if e["name"] in shown:
                e["load"] = shown[e["name"]]
        out["load"] = pool_load_status(shown)
    if source is not None:
        out["source"] = source
    if generation is not None:
        out["observedGeneration"] = generation
    return out


# Fields that say how things are going rather than what clients may use: a change of these
# alone is written at a slower pace (the runner's INFORMATIONAL_EVERY), not every round.
# (The cache's figures change at most every 30 s on their own, so they are not among them.)
INFORMATIONAL_ENDPOINT_FIELDS = ("consecutiveFailures", "lastProbeLatencyMilliseconds", "reason", "message")
# The engines' load (status.load, status.endpoints[].load): a change of it alone is never
# written; it rides along with writes made for other reasons.
LOAD_FIELD = "load"


# What moved between the status last written and a new one (both plain): nothing, the
# engines' load alone (never written alone), informational fields (written at a slower
# pace), or something clients use (written now).
StatusChange = Literal["none", "load", "informational", "health"]
_NOT_HEALTH = frozenset((*INFORMATIONAL_ENDPOINT_FIELDS, LOAD_FIELD))


def status_change(previous: Mapping[str, Any], status: Mapping[str, Any]) -> StatusChange:
    """What moved from `previous` to `status`. Runs every round of every pool: one pass
    over each, no copy when nothing moved."""
    if previous == status:
        return "none"
    health_before, info_before = _health_and_informational(previous)
    health_after, info_after = _health_and_informational(status)
    if health_before != health_after:
        return "health"
    return "informational" if info_before != info_after else "load"


def _health_and_informational(status: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """(the status without its informational fields and the load, the informational fields by endpoint)."""
    endpoints = status.get("endpoints") or []
    health = {k: v for k, v in status.items() if k != LOAD_FIELD}
    health["endpoints"] = [{k: v for k, v in e.items() if k not in _NOT_HEALTH} for e in endpoints]
    informational = [tuple(map(e.get, INFORMATIONAL_ENDPOINT_FIELDS)) for e in endpoints]
    return health, informational


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that turns `old` into `new`: a merge patch keeps every
    field it does not mention, so fields gone from `new` are sent as null. Lists are
    replaced whole, as merge patches do."""
    out: dict[str, Any] = {}
    for k, v in new.items():
        o = old.get(k)
        out[k] = merge_patch(o, v) if isinstance(v, Mapping) and isinstance(o, Mapping) else v
    for k in old:
        if k not in new:
            out[k] = None
    return out


def _int(x: Any) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else 0


def restore_state(members: Sequence[Endpoint], status: Mapping[str, Any]) -> PoolState:
    """The state as the last status recorded it, so an operator restart neither flaps
    endpoints nor re-emits Events: health, breakers (with their open times and ejection
    counts), latency and the active tier and panic flag come back."""
    recorded = {e.get("name"): e for e in status.get("endpoints") or [] if isinstance(e, Mapping)}
    health: list[tuple[str, EndpointHealth]] = []
    breakers: dict[str, Breaker] = {}
    latency: dict[str, int] = {}
    for ep in members:
        rec = recorded.get(ep.name)
        if rec is None or (rec.get("address"), rec.get("port")) != (ep.address, ep.port):
            continue
        state = rec.get("health")
        if state in ("Healthy", "Degraded", "Unhealthy"):
            health.append(
                (
                    ep.name,
                    EndpointHealth(
                        health=state,
                        failures=_int(rec.get("consecutiveFailures")),
                        reason=rec.get("reason"),
                        message=rec.get("message"),
                        last_transition=parse_rfc3339(rec.get("lastTransitionTime")),
                    ),
                )
            )
        bstate = rec.get("breaker")
        if bstate in ("Closed", "Open", "HalfOpen"):
            breakers[ep.name] = Breaker(
                state=bstate,
                ejections=_int(rec.get("ejections")),
                failures=_int(rec.get("consecutiveFailures")) if bstate == "Closed" else 0,
                open_until=parse_rfc3339(rec.get("openUntil")),
                since=parse_rfc3339(rec.get("lastTransitionTime")),
                recovered_at=parse_rfc3339(rec.get("recoveredAt")),
            )
        if isinstance(rec.get("lastProbeLatencyMilliseconds"), int):
            latency[ep.name] = rec["lastProbeLatencyMilliseconds"]
    decision = None
    if status.get("endpoints"):
        decisions = tuple(
            Decision(
                name=str(rec.get("name")),
                eligible=bool(rec.get("eligible")),
                ejected=rec.get("health") == "Unhealthy" or rec.get("breaker") in ("Open", "HalfOpen"),
                ejection_limited=bool(rec.get("ejectionLimited")),
                effective_weight=_int(rec.get("effectiveWeight")),
            )
            for rec in recorded.values()
        )
        decision = PoolDecision(
            active_tier=_int(status.get("activeTier")), panic=bool(status.get("panic")), decisions=decisions
        )
    return PoolState(
        health=PoolHealth(members=tuple(members), health=tuple(health)),
        breakers=breakers,
        latency_ms=latency,
        decision=decision,
    )
