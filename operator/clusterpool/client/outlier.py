"""Passive outlier detection on real traffic, with Envoy's semantics, and overload back-off.

    detector = OutlierDetector(OutlierSettings())
    detector.retain(["ep-0", "ep-1", "ep-2"])          # the endpoints of the current table
    ejected = detector.record("ep-1", GATEWAY_FAILURE)   # names ejected by this outcome
    detector.back_off("ep-2", 5.0)                       # a 429 / 503 with Retry-After
    detector.admits("ep-1")                              # False while ejected or backed off

It sits beside the operator's active verdict (the table's `eligible`), never instead of it:
the table says who may serve, the detector takes the ones that fail real requests out for a
while. Outcomes: SUCCESS (anything below 500 but a 429), ERROR_5XX (a 500, 501, 505...),
GATEWAY_FAILURE (502, 503, 504, a connect error, a reset, a timeout; it also counts as a
5xx, as in Envoy). Ejection: `consecutive_5xx` or `consecutive_gateway_failure` in a row
eject at once; the failure percentage is evaluated every `interval_seconds` over the
endpoints that saw `failure_percentage_request_volume` requests, when at least
`failure_percentage_minimum_hosts` did. An ejection lasts `base_ejection_seconds` times the
number of times the endpoint was ejected, up to `max_ejection_seconds`; each interval spent
serving lowers that count by one (intervals are evaluated at the first outcome after one
ends). At most `max_ejection_percent` of the endpoints are out at once (at least one may
always be). When fewer than `panic_threshold_percent` of the
endpoints are admitted (ejected or backed off), the detector is in panic and admits all,
as Envoy's load balancer does. Un-ejection is checked when asked, not at interval ticks.

Pure: no sockets, no threads, a clock passed in. One detector per pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SUCCESS = 0
ERROR_5XX = 1
GATEWAY_FAILURE = 2


@dataclass(frozen=True)
class OutlierSettings:
    """Envoy's outlier_detection names. Deviations from Envoy's defaults, and why:
    `consecutive_gateway_failure` is enforced (Envoy: not by default), since a dead LLM
    backend shows as connect errors and 503s; `max_ejection_percent` is 50 (Envoy: 10),
    since pools of two to four replicas are common and 10% of them is nobody."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    interval_seconds: float = 10.0
    base_ejection_seconds: float = 30.0
    max_ejection_seconds: float = 300.0
    max_ejection_percent: int = 50
    panic_threshold_percent: int = 50
    max_back_off_seconds: float = 60.0


class _Endpoint:
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_until", "ejections", "failures", "requests")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.requests = 0  # in the current interval
        self.failures = 0
        self.ejected_until = 0.0  # 0: not ejected
        self.ejections = 0  # the ejection time multiplier


class OutlierDetector:
    def __init__(self, settings: OutlierSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or OutlierSettings()
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._back_off: dict[str, float] = {}  # name -> until
        self._next_interval = clock() + self.settings.interval_seconds
        self._avoid: frozenset[str] = frozenset()
        self._avoid_until = 0.0  # when the cached avoid set must be recomputed (an expiry)
        self._dirty = True

    # -- the endpoint set ---------------------------------------------------------------------

    def retain(self, names: Iterable[str]) -> None:
        """Follow the table: endpoints that left are forgotten, new ones start clean."""
        keep = set(names)
        self._endpoints = {n: self._endpoints.get(n) or _Endpoint() for n in keep}
        self._back_off = {n: u for n, u in self._back_off.items() if n in keep}
        self._dirty = True

    # -- outcomes -----------------------------------------------------------------------------

    def record(self, name: str, outcome: int) -> tuple[str, ...]:
        """One request's outcome; returns the endpoints this ejected (usually none)."""
        ep = self._endpoints.get(name)
        if ep is None:
            return ()
        now = self._clock()
        ejected: tuple[str, ...] = ()
        if now >= self._next_interval:
            ejected = self._end_interval(now)
        ep.requests += 1
        s = self.settings
        if outcome == SUCCESS:
            ep.consecutive_5xx = ep.consecutive_gateway = 0
            return ejected
        ep.failures += 1
        ep.consecutive_5xx += 1
        ep.consecutive_gateway = ep.consecutive_gateway + 1 if outcome == GATEWAY_FAILURE else 0
        if (
            (s.consecutive_5xx and ep.consecutive_5xx >= s.consecutive_5xx)
            or (s.consecutive_gateway_failure and ep.consecutive_gateway >= s.consecutive_gateway_failure)
        ) and self._eject(name, ep, now):
            ejected = (*ejected, name)
        return ejected

    def back_off(self, name: str, seconds: float) -> None:
        """The endpoint said it is overloaded (429, or 503 with Retry-After): keep traffic
        off it for `seconds` (capped), without counting it as an ejection."""
        if name in self._endpoints and seconds > 0:
            until = self._clock() + min(seconds, self.settings.max_back_off_seconds)
            self._back_off[name] = max(until, self._back_off.get(name, 0.0))
            self._dirty = True

    # -- verdicts -----------------------------------------------------------------------------

    def ejected(self, name: str) -> bool:
        ep = self._endpoints.get(name)
        return ep is not None and ep.ejected_until > self._clock()

    def avoid(self) -> frozenset[str]:
        """The endpoints to keep traffic off now (ejected or backed off); empty in panic."""
        now = self._clock()
        if self._dirty or now >= self._avoid_until:
            self._recompute(now)
        return self._avoid

    def admits(self, name: str) -> bool:
        return name not in self.avoid()

    def in_panic(self) -> bool:
        now = self._clock()
        return bool(self._endpoints) and bool(self._out(now)) and not self.avoid()

    # -- internals ----------------------------------------------------------------------------

    def _out(self, now: float) -> frozenset[str]:
        out = {n for n, ep in self._endpoints.items() if ep.ejected_until > now}
        out.update(n for n, until in self._back_off.items() if until > now)
        return frozenset(out)

    def _recompute(self, now: float) -> None:
        out = self._out(now)
        total = len(self._endpoints)
        panic = total > 0 and 100 * (total - len(out)) < self.settings.panic_threshold_percent * total
        self._avoid = frozenset() if panic else out
        expiries = [ep.ejected_until for ep in self._endpoints.values() if ep.ejected_until > now]
        expiries.extend(u for u in self._back_off.values() if u > now)
        self._avoid_until = min(expiries, default=float("inf"))
        self._dirty = False

    def _eject(self, name: str, ep: _Endpoint, now: float) -> bool:
        if ep.ejected_until > now:
            return False
        s = self.settings
        total = len(self._endpoints)
        out = sum(1 for e in self._endpoints.values() if e.ejected_until > now)
        if out >= 1 and 100 * (out + 1) > s.max_ejection_percent * total:
            return False  # one endpoint may always be ejected; more only within the percentage
        ep.ejections += 1
        ep.ejected_until = now + min(s.base_ejection_seconds * ep.ejections, s.max_ejection_seconds)
        ep.consecutive_5xx = ep.consecutive_gateway = 0
        self._dirty = True
        return True

    def _end_interval(self, now: float) -> tuple[str, ...]:
        s = self.settings
        self._next_interval = now + s.interval_seconds
        ejected: list[str] = []
        busy = [(n, ep) for n, ep in self._endpoints.items() if ep.requests >= s.failure_percentage_request_volume]
        if s.failure_percentage_threshold and len(busy) >= s.failure_percentage_minimum_hosts:
            for name, ep in busy:
                if 100 * ep.failures >= s.failure_percentage_threshold * ep.requests and self._eject(name, ep, now):
                    ejected.append(name)
        for ep in self._endpoints.values():
            ep.requests = ep.failures = 0
            if ep.ejections > 0 and ep.ejected_until <= now - s.interval_seconds:
                ep.ejections -= 1  # a whole interval served since: the next ejection is shorter
        return tuple(ejected)
