"""What a pool's endpoints are checked with: the prober, and the engine's gauge reader.

Both follow the spec: a spec change replaces them together, and the loop closes them
together when it ends.
"""

from __future__ import annotations

import asyncio

from clusterpool.api import ClusterPoolSpec
from clusterpool.core.load import EngineReading
from clusterpool.core.pool import PoolState
from clusterpool.core.status import SERVING
from clusterpool.health.load import LoadReader, load_reader_for
from clusterpool.health.probes import Prober, prober_for


class Checks:
    def __init__(self) -> None:
        self.prober: Prober | None = None
        self.load: LoadReader | None = None  # spec.engine's gauges, when it has any

    async def follow(self, spec: ClusterPoolSpec) -> None:
        """Check with what `spec` says from now on."""
        old, self.prober = self.prober, prober_for(spec.health_check, spec.engine)
        old_load, self.load = self.load, load_reader_for(spec)
        if old is not None:
            await old.close()
        if old_load is not None:
            old_load.close()

    def start_load_read(self, pool: PoolState) -> asyncio.Future[None] | None:
        """The gauges of the endpoints serving now read in the background, when due; None
        without a reader."""
        if self.load is None:
            return None
        serving = {ep.name for ep in pool.members if pool.health.of(ep.name).health in SERVING}
        return asyncio.ensure_future(self.load.read(pool.members, serving))

    def readings(self) -> dict[str, EngineReading] | None:
        return self.load.readings if self.load is not None else None

    async def close(self) -> None:
        if self.prober is not None:
            await self.prober.close()
        if self.load is not None:
            self.load.close()
