"""Static discovery: the endpoints listed in the spec."""

from __future__ import annotations

from clusterpool.api import StaticDiscovery
from clusterpool.core.health import Endpoint


def static_members(static: StaticDiscovery) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(e.name, e.address, e.port, e.weight, e.tier) for e in static.endpoints)
