"""Failover as pure functions: per-endpoint circuit breakers, the ejection limit, panic
mode, priority tiers and slow start. Envoy's outlier-detection vocabulary and defaults.

Inputs are the probe results folded by core.health; the output is, per endpoint, its
breaker state, whether it is eligible for traffic and its effective weight, plus the pool's
active tier and panic flag. Everything takes `now` as an argument: no clock, no I/O.

Rules:
- Breaker (per endpoint). Closed -> Open after `failure_threshold` consecutive failed
  probes; Open lasts open_seconds x ejections (1st, 2nd, ...) capped at max_open_seconds;
  then HalfOpen, where up to `half_open_max_probes` trial probes run per round; after
  `success_threshold` successes -> Closed, and any failure -> Open again (one more ejection).
  One past ejection is forgiven for every max_open_seconds spent Closed since recovering.
- Ejected = not eligible: health Unhealthy, or breaker Open/HalfOpen.
- Ejection limit: at most max_ejection_percent of the pool's endpoints are ejected at once,
  but always at least one (so a small pool can eject at all). Endpoints ejected earlier
  keep their place; the rest stay in and are reported as EjectionLimited.
- Tiers: the active tier is the lowest tier that is good enough: a tier below the current
  one needs failback_percent healthy (hysteresis), the current and higher ones
  failover_percent. If none is, the tier with the largest healthy share serves.
- Panic: if the active tier's healthy share is below panic_threshold_percent, every
  endpoint of that tier is eligible (better some errors than none served).
- Slow start: an endpoint that comes back ramps its weight linearly from
  min_weight_percent to 100% over slow_start_seconds, in steps of 10% (fewer writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from clusterpool.core.health import Endpoint, EndpointHealth

BreakerState = Literal["Closed", "Open", "HalfOpen"]
MIN_WEIGHT_PERCENT = 10


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 3
    open_seconds: int = 30
    max_open_seconds: int = 300
    half_open_max_probes: int = 1
    success_threshold: int = 2


@dataclass(frozen=True)
class Breaker:
    state: BreakerState = "Closed"
    ejections: int = 0  # how many times ejected (drives the open time)
    failures: int = 0  # consecutive failed probes while Closed
    trial_successes: int = 0  # while HalfOpen
    open_until: datetime | None = None
    since: datetime | None = None  # last state change
    recovered_at: datetime | None = None  # last HalfOpen -> Closed (slow start, decay)


@dataclass(frozen=True)
class BreakerEvent:
    before: BreakerState
    after: BreakerState


def open_duration(cfg: BreakerConfig, ejections: int) -> timedelta:
    return timedelta(seconds=min(cfg.open_seconds * max(1, ejections), cfg.max_open_seconds))


def _open(b: Breaker, cfg: BreakerConfig, now: datetime) -> Breaker:
    previous = b.ejections
    if b.state == "Closed" and b.recovered_at is not None:  # one ejection forgiven per max_open_seconds
        previous -= int((now - b.recovered_at).total_seconds() // cfg.max_open_seconds)
    ejections = max(0, previous) + 1
    return Breaker("Open", ejections, 0, 0, now + open_duration(cfg, ejections), now, b.recovered_at)


def tick(b: Breaker, now: datetime) -> Breaker:
    """Time passing: Open -> HalfOpen when the open time is over."""
    if b.state == "Open" and b.open_until is not None and now >= b.open_until:
        return Breaker("HalfOpen", b.ejections, 0, 0, None, now, b.recovered_at)
    return b


def on_probe(b: Breaker, ok: bool, cfg: BreakerConfig, now: datetime) -> Breaker:
    """One probe result. In Open it only counts for nothing (the timer decides)."""
    if b.state == "Closed":
        if ok:
            return replace(b, failures=0)
        failures = b.failures + 1
        return _open(b, cfg, now) if failures >= cfg.failure_threshold else replace(b, failures=failures)
    if b.state == "HalfOpen":
        if not ok:
            return _open(b, cfg, now)
        successes = b.trial_successes + 1
        if successes >= cfg.success_threshold:
            return Breaker("Closed", b.ejections, 0, 0, None, now, now)
        return replace(b, trial_successes=successes)
    return b


@dataclass(frozen=True)
class FailoverConfig:
    breaker: BreakerConfig = BreakerConfig()
    max_ejection_percent: int = 50
    panic_threshold_percent: int = 50
    failover_percent: int = 50
    failback_percent: int = 80
    slow_start_seconds: int = 0


@dataclass(frozen=True)
class Member:
    """An endpoint with everything failover knows of it."""

    endpoint: Endpoint
    tier: int
    health: EndpointHealth
    breaker: Breaker


@dataclass(frozen=True)
class Decision:
    name: str
    eligible: bool
    ejected: bool  # excluded (or would be, when limited)
    ejection_limited: bool  # should be ejected, kept in by max_ejection_percent
    effective_weight: int


@dataclass(frozen=True)
class PoolDecision:
    active_tier: int
    panic: bool
    decisions: tuple[Decision, ...]

    def of(self, name: str) -> Decision:
        return next(d for d in self.decisions if d.name == name)

    @property
    def eligible(self) -> list[str]:
        return [d.name for d in self.decisions if d.eligible]


def wants_ejection(m: Member) -> bool:
    return m.health.health == "Unhealthy" or m.breaker.state != "Closed"


def allowed_ejections(total: int, max_percent: int) -> int:
    """At most max_percent of the pool, and always at least one (small pools)."""
    if total == 0 or max_percent == 0:
        return 0
    return max(1, total * max_percent // 100)


def _ejected_since(m: Member) -> datetime:
    times = [t for t in (m.health.last_transition, m.breaker.since) if t is not None]
    return min(times) if times else datetime.max.replace(tzinfo=UTC)


def choose_tier(current: int, shares: Mapping[int, float], failover: float, failback: float) -> int:
    tiers = sorted(shares)
    if not tiers:
        return 0
    for t in tiers:
        bar = failback if t < current else failover
        if shares[t] >= bar:
            return t
    return max(tiers, key=lambda t: (shares[t], t == current, -t))


def slow_start_weight(weight: int, since: datetime | None, seconds: int, now: datetime) -> int:
    if seconds <= 0 or since is None:
        return weight
    progress = (now - since).total_seconds() / seconds
    if progress >= 1:
        return weight
    percent = max(MIN_WEIGHT_PERCENT, int(progress * 10) * 10)
    return max(1, weight * percent // 100)


def decide(members: Sequence[Member], cfg: FailoverConfig, current_tier: int, now: datetime) -> PoolDecision:
    total = len(members)
    # 1. ejections, capped
    want = sorted((m for m in members if wants_ejection(m)), key=lambda m: (_ejected_since(m), m.endpoint.name))
    cap = allowed_ejections(total, cfg.max_ejection_percent)
    ejected = {m.endpoint.name for m in want[:cap]}
    limited = {m.endpoint.name for m in want[cap:]}
    # 2. tiers: healthy share per tier, among endpoints not ejected
    by_tier: dict[int, list[Member]] = {}
    for m in members:
        by_tier.setdefault(m.tier, []).append(m)
    shares = {t: 100.0 * sum(1 for m in ms if not wants_ejection(m)) / len(ms) for t, ms in by_tier.items()}
    tier = choose_tier(current_tier, shares, cfg.failover_percent, cfg.failback_percent)
    # 3. panic within the active tier
    panic = bool(by_tier) and shares.get(tier, 0.0) < cfg.panic_threshold_percent
    decisions = []
    for m in members:
        name = m.endpoint.name
        in_tier = m.tier == tier
        eligible = in_tier and m.endpoint.source_ready and (panic or name not in ejected)
        since = m.breaker.recovered_at if m.breaker.state == "Closed" else None
        weight = slow_start_weight(m.endpoint.weight, since, cfg.slow_start_seconds, now) if eligible else 0
        decisions.append(Decision(name, eligible, name in ejected or name in limited, name in limited, weight))
    return PoolDecision(tier, panic, tuple(decisions))
