"""The strategies on client-side signals alone (the five of the first release). See the
package docstring for the contract; balancer/loaded.py has those that read engine load."""

from __future__ import annotations

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

from clusterpool.core.labels import Labels
from clusterpool.core.latency import LatencyEwma


@dataclass(frozen=True)
class Target:
    """An endpoint a client may send a request to, with its current weight, its labels
    and its capacity (most requests in flight; None: no limit)."""

    name: str
    address: str
    port: int
    weight: int = 1
    labels: Labels = ()
    capacity: int | None = None


class NoEndpointError(LookupError):
    """The pool has no eligible endpoint."""


class Balancer:
    """The common part: the target snapshot, in-flight counts and the lease protocol.

    In-flight counts live in a list aligned with the targets (`_loads[i]` for
    `_targets[i]`), so strategies can scan them at C speed. When targets declare a
    capacity, `_shares[i]` is kept beside them: (in flight + 1) / capacity, the share of
    its capacity a target would carry with one more request, which LeastConnections and
    Adaptive compare instead of the count. A target without a capacity counts as the mean
    of the declared ones; with none declared `_shares` is None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: tuple[Target, ...] = ()
        self._index: dict[str, int] = {}
        self._loads: list[int] = []
        self._caps: list[float] = []
        self._shares: list[float] | None = None
        self._total = 0  # sum of _loads, kept as requests start and finish

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._targets

    def update(self, targets: Sequence[Target], inflight: Callable[[str], int] | None = None) -> None:
        """Replace the targets (e.g. a new routing table). In-flight counts of targets that
        stay are kept, or taken from `inflight` (a balancer that counted them) when given."""
        with self._lock:
            if inflight is None:
                old = {t.name: self._loads[i] for t, i in zip(self._targets, range(len(self._targets)), strict=True)}
                inflight = lambda name: old.get(name, 0)  # noqa: E731
            self._targets = tuple(targets)
            self._index = {t.name: i for i, t in enumerate(self._targets)}
            self._loads = [inflight(t.name) for t in self._targets]
            self._total = sum(self._loads)
            declared = [t.capacity for t in self._targets if t.capacity is not None]
            mean = sum(declared) / len(declared) if declared else 0.0
            self._caps = [float(t.capacity or mean) for t in self._targets] if declared else []
            self._shares = [(n + 1) / c for n, c in zip(self._loads, self._caps, strict=True)] if declared else None
            self._rebuild()

    def _rebuild(self) -> None:
        """Recompute derived state after update; called with the lock held."""

    def pick(self, key: str | None = None) -> Target:
        raise NotImplementedError

    def inflight(self, name: str) -> int:
        i = self._index.get(name)
        return self._loads[i] if i is not None else 0

    def started(self, target: Target) -> None:
        with self._lock:
            i = self._index.get(target.name)
            if i is not None:
                self._count(i, 1)

    def _count(self, i: int, delta: int) -> None:
        """Change target i's in-flight count; called with the lock held."""
        self._loads[i] += delta
        self._total += delta
        if self._shares is not None:
            self._shares[i] = (self._loads[i] + 1) / self._caps[i]

    def finished(self, target: Target, latency_s: float, ok: bool = True) -> None:
        with self._lock:
            i = self._index.get(target.name)
            if i is not None and self._loads[i] > 0:
                self._count(i, -1)
            self._answered(target.name, latency_s, ok)

    def _answered(self, name: str, latency_s: float, ok: bool) -> None:
        """A request's latency and outcome, for the strategies that read them; called with the
        lock held."""

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


class LeastConnections(Balancer):
    """The target with the fewest requests in flight; among equals, the first at or after
    a rotating start, so equal targets share evenly. The scan is two C calls (min and
    list.index) over the in-flight list, so it stays well under a microsecond up to
    hundreds of targets; above 256 targets two random ones are compared instead (power of
    two choices, Envoy's least-request), which keeps a pick O(1).

    When targets declare a capacity, the same is done over the shares of their capacity
    (in flight + 1) / capacity, kept as requests start and finish, so it costs the same."""

    EXACT_UP_TO = 256

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng or random.Random()
        self._rotor = itertools.count()

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        loads: Sequence[float] = self._shares if self._shares is not None else self._loads
        n = len(targets)
        if n == 0:
            raise self._empty()
        if n <= self.EXACT_UP_TO:
            least = min(loads)
            start = next(self._rotor) % n
            try:
                return targets[loads.index(least, start)]
            except ValueError:
                return targets[loads.index(least)]
        i = int(self._rng.random() * n)
        j = int(self._rng.random() * n)
        return targets[i] if loads[i] <= loads[j] else targets[j]


def stable_hash(key: str) -> int:
    """The same on every machine and in every process (unlike hash())."""
    return int(xxhash.xxh3_64_intdigest(key.encode()))


def _next_prime(n: int) -> int:
    def prime(k: int) -> bool:
        return k > 1 and all(k % d for d in range(2, int(k**0.5) + 1))

    while not prime(n):
        n += 1
    return n


def maglev_table(names: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """Maglev's lookup table (Eisenbud et al., 2016): each target walks its own
    permutation of the slots (offset + j x skip, from two hashes of its name) and takes
    the next free slot on each of its turns; a target gets `weight` turns per round. Every
    slot ends up owned, shares follow the weights, and a change of membership moves
    little more than the leaving or joining target's own share of keys."""
    table = [-1] * size
    offsets = [stable_hash(f"{n}#offset") % size for n in names]
    skips = [stable_hash(f"{n}#skip") % (size - 1) + 1 for n in names]
    nexts = [0] * len(names)
    filled = 0
    while True:
        for i in range(len(names)):
            for _ in range(weights[i]):
                while True:
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                    nexts[i] += 1
                    if table[slot] < 0:
                        break
                table[slot] = i
                filled += 1
                if filled == size:
                    return table


class ConsistentHash(Balancer):
    """Maglev hashing: the same key goes to the same target while it exists, and when one
    of N targets leaves about 1/N of the keys move. A pick is one hash and one list index
    (the table has a prime size of at least 100 slots per target, and 65,537 or more).
    Weights are honoured. With `load_factor` (e.g. 1.25), bounded loads: a target already
    carrying more than load_factor x the mean in-flight requests is skipped for the owner
    of the next slot."""

    MIN_SIZE = 65537

    def __init__(self, load_factor: float | None = None) -> None:
        super().__init__()
        self.load_factor = load_factor
        self._table: list[int] = []
        self._live: tuple[Target, ...] = ()

    def _rebuild(self) -> None:
        live = tuple(t for t in self._targets if t.weight > 0)
        self._live = live
        if not live:
            self._table = []
            return
        size = _next_prime(max(self.MIN_SIZE, 100 * len(live)))
        g = reduce(math.gcd, [t.weight for t in live])
        local = maglev_table([t.name for t in live], [t.weight // g for t in live], size)
        # store indexes into _targets, so in-flight counts can be read directly
        self._table = [self._index[live[i].name] for i in local]

    def pick(self, key: str | None = None) -> Target:
        table = self._table
        if not table:
            raise self._empty()
        h = stable_hash(key) if key is not None else random.getrandbits(64)
        size = len(table)
        slot = h % size
        i = table[slot]
        if self.load_factor is None:
            return self._targets[i]
        loads = self._loads
        cap = max(1, math.ceil(self.load_factor * (self._total + 1) / len(self._live)))
        for step in range(min(size, 64 * len(self._live))):
            j = table[(slot + step) % size]
            if loads[j] < cap:
                return self._targets[j]
        return self._targets[i]


class Adaptive(Balancer):
    """Power of two choices over a peak-EWMA of latency times (in-flight + 1), as Finagle
    and Linkerd do (core/latency.py: a slower answer raises the EWMA at once, faster ones
    pull it down with a time constant `decay_s`, and without traffic it decays towards
    zero, so a target that was slow is tried again within seconds). When targets declare a capacity,
    (in-flight + 1) is divided by it: a target that takes twice the requests at once costs
    half as much at the same load and latency."""

    def __init__(
        self, decay_s: float = 10.0, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._rng = rng or random.Random()
        self._clock = clock
        self._latency = LatencyEwma(decay_s)

    def _rebuild(self) -> None:
        self._latency.keep(t.name for t in self._targets)

    def _cost(self, name: str, now: float) -> float:
        decayed = self._latency.estimate(name, now)
        i = self._index.get(name)
        if i is None:
            return decayed
        shares = self._shares
        return decayed * (shares[i] if shares is not None else self._loads[i] + 1)

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

    def _answered(self, name: str, latency_s: float, ok: bool) -> None:
        self._latency.observe(name, latency_s, ok, self._clock())

    def ewma(self, name: str) -> float:
        return self._latency.estimate(name, self._clock())
