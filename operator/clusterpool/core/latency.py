"""How slow each endpoint has been lately: an EWMA of request latencies per endpoint, with
the peak rule of Finagle's and Linkerd's peak-EWMA (Adaptive) or without it (LeastLoaded):
the one estimate both read."""

from __future__ import annotations

import math
from collections.abc import Iterable

FAILURE_LATENCY_S = 1.0  # a failed request counts as an answer at least this slow


class LatencyEwma:
    """Per endpoint name, an average of its answers' latencies with time constant `decay_s`
    (an answer's weight in it is 1 - exp(-seconds since the previous one / decay_s), so an
    endpoint's estimate means the same whether it answers often or seldom). With `peak`, a
    slower answer than the estimate raises it at once: quick to see a slowdown, and an
    outlier counts in full. While an endpoint gets no answers its estimate decays towards
    zero, so one that was slow is tried again within seconds and wins traffic back once it
    is fast. Times are the caller's clock (seconds); the caller holds its own lock around
    `observe`."""

    def __init__(self, decay_s: float = 10.0, peak: bool = True) -> None:
        self.decay_s, self.peak = decay_s, peak
        self._ewma: dict[str, tuple[float, float]] = {}  # name -> (ewma seconds, last update)

    def keep(self, names: Iterable[str]) -> None:
        """Forget the endpoints not in `names` (they left the pool)."""
        self._ewma = {n: self._ewma[n] for n in names if n in self._ewma}

    def observe(self, name: str, latency_s: float, ok: bool, now: float) -> None:
        if not ok:
            latency_s = max(latency_s, FAILURE_LATENCY_S)
        ewma, at = self._ewma.get(name, (latency_s, now))
        w = math.exp(-max(now - at, 1e-3) / self.decay_s)
        peaked = self.peak and latency_s > ewma * w  # slower than the estimate has decayed to
        self._ewma[name] = (latency_s if peaked else ewma * w + latency_s * (1 - w), now)

    def heard_from(self, name: str) -> bool:
        return name in self._ewma

    def as_last_answered(self, name: str) -> float:
        """The estimate as the endpoint's last answer left it, without the decay since; 0.0
        for an endpoint not heard from."""
        return self._ewma.get(name, (0.0, 0.0))[0]

    def estimate(self, name: str, now: float) -> float:
        """Seconds; 0.0 for an endpoint not heard from."""
        ewma, at = self._ewma.get(name, (0.0, now))
        return ewma * math.exp(-(now - at) / self.decay_s)


SLOW_ABOVE = 1.5  # within this multiple of the median, latencies are the fleet's own spread


def relative_slowness(estimates: list[float]) -> list[float]:
    """How much slower than the fleet's median each estimate is, as a multiple of it less
    one (4.0 for five times it), and 0.0 within SLOW_ABOVE x the median, so a healthy
    fleet's spread changes no choice. Endpoints not heard from (0.0) are left out of the
    median and count as not slow. All 0.0 when fewer than two were heard from: one endpoint
    alone is no fleet to compare with."""
    heard = sorted(e for e in estimates if e > 0.0)
    if len(heard) < 2:
        return [0.0] * len(estimates)
    mid = len(heard) // 2
    median = heard[mid] if len(heard) % 2 else (heard[mid - 1] + heard[mid]) / 2
    above = SLOW_ABOVE * median
    return [e / median - 1.0 if e > above else 0.0 for e in estimates]
