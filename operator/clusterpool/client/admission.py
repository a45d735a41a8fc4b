"""Which endpoints a PoolClient may send a request to: its passive outlier detector when it
has one, else its own client-side circuit breakers, configured from the routing table."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from datetime import datetime

from clusterpool.client.outlier import OutlierDetector
from clusterpool.core.failover import Breaker, BreakerConfig, on_probe, tick


class Admission:
    """One breaker per endpoint (HalfOpen lets `half_open_max_probes` trials through at once),
    or, with an outlier detector (client/outlier.py), the detector's verdict instead: its owner
    feeds it outcomes. `lock` is the client's, so that a pick and its breaker move together."""

    def __init__(self, outliers: OutlierDetector | None, clock: Callable[[], datetime], lock: threading.RLock) -> None:
        self.outliers = outliers
        self._clock = clock
        self._lock = lock
        self._breakers: dict[str, Breaker] = {}
        self._trials: dict[str, int] = {}  # HalfOpen trials in flight, per endpoint
        self._cfg = BreakerConfig()

    def follow(self, cfg: BreakerConfig, names: Collection[str]) -> None:
        """A new routing table: its breaker settings, and forget the endpoints it no longer has."""
        self._cfg = cfg
        if self.outliers is not None:
            self.outliers.retain(names)
        self._breakers = {n: s for n, s in self._breakers.items() if n in names}

    def admits(self, name: str) -> bool:
        """Whether a request may go to `name` (in HalfOpen, counted as one of the allowed trials)."""
        if self.outliers is not None:
            return self.outliers.admits(name)
        b = self._breakers.get(name)
        if b is None or b.state == "Closed":  # the common case; time moves only Open breakers
            return True
        with self._lock:
            b = tick(self._breakers.get(name, Breaker()), self._clock())
            self._breakers[name] = b
            if b.state == "Closed":
                return True
            if b.state == "HalfOpen" and self._trials.get(name, 0) < self._cfg.half_open_max_probes:
                self._trials[name] = self._trials.get(name, 0) + 1
                return True
            return False

    def record(self, name: str, ok: bool) -> None:
        """An outcome of a request to `name`, for its breaker."""
        b = self._breakers.get(name)
        if ok and (b is None or (b.state == "Closed" and b.failures == 0)):
            return  # a success that changes nothing (on_probe would return the same breaker)
        with self._lock:
            b = self._breakers.get(name, Breaker())
            if b.state == "HalfOpen":
                self._trials[name] = max(0, self._trials.get(name, 0) - 1)
            self._breakers[name] = on_probe(b, ok, self._cfg, self._clock())

    def breaker_state(self, name: str) -> str:
        return self._breakers.get(name, Breaker()).state
