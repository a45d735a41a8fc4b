"""The strategies by the names `spec.strategy` accepts, and how to make one."""

from __future__ import annotations

from collections.abc import Callable

from clusterpool.balancer.loaded import LeastLoaded, PrefixAffinity
from clusterpool.balancer.strategies import Adaptive, Balancer, ConsistentHash, LeastConnections, RoundRobin, Weighted
from clusterpool.core.load import LoadBound, LoadView, LoadWeights

STRATEGIES: dict[str, Callable[[], Balancer]] = {
    "RoundRobin": RoundRobin,
    "LeastConnections": LeastConnections,
    "Weighted": Weighted,
    "ConsistentHash": ConsistentHash,
    "Adaptive": Adaptive,
    "LeastLoaded": LeastLoaded,
    "PrefixAffinity": PrefixAffinity,
}
LOAD_AWARE: dict[str, Callable[[LoadView | None, LoadWeights | None, LoadBound | None], Balancer]] = {
    "LeastLoaded": lambda load, weights, bound: LeastLoaded(load, weights),
    "PrefixAffinity": lambda load, weights, bound: PrefixAffinity(load, bound, weights),
}


def make_balancer(
    strategy: str, load: LoadView | None = None, weights: LoadWeights | None = None, bound: LoadBound | None = None
) -> Balancer:
    """A new balancer; the load-aware ones read `load` (the engines' gauges) and take the
    pool's LoadWeights and LoadBound (None: the defaults), the rest ignore them."""
    if strategy in LOAD_AWARE:
        return LOAD_AWARE[strategy](load, weights, bound)
    try:
        return STRATEGIES[strategy]()
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}") from None
