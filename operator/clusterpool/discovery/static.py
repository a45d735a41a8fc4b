"""Static discovery: the endpoints listed in the spec."""

from __future__ import annotations

from clusterpool.api import StaticDiscovery
from clusterpool.core.health import Endpoint
from clusterpool.core.labels import as_labels


def static_members(static: StaticDiscovery) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(e.name, e.address, e.port, e.weight, e.tier, labels=as_labels(e.labels or {}), capacity=e.capacity)
        for e in static.endpoints
    )
