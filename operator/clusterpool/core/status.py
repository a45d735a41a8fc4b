"""Render a ClusterPool's status from its health, and read health back from a status.

Pure functions: no clock (the caller passes `now`), no I/O. The output contains only
fields the CRD declares, and it stays byte-for-byte the same while nothing changes,
so the operator can skip writes by comparing dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clusterpool.core.health import Endpoint, EndpointHealth, PoolHealth


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(s: str | None) -> datetime | None:
    if not s:
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


def pool_conditions(pool: PoolHealth, spec_error: str | None, have_spec: bool) -> list[ConditionSpec]:
    total, healthy, unknown = pool.counts()
    unhealthy = total - healthy - unknown
    share = f"{healthy} of {total} endpoints healthy"
    if not have_spec:
        ready = ConditionSpec("Ready", "False", "InvalidSpec", "the spec cannot be used: see SpecValid")
    elif healthy > 0:
        ready = ConditionSpec("Ready", "True", "EndpointsAvailable", share)
    elif unknown > 0:
        ready = ConditionSpec("Ready", "Unknown", "Probing", f"waiting for the first probe of {unknown} endpoints")
    else:
        ready = ConditionSpec("Ready", "False", "NoHealthyEndpoints", share)
    if unhealthy > 0:
        down = sorted(ep.name for ep in pool.members if pool.of(ep.name).health == "Unhealthy")
        degraded = ConditionSpec(
            "Degraded", "True", "EndpointsUnhealthy", f"{unhealthy} of {total} endpoints unhealthy: {', '.join(down)}"
        )
    else:
        degraded = ConditionSpec("Degraded", "False", "AllProbedHealthy", share)
    if spec_error is None:
        valid = ConditionSpec("SpecValid", "True", "Accepted", "the spec is in use")
    else:
        what = "the last valid spec stays in use" if have_spec else "nothing can run until it is fixed"
        valid = ConditionSpec("SpecValid", "False", "InvalidSpec", f"{spec_error}; {what}")
    return [ready, degraded, valid]


def endpoint_status(ep: Endpoint, h: EndpointHealth) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": ep.name,
        "address": ep.address,
        "port": ep.port,
        "weight": ep.weight,
        "health": h.health,
    }
    if h.reason:
        out["reason"] = h.reason
    if h.message:
        out["message"] = h.message[:1024]
    if h.last_transition:
        out["lastTransitionTime"] = rfc3339(h.last_transition)
    return out


def render_status(
    pool: PoolHealth,
    *,
    source: str | None,
    generation: int | None,
    prev_conditions: Sequence[Mapping[str, Any]],
    now: datetime,
    spec_error: str | None = None,
    have_spec: bool = True,
) -> dict[str, Any]:
    total, healthy, _ = pool.counts()
    out: dict[str, Any] = {
        "total": total,
        "healthy": healthy,
        "endpoints": [endpoint_status(ep, pool.of(ep.name)) for ep in pool.members],
        "conditions": [
            condition(prev_conditions, c, generation, now) for c in pool_conditions(pool, spec_error, have_spec)
        ],
    }
    if source is not None:
        out["source"] = source
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def restore_health(members: Sequence[Endpoint], status: Mapping[str, Any]) -> PoolHealth:
    """Health as the last status recorded it, so an operator restart does not flap
    endpoints: a restored Healthy endpoint still needs unhealthyThreshold failures."""
    recorded = {e.get("name"): e for e in status.get("endpoints") or [] if isinstance(e, Mapping)}
    health = []
    for ep in members:
        rec = recorded.get(ep.name)
        if rec is None or (rec.get("address"), rec.get("port")) != (ep.address, ep.port):
            continue
        state = rec.get("health")
        if state not in ("Healthy", "Unhealthy"):
            continue
        health.append(
            (
                ep.name,
                EndpointHealth(
                    health=state,
                    reason=rec.get("reason"),
                    message=rec.get("message"),
                    last_transition=parse_rfc3339(rec.get("lastTransitionTime")),
                ),
            )
        )
    return PoolHealth(members=tuple(members), health=tuple(health))
