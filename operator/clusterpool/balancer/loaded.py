"""The strategies that read engine-reported load: LeastLoaded and PrefixAffinity.

Both are small scorers over one view of load (core/load.py: the scraper's readings, stale
ones saturated) and this process's own in-flight counts. Without a view (an SDK process
that did not opt in to scraping) they work on the in-flight counts alone.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import xxhash

from clusterpool.balancer.strategies import Balancer, Target
from clusterpool.core.latency import LatencyEwma, relative_slowness
from clusterpool.core.load import NO_SIGNAL, Load, LoadBound, LoadView, LoadWeights, load_score

TWO_64 = float(1 << 64)


class LoadAware(Balancer):
    """A balancer with a view of engine load (None: client-side signals only)."""

    def __init__(self, load: LoadView | None = None) -> None:
        super().__init__()
        self.view = load

    def load_of(self, target: Target) -> Load:
        return self.view.load(target.address, target.port) if self.view is not None else NO_SIGNAL

    def missing_gauges(self) -> dict[str, tuple[str, ...]]:
        """Targets whose engine lacks gauges its profile lists, and which: for a condition
        that says the strategy works on client-side signals there."""
        out = {}
        for t in self._targets:
            missing = self.load_of(t).missing
            if missing:
                out[t.name] = missing
        return out


class LeastLoaded(LoadAware):
    """The target with the lowest score of queue depth, running sequences, KV use, this
    process's in-flight requests and how much slower than the fleet's median its recent
    answers were (core/load.py, LoadWeights; the latencies this process saw, core/latency.py,
    so an engine that is slow without a queue to show for it still loses). Stale or absent
    readings score as saturated. Ties go to the first at or after a rotating start; above
    256 targets two random ones are compared (power of two choices), so a pick stays cheap.
    The slowness of every target is worked out at most every SLOWNESS_EVERY_S seconds (and
    after a target's first answer), not per pick."""

    EXACT_UP_TO = 256
    SLOWNESS_EVERY_S = 0.1

    def __init__(
        self,
        load: LoadView | None = None,
        weights: LoadWeights | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        latency: LatencyEwma | None = None,
    ) -> None:
        super().__init__(load)
        self.weights = weights or LoadWeights()
        self._rng = rng or random.Random()
        self._rotor = itertools.count()
        self._clock = clock
        self._latency = latency or LatencyEwma()  # the peak rule: a slow answer counts at once
        # per target, with nothing or something in flight (slowness()), and when worked out
        self._slowness: tuple[list[float], list[float], float] = ([], [], -math.inf)

    def _rebuild(self) -> None:
        self._latency.keep(t.name for t in self._targets)
        self._slowness = ([], [], -math.inf)

    def _answered(self, name: str, latency_s: float, ok: bool) -> None:
        if not self._latency.heard_from(name):
            self._slowness = ([], [], -math.inf)  # a first answer changes the fleet compared with: at once
        self._latency.observe(name, latency_s, ok, self._clock())

    def slowness(self, targets: Sequence[Target]) -> tuple[list[float], list[float]]:
        """Each target's slowness against the fleet's median (0.0: not slower), as of at
        most SLOWNESS_EVERY_S ago: for a target with nothing in flight from this process,
        and for one with requests in flight. They differ for a target that was slow and is
        being tried again (its estimate decayed, its last answer was slow): while its trial
        request is out it counts as slow as its last answer said, so it is tried with one
        request at a time, not with as many as arrive before a slow answer can come back."""
        if not self.weights.latency:
            zeros = [0.0] * len(targets)
            return zeros, zeros
        now = self._clock()
        idle, busy, at = self._slowness
        if now - at < self.SLOWNESS_EVERY_S and len(idle) == len(targets):
            return idle, busy
        estimate, last = self._latency.estimate, self._latency.as_last_answered
        idle = relative_slowness([estimate(t.name, now) for t in targets])
        busy = [max(a, b) for a, b in zip(idle, relative_slowness([last(t.name) for t in targets]), strict=True)]
        self._slowness = (idle, busy, now)
        return idle, busy

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        n = len(targets)
        if n == 0:
            raise self._empty()
        (idle, busy), loads, w, load_of = self.slowness(targets), self._loads, self.weights, self.load_of
        if n > self.EXACT_UP_TO:
            i, j = int(self._rng.random() * n), int(self._rng.random() * n)
            si = load_score(load_of(targets[i]), loads[i], w, busy[i] if loads[i] else idle[i])
            sj = load_score(load_of(targets[j]), loads[j], w, busy[j] if loads[j] else idle[j])
            return targets[i] if si <= sj else targets[j]
        start = next(self._rotor) % n
        best, best_score = start, math.inf
        for step in range(n):
            i = (start + step) % n
            s = load_score(load_of(targets[i]), loads[i], w, busy[i] if loads[i] else idle[i])
            if s < best_score:
                best, best_score = i, s
        return targets[best]


def rendezvous_order(key: str, targets: Sequence[Target]) -> list[int]:
    """Indexes of `targets`, best first, by weighted rendezvous (highest random weight)
    hashing: each target's score is -weight / ln(u), u a hash of key and target name in
    (0, 1). The order depends only on the key and the names and weights, so every process
    computes the same; a target leaving moves only the keys it was first for. With equal
    weights the order is that of the hashes themselves (the score is monotonic in u), which
    saves a logarithm per target."""
    prefix = key.encode() + b"\x00"
    hashes = [xxhash.xxh3_64_intdigest(prefix + t.name.encode()) for t in targets]
    weights = {t.weight for t in targets}
    if len(weights) <= 1:
        scores: list[float] | list[int] = hashes
    else:
        scores = [-max(t.weight, 1) / math.log((h + 0.5) / TWO_64) for t, h in zip(targets, hashes, strict=True)]
    return sorted(range(len(targets)), key=scores.__getitem__, reverse=True)


class PrefixAffinity(LoadAware):
    """Requests with the same key (a prompt prefix or a session id, balancer/prefix.py) go
    to the same target, chosen by rendezvous hashing over the eligible targets, as long as
    it is under the load bound (queue, KV use, in-flight: core/load.py LoadBound); when it
    is over, the next one in the key's rendezvous order, and when all are, the least loaded
    (or, when no endpoint has a fresh reading, the key's first). A request without a key
    goes to the least loaded target. The orders of the last ORDERS keys are remembered
    (prefixes and sessions repeat), so a repeated key costs a few lookups, not a hash per
    target."""

    ORDERS = 4096

    def __init__(
        self,
        load: LoadView | None = None,
        bound: LoadBound | None = None,
        weights: LoadWeights | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(load)
        self.bound = bound or LoadBound()
        self._fallback = LeastLoaded(load, weights, rng)
        # the targets and the orders computed over them, swapped together by update()
        self._snapshot: tuple[tuple[Target, ...], OrderedDict[str, list[int]]] = ((), OrderedDict())

    def _rebuild(self) -> None:
        self._fallback.update(self._targets, self.inflight)
        self._snapshot = (self._targets, OrderedDict())

    def started(self, target: Target) -> None:
        super().started(target)
        self._fallback.started(target)

    def finished(self, target: Target, latency_s: float, ok: bool = True) -> None:
        super().finished(target, latency_s, ok)
        self._fallback.finished(target, latency_s, ok)

    def pick(self, key: str | None = None) -> Target:
        targets, orders = self._snapshot
        if not targets:
            raise self._empty()
        if key is None:
            return self._fallback.pick()
        order = orders.get(key)
        if order is None:
            order = orders[key] = rendezvous_order(key, targets)
            if len(orders) > self.ORDERS:
                orders.popitem(last=False)
        mean = self._total / len(targets)
        informed = False
        for i in order:
            load = self.load_of(targets[i])
            if not self.bound.over(load, self.inflight(targets[i].name), mean):
                return targets[i]
            informed = informed or not load.saturated
        # all over the bound: the least loaded, unless nothing is known of any of them (no
        # fresh reading yet, as when the process starts): then the key's own endpoint
        return self._fallback.pick() if informed else targets[order[0]]
