"""Load-balancing strategies: pure Python, importable without kopf or a cluster.

    b = make_balancer("Weighted")
    b.update([Target("a", "198.18.0.1", 8000, weight=3), Target("b", "198.18.0.2", 8000)])
    t = b.pick()                      # or b.pick(key) for ConsistentHash and PrefixAffinity
    with b.lease(key) as t: ...       # counts in-flight requests, feeds latency to Adaptive

Every strategy is safe to share between threads and asyncio tasks: a pick never awaits,
and state shared between picks is changed under a lock (RoundRobin and Weighted use an
itertools counter, whose next() is atomic under the GIL). `update` swaps in a new
snapshot, so picks never see a half-updated list. LeastLoaded and PrefixAffinity read
engine load from a LoadView (make_balancer(name, load=view); client/load.py scrapes it).
"""

from clusterpool.balancer.loaded import LeastLoaded, LoadAware, PrefixAffinity, rendezvous_order
from clusterpool.balancer.prefix import SESSION_HEADER, affinity_key, prompt_text
from clusterpool.balancer.registry import STRATEGIES, make_balancer
from clusterpool.balancer.strategies import (
    Adaptive,
    Balancer,
    ConsistentHash,
    LeastConnections,
    NoEndpointError,
    RoundRobin,
    Target,
    Weighted,
)

__all__ = [
    "SESSION_HEADER",
    "STRATEGIES",
    "Adaptive",
    "Balancer",
    "ConsistentHash",
    "LeastConnections",
    "LeastLoaded",
    "LoadAware",
    "NoEndpointError",
    "PrefixAffinity",
    "RoundRobin",
    "Target",
    "Weighted",
    "affinity_key",
    "make_balancer",
    "prompt_text",
    "rendezvous_order",
]
