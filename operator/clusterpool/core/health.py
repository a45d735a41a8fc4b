"""Endpoint health as a pure state machine: (state, probe result) -> new state.

Rules (Envoy's active health checking):
- a new endpoint is Unknown; its first probe decides at once (Healthy or Unhealthy),
  so a fresh pool becomes usable after one round instead of healthyThreshold rounds;
- a Healthy endpoint turns Unhealthy after `unhealthy_threshold` consecutive failures;
- an Unhealthy endpoint turns Healthy after `healthy_threshold` consecutive successes;
- with a latency bound, a passing probe slower than it is "slow": `unhealthy_threshold`
  slow probes in a row make a Healthy endpoint Degraded (it still serves), and
  `healthy_threshold` fast ones make it Healthy again. Failures count as for Healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Literal

from clusterpool.core.labels import Labels

Health = Literal["Unknown", "Healthy", "Degraded", "Unhealthy"]
SERVING: tuple[Health, ...] = ("Healthy", "Degraded")


@dataclass(frozen=True)
class Endpoint:
    """A member of the pool, as discovery reports it."""

    name: str
    address: str
    port: int
    weight: int = 1
    tier: int = 0
    source_ready: bool = True  # what discovery says; a not-ready endpoint is never eligible
    terminating: bool = False  # discovery says it is shutting down (used only as a fallback)
    source_warning: bool = False  # discovery says it is degraded (Consul: a check warns)
    labels: Labels = ()  # sorted (key, value) pairs: model, zone, role, ... (core.labels)
    capacity: int | None = None  # most requests in flight a client may send it; None: no limit


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe. `reason` is one CamelCase word; `message` is for people
    and stays the same from probe to probe for the same outcome (no timings in it)."""

    ok: bool
    reason: str
    message: str
    latency_s: float = 0.0


@dataclass(frozen=True)
class Thresholds:
    healthy: int
    unhealthy: int
    degraded_latency_s: float | None = None


@dataclass(frozen=True)
class EndpointHealth:
    health: Health = "Unknown"
    successes: int = 0
    failures: int = 0
    slow: int = 0  # consecutive passing-but-slow probes
    fast: int = 0  # consecutive passing probes within the latency bound
    reason: str | None = None
    message: str | None = None
    last_transition: datetime | None = None


_UNKNOWN = EndpointHealth()


@dataclass(frozen=True)
class Transition:
    """An endpoint's health changed."""

    endpoint: Endpoint
    before: Health
    after: Health
    reason: str
    message: str


def observe(prev: EndpointHealth, result: ProbeResult, thresholds: Thresholds, now: datetime) -> EndpointHealth:
    successes = prev.successes + 1 if result.ok else 0
    failures = 0 if result.ok else prev.failures + 1
    is_slow = (
        result.ok and thresholds.degraded_latency_s is not None and result.latency_s > thresholds.degraded_latency_s
    )
    slow = prev.slow + 1 if is_slow else 0
    fast = prev.fast + 1 if result.ok and not is_slow else 0
    passing: Health = "Degraded" if is_slow else "Healthy"
    health = prev.health
    if health == "Unknown":
        health = passing if result.ok else "Unhealthy"
    elif health in SERVING and failures >= thresholds.unhealthy:
        health = "Unhealthy"
    elif health == "Unhealthy" and successes >= thresholds.healthy:
        health = passing
    elif health == "Healthy" and slow >= thresholds.unhealthy:
        health = "Degraded"
    elif health == "Degraded" and fast >= thresholds.healthy:
        health = "Healthy"
    return EndpointHealth(
        health=health,
        successes=successes,
        failures=failures,
        slow=slow,
        fast=fast,
        reason=("SlowAnswer" if is_slow else result.reason),
        message=(
            f"{result.message} (slower than {thresholds.degraded_latency_s * 1000:g} ms)"
            if is_slow and thresholds.degraded_latency_s is not None
            else result.message
        ),
        last_transition=now if health != prev.health else prev.last_transition,
    )


@dataclass(frozen=True)
class PoolHealth:
    """The members of a pool and the health of each, keyed by endpoint name."""

    members: tuple[Endpoint, ...] = ()
    health: tuple[tuple[str, EndpointHealth], ...] = ()

    @cached_property
    def _by_name(self) -> dict[str, EndpointHealth]:
        return dict(self.health)

    def of(self, name: str) -> EndpointHealth:
        """O(1): the index is built once per (immutable) PoolHealth, not per call."""
        return self._by_name.get(name, _UNKNOWN)

    def with_members(self, members: tuple[Endpoint, ...]) -> PoolHealth:
        """New membership. An endpoint keeps its health while its name, address and port
        stay the same (a weight change keeps it); anything else starts Unknown."""
        old = {ep.name: ep for ep in self.members}
        kept = []
        for ep in members:
            before = old.get(ep.name)
            if before is not None and (before.address, before.port) == (ep.address, ep.port):
                kept.append((ep.name, self.of(ep.name)))
        return PoolHealth(members=members, health=tuple(kept))

    def observe(
        self, results: dict[str, ProbeResult], thresholds: Thresholds, now: datetime
    ) -> tuple[PoolHealth, list[Transition]]:
        new: list[tuple[str, EndpointHealth]] = []
        transitions: list[Transition] = []
        for ep in self.members:
            prev = self.of(ep.name)
            result = results.get(ep.name)
            cur = observe(prev, result, thresholds, now) if result is not None else prev
            if cur.health != prev.health:
                transitions.append(Transition(ep, prev.health, cur.health, cur.reason or "", cur.message or ""))
            new.append((ep.name, cur))
        return replace(self, health=tuple(new)), transitions

    def counts(self) -> tuple[int, int, int]:
        """(total, serving: Healthy or Degraded, unknown)."""
        states = [self.of(ep.name).health for ep in self.members]
        return len(states), sum(1 for s in states if s in SERVING), states.count("Unknown")

    def degraded(self) -> list[str]:
        return [ep.name for ep in self.members if self.of(ep.name).health == "Degraded"]
