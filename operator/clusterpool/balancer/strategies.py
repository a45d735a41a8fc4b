"""The five strategies. See the package docstring for the contract."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce

import xxhash


@dataclass(frozen=True)
class Target:
    """An endpoint a client may send a request to, with its current weight."""

    name: str
    address: str
    port: int
    weight: int = 1


class NoEndpointError(LookupError):
    """The pool has no eligible endpoint."""


class Balancer:
    """The common part: the target snapshot, in-flight counts and the lease protocol."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: tuple[Target, ...] = ()
        self._inflight: dict[str, int] = {}

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._targets

    def update(self, targets: Sequence[Target]) -> None:
        """Replace the targets (e.g. a new routing table). In-flight counts of targets that
        stay are kept."""
        with self._lock:
            self._targets = tuple(targets)
            self._inflight = {t.name: self._inflight.get(t.name, 0) for t in self._targets}
            self._rebuild()

    def _rebuild(self) -> None:
        """Recompute derived state after update; called with the lock held."""

    def pick(self, key: str | None = None) -> Target:
        raise NotImplementedError

    def inflight(self, name: str) -> int:
        return self._inflight.get(name, 0)

    def started(self, target: Target) -> None:
        with self._lock:
            if target.name in self._inflight:
                self._inflight[target.name] += 1

    def finished(self, target: Target, latency_s: float, ok: bool = True) -> None:
        with self._lock:
            if self._inflight.get(target.name, 0) > 0:
                self._inflight[target.name] -= 1

    @contextmanager
    def lease(self, key: str | None = None) -> Iterator[Target]:
        """Pick, count the request as in flight, and report its latency when done."""
        target = self.pick(key)
        self.started(target)
        start = time.perf_counter()
        ok = False
        try:
            yield target
            ok = True
        finally:
            self.finished(target, time.perf_counter() - start, ok)

    def _empty(self) -> NoEndpointError:
        return NoEndpointError("no eligible endpoint in the pool")


class RoundRobin(Balancer):
    """Each target in turn."""

    def __init__(self) -> None:
        super().__init__()
        self._counter = itertools.count()

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        if not targets:
            raise self._empty()
        return targets[next(self._counter) % len(targets)]


MAX_SCHEDULE = 1 << 16


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One cycle of nginx's smooth weighted round robin, as indexes: each step adds every
    weight to its current value, picks the largest, and subtracts the total from it. The
    cycle is precomputed (weights divided by their gcd; scaled down to at most 65,536
    steps), so a pick is O(1) however many targets there are."""
    if not weights:
        return []
    g = reduce(math.gcd, weights)
    w = [x // g for x in weights]
    total = sum(w)
    if total > MAX_SCHEDULE:
        scale = MAX_SCHEDULE / total
        w = [max(1, int(x * scale)) for x in w]
        total = sum(w)
    current = [0] * len(w)
    out = []
    for _ in range(total):
        best = 0
        for i, x in enumerate(w):
            current[i] += x
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


class Weighted(Balancer):
    """Smooth weighted round robin (nginx): shares follow the weights and a heavy target's
    turns are spread out, not bunched. Weights are the routing table's effective weights,
    so slow start is honoured; a target of weight 0 gets nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._counter = itertools.count()
        self._schedule: tuple[Target, ...] = ()

    def _rebuild(self) -> None:
        live = [t for t in self._targets if t.weight > 0]
        self._schedule = tuple(live[i] for i in smooth_schedule([t.weight for t in live]))

    def pick(self, key: str | None = None) -> Target:
        schedule = self._schedule
        if not schedule:
            raise self._empty()
        return schedule[next(self._counter) % len(schedule)]


EXACT_LEAST_UP_TO = 32


class LeastConnections(Balancer):
    """The target with the fewest requests in flight. Ties are broken by a rotating start,
    so equal targets share evenly. Up to 32 targets every one is compared; above that,
    two random targets are (power of two choices, Envoy's least-request), which keeps a
    pick O(1) and is within a small factor of the exact minimum."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng or random.Random()
        self._rotor = itertools.count()

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        n = len(targets)
        if n == 0:
            raise self._empty()
        inflight = self._inflight
        if n <= EXACT_LEAST_UP_TO:
            start = next(self._rotor) % n
            best = targets[start]
            best_load = inflight.get(best.name, 0)
            for i in range(1, n):
                t = targets[(start + i) % n]
                load = inflight.get(t.name, 0)
                if load < best_load:
                    best, best_load = t, load
            return best
        a = targets[int(self._rng.random() * n)]
        b = targets[int(self._rng.random() * n)]
        return a if inflight.get(a.name, 0) <= inflight.get(b.name, 0) else b


def stable_hash(key: str) -> int:
    """The same on every machine and in every process (unlike hash())."""
    return int(xxhash.xxh3_64_intdigest(key.encode()))


class ConsistentHash(Balancer):
    """A hash ring with virtual nodes (160 per unit of weight, up to 1,600 per target): the
    same key goes to the same target while it exists, and when one of N targets leaves
    only its ~1/N of the keys move. With `load_factor` (e.g. 1.25), bounded loads: a
    target already carrying more than load_factor x the mean in-flight requests is
    skipped for the next one on the ring."""

    VNODES = 160

    def __init__(self, load_factor: float | None = None) -> None:
        super().__init__()
        self.load_factor = load_factor
        self._ring: list[int] = []
        self._owners: list[Target] = []

    def _rebuild(self) -> None:
        points: list[tuple[int, str, Target]] = []
        for t in self._targets:
            if t.weight <= 0:
                continue
            for v in range(min(self.VNODES * t.weight, self.VNODES * 10)):
                points.append((stable_hash(f"{t.name}#{v}"), t.name, t))
        points.sort(key=lambda p: (p[0], p[1]))
        self._ring = [p[0] for p in points]
        self._owners = [p[2] for p in points]

    def pick(self, key: str | None = None) -> Target:
        ring, owners = self._ring, self._owners
        if not ring:
            raise self._empty()
        h = stable_hash(key) if key is not None else random.getrandbits(64)
        i = bisect.bisect_left(ring, h)
        if i == len(ring):
            i = 0
        target = owners[i]
        if self.load_factor is None:
            return target
        inflight = self._inflight
        total = sum(inflight.values()) + 1
        cap = max(1, math.ceil(self.load_factor * total / len(self._targets)))
        seen: set[str] = set()
        n = len(ring)
        for step in range(n):
            t = owners[(i + step) % n]
            if t.name in seen:
                continue
            if inflight.get(t.name, 0) < cap:
                return t
            seen.add(t.name)
            if len(seen) == len(self._targets):
                break
        return target


class Adaptive(Balancer):
    """Power of two choices over a peak-EWMA of latency times (in-flight + 1), as Finagle
    and Linkerd do. A slower answer than the average raises the EWMA at once (peak);
    faster ones pull it down with a time constant `decay_s`; and while a target gets no
    traffic its EWMA decays towards zero, so a target that was slow is tried again
    within seconds and wins traffic back once it is fast."""

    def __init__(
        self, decay_s: float = 10.0, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.decay_s = decay_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._ewma: dict[str, tuple[float, float]] = {}  # name -> (ewma seconds, last update)

    def _rebuild(self) -> None:
        self._ewma = {t.name: self._ewma[t.name] for t in self._targets if t.name in self._ewma}

    def _cost(self, name: str, now: float) -> float:
        ewma, at = self._ewma.get(name, (0.0, now))
        decayed = ewma * math.exp(-(now - at) / self.decay_s)
        return decayed * (self._inflight.get(name, 0) + 1)

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        n = len(targets)
        if n == 0:
            raise self._empty()
        if n == 1:
            return targets[0]
        i = int(self._rng.random() * n)
        j = int(self._rng.random() * (n - 1))
        if j >= i:
            j += 1
        a, b = targets[i], targets[j]
        now = self._clock()
        return a if self._cost(a.name, now) <= self._cost(b.name, now) else b

    def finished(self, target: Target, latency_s: float, ok: bool = True) -> None:
        now = self._clock()
        if not ok:
            latency_s = max(latency_s, 1.0)  # a failure counts as a slow answer
        with self._lock:
            if self._inflight.get(target.name, 0) > 0:
                self._inflight[target.name] -= 1
            ewma, at = self._ewma.get(target.name, (latency_s, now))
            decayed = ewma * math.exp(-(now - at) / self.decay_s)
            if latency_s > decayed:
                new = latency_s
            else:
                w = math.exp(-max(now - at, 1e-3) / self.decay_s)
                new = decayed * w + latency_s * (1 - w)
            self._ewma[target.name] = (new, now)

    def ewma(self, name: str) -> float:
        now = self._clock()
        ewma, at = self._ewma.get(name, (0.0, now))
        return ewma * math.exp(-(now - at) / self.decay_s)


STRATEGIES: dict[str, Callable[[], Balancer]] = {
    "RoundRobin": RoundRobin,
    "LeastConnections": LeastConnections,
    "Weighted": Weighted,
    "ConsistentHash": ConsistentHash,
    "Adaptive": Adaptive,
}


def make_balancer(strategy: str) -> Balancer:
    try:
        return STRATEGIES[strategy]()
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}") from None
