"""The strategies by the names `spec.strategy` accepts, and how to make one."""

from __future__ import annotations

from collections.abc import Callable

from clusterpool.balancer.loaded import LeastLoaded, PrefixAffinity
from clusterpool.balancer.strategies import Adaptive, Balancer, ConsistentHash, LeastConnections, RoundRobin, Weighted
from clusterpool.core.load import LoadView

STRATEGIES: dict[str, Callable[[], Balancer]] = {
    "RoundRobin": RoundRobin,
    "LeastConnections": LeastConnections,
    "Weighted": Weighted,
    "ConsistentHash": ConsistentHash,
    "Adaptive": Adaptive,
    "LeastLoaded": LeastLoaded,
    "PrefixAffinity": PrefixAffinity,
}
LOAD_AWARE: dict[str, Callable[[LoadView | None], Balancer]] = {
    "LeastLoaded": LeastLoaded,
    "PrefixAffinity": PrefixAffinity,
}


def make_balancer(strategy: str, load: LoadView | None = None) -> Balancer:
    """A new balancer; the load-aware ones read `load` (the engines' gauges), the rest
    ignore it."""
    if strategy in LOAD_AWARE:
        return LOAD_AWARE[strategy](load)
    try:
        return STRATEGIES[strategy]()
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}") from None
