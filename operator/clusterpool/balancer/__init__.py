"""Load-balancing strategies: pure Python, importable without kopf or a cluster.

    b = make_balancer("Weighted")
    b.update([Target("a", "198.18.0.1", 8000, weight=3), Target("b", "198.18.0.2", 8000)])
    t = b.pick()                      # or b.pick(key) for ConsistentHash
    with b.lease(key) as t: ...       # counts in-flight requests, feeds latency to Adaptive

Every strategy is safe to share between threads and asyncio tasks: a pick never awaits,
and state shared between picks is changed under a lock (RoundRobin and Weighted use an
itertools counter, whose next() is atomic under the GIL). `update` swaps in a new
snapshot, so picks never see a half-updated list.
"""

from clusterpool.balancer.strategies import (
    STRATEGIES,
    Adaptive,
    Balancer,
    ConsistentHash,
    LeastConnections,
    NoEndpointError,
    RoundRobin,
    Target,
    Weighted,
    make_balancer,
)

__all__ = [
    "STRATEGIES",
    "Adaptive",
    "Balancer",
    "ConsistentHash",
    "LeastConnections",
    "NoEndpointError",
    "RoundRobin",
    "Target",
    "Weighted",
    "make_balancer",
]
