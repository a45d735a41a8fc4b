"""The whole state of one pool and its step function: (state, probe results) -> (state, events).

PoolState folds health (core.health), breakers and the failover decision (core.failover)
together; `step` is the reducer the runner calls once per probe round. The Events it
returns are rendered here too, so every transition and its wording is unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from clusterpool.core.failover import (
    Breaker,
    FailoverConfig,
    Member,
    PoolDecision,
    decide,
    on_probe,
    tick,
)
from clusterpool.core.health import Endpoint, PoolHealth, ProbeResult, Thresholds, Transition


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # False: logged, not posted. An endpoint healthy from its first probe changes nothing
    # anyone acts on (PoolReady says the pool serves); at 1,000 new pools those Events
    # were 10,000 writes.
    posted: bool = True


@dataclass(frozen=True)
class PoolState:
    health: PoolHealth = field(default_factory=PoolHealth)
    breakers: Mapping[str, Breaker] = field(default_factory=dict)
    latency_ms: Mapping[str, int] = field(default_factory=dict)
    decision: PoolDecision | None = None

    @property
    def members(self) -> tuple[Endpoint, ...]:
        return self.health.members

    def breaker(self, name: str) -> Breaker:
        return self.breakers.get(name, Breaker())

    def with_members(self, members: tuple[Endpoint, ...]) -> PoolState:
        health = self.health.with_members(members)
        kept = {name for name, _ in health.health}
        return replace(
            self,
            health=health,
            breakers={n: b for n, b in self.breakers.items() if n in kept},
            latency_ms={n: v for n, v in self.latency_ms.items() if n in kept},
        )

    def decide(self, cfg: FailoverConfig, now: datetime) -> PoolDecision:
        members = [Member(ep, ep.tier, self.health.of(ep.name), self.breaker(ep.name)) for ep in self.members]
        current = self.decision.active_tier if self.decision else min((ep.tier for ep in self.members), default=0)
        return decide(members, cfg, current, now)


def _count(n: int, what: str) -> str:
    return f"1 {what}" if n == 1 else f"{n} consecutive {what}s"


def _ep(ep: Endpoint) -> str:
    return f"endpoint {ep.name} ({ep.address}:{ep.port})"


def health_event(t: Transition, thresholds: Thresholds) -> Event:
    if t.after == "Degraded":
        return Event("Warning", "EndpointDegraded", f"{_ep(t.endpoint)} is Degraded (still serving): {t.message}")
    if t.after == "Unhealthy":
        after = "its first probe failed" if t.before == "Unknown" else _count(thresholds.unhealthy, "failed probe")
        return Event("Warning", "EndpointUnhealthy", f"{_ep(t.endpoint)} is Unhealthy after {after}: {t.message}")
    if t.before == "Degraded":
        after = _count(thresholds.healthy, "fast probe")
    else:
        after = "its first probe passed" if t.before == "Unknown" else _count(thresholds.healthy, "passing probe")
    return Event("Normal", "EndpointHealthy", f"{_ep(t.endpoint)} is Healthy after {after}", t.before != "Unknown")


def breaker_event(ep: Endpoint, before: Breaker, after: Breaker, cfg: FailoverConfig, message: str) -> Event | None:
    if after.state == "Open" and after.open_until is not None and after.since is not None:
        seconds = int((after.open_until - after.since).total_seconds())
        if before.state == "HalfOpen":
            return Event(
                "Warning",
                "EndpointReejected",
                f"{_ep(ep)} failed a trial probe and is ejected again for {seconds}s "
                f"(ejection #{after.ejections}): {message}",
            )
        return Event(
            "Warning",
            "EndpointEjected",
            f"{_ep(ep)} is ejected for {seconds}s (ejection #{after.ejections}) after "
            f"{_count(cfg.breaker.failure_threshold, 'failed probe')}: {message}",
        )
    if after.state == "HalfOpen" and before.state == "Open":
        return Event("Normal", "EndpointHalfOpen", f"{_ep(ep)}: ejection over, trial probes begin")
    if after.state == "Closed" and before.state == "HalfOpen":
        ramp = f", weight ramps up over {cfg.slow_start_seconds}s" if cfg.slow_start_seconds else ""
        return Event(
            "Normal",
            "EndpointRecovered",
            f"{_ep(ep)} passed {cfg.breaker.success_threshold} trial probes and is back in{ramp}",
        )
    return None


def decision_events(before: PoolDecision, after: PoolDecision, members: tuple[Endpoint, ...]) -> list[Event]:
    out: list[Event] = []
    if after.active_tier != before.active_tier:
        if after.active_tier > before.active_tier:
            out.append(
                Event(
                    "Warning",
                    "TierFailover",
                    f"tier {before.active_tier} is not healthy enough: traffic fails over to tier {after.active_tier}",
                )
            )
        else:
            out.append(
                Event(
                    "Normal",
                    "TierFailback",
                    f"tier {after.active_tier} is healthy again: traffic fails back from tier {before.active_tier}",
                )
            )
    was_panic = before.panic
    if after.panic and not was_panic:
        out.append(
            Event(
                "Warning",
                "PanicEntered",
                f"too few healthy endpoints in tier {after.active_tier}: routing to all "
                f"{len(after.eligible)} of its endpoints",
            )
        )
    elif was_panic and not after.panic:
        out.append(Event("Normal", "PanicLeft", f"tier {after.active_tier} is healthy enough: panic mode is over"))
    limited_before = {d.name for d in before.decisions if d.ejection_limited}
    for d in after.decisions:
        if d.ejection_limited and d.name not in limited_before:
            ep = next(e for e in members if e.name == d.name)
            out.append(
                Event("Warning", "EjectionLimited", f"{_ep(ep)} should be ejected, but maxEjectionPercent keeps it in")
            )
    return out


def _latency(prev: int | None, result: ProbeResult) -> int | None:
    """The latency to report: refreshed when it halves or doubles and moves by over 25 ms,
    so ordinary jitter does not rewrite the status every round."""
    if not result.ok:
        return prev
    ms = round(result.latency_s * 1000)
    if prev is None or (abs(ms - prev) > 25 and (ms > 2 * prev or 2 * ms < prev)):
        return ms
    return prev


def step(
    state: PoolState, results: Mapping[str, ProbeResult], thresholds: Thresholds, cfg: FailoverConfig, now: datetime
) -> tuple[PoolState, list[Event]]:
    health, transitions = state.health.observe(dict(results), thresholds, now)
    events = [health_event(t, thresholds) for t in transitions]
    breakers: dict[str, Breaker] = {}
    latency: dict[str, int] = {}
    for ep in state.members:
        before = state.breaker(ep.name)
        ticked = tick(before, now)  # time first (Open -> HalfOpen), then this round's probe
        result = results.get(ep.name)
        after = on_probe(ticked, result.ok, cfg.breaker, now) if result is not None else ticked
        for x, y, why in ((before, ticked, ""), (ticked, after, _msg(result))):
            if x.state != y.state or x.ejections != y.ejections:
                e = breaker_event(ep, x, y, cfg, why)
                if e is not None:
                    events.append(e)
        breakers[ep.name] = after
        lat = _latency(state.latency_ms.get(ep.name), result) if result else state.latency_ms.get(ep.name)
        if lat is not None:
            latency[ep.name] = lat
    new = PoolState(health=health, breakers=breakers, latency_ms=latency, decision=state.decision)
    decision = new.decide(cfg, now)
    # A new pool starts on its lowest tier, out of panic.
    previous = state.decision or PoolDecision(min((ep.tier for ep in state.members), default=0), False, ())
    events += decision_events(previous, decision, state.members)
    return replace(new, decision=decision), events


def _msg(result: ProbeResult | None) -> str:
    return result.message if result is not None else ""
