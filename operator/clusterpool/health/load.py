"""The operator's coarse reading of engine load, for status: the gauges spec.engine's profile
lists, read from each serving endpoint every few probe rounds, the last reading kept.

    reader = load_reader_for(spec)          # None: no engine, or one without metrics
    await reader.read(members, serving)     # each round, beside the probes; reads when due
    reader.readings                         # endpoint name -> core.load.EngineReading

The routing signal is the SDK's and the gateway's scraper (client/load.py, every 250 ms);
this one only feeds the status, which carries it only on writes made for other reasons, so
it reads an endpoint at most once per LOAD_READ_EVERY (and with the probe round, never on
a schedule of its own). It reuses that scraper's connection and parsing. A read that
fails, or metrics that lack the profile's gauges, leave a reading with a reason and no
values: nothing is retried before the next due round, so there is no error loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime

from clusterpool.api import ClusterPoolSpec
from clusterpool.client.load import SCRAPE_ERRORS, MetricsConnection, failure_reason, read_gauges
from clusterpool.core.health import Endpoint
from clusterpool.core.load import EngineReading, Load
from clusterpool.engines.profiles import EngineProfile, profile_for
from clusterpool.health.probes import LATE, Deadline

log = logging.getLogger(__name__)

LOAD_READ_EVERY = 5.0  # seconds: an endpoint's gauges are read at most this often (per pool)
GAUGES_MISSING = "GaugesMissing"

Key = tuple[str, int]


class LoadReader:
    """Reads the gauges of one pool's serving endpoints every `every` rounds (see the module
    docstring); `readings` holds the last one per endpoint still serving."""

    def __init__(
        self,
        profile: EngineProfile,
        interval_seconds: float,
        timeout: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if profile.metrics_path is None:
            raise ValueError(f"the {profile.engine} profile has no metrics path: there is no load to read")
        self.profile, self.path, self.timeout, self.clock = profile, profile.metrics_path, timeout, clock
        self.every = max(1, math.ceil(LOAD_READ_EVERY / interval_seconds))  # rounds between reads
        self.readings: dict[str, EngineReading] = {}
        self._wait = 0  # rounds until the next read
        self._conns: dict[Key, MetricsConnection] = {}

    async def read(self, members: Sequence[Endpoint], serving: Collection[str]) -> None:
        """When due: read every member named in `serving` concurrently, within `timeout`."""
        targets = [ep for ep in members if ep.name in serving]
        if self._wait > 0 or not targets:
            self._wait = max(0, self._wait - 1)
            return
        self._wait = self.every - 1
        keep = {(ep.address, ep.port) for ep in targets}
        for key in [k for k in self._conns if k not in keep]:
            self._conns.pop(key).close()
        results = await asyncio.gather(*(self._read_one(ep) for ep in targets))
        readings = {n: r for n, r in self.readings.items() if n in serving}
        for ep, reading in zip(targets, results, strict=True):
            if reading is not None:
                self._log_change(ep, readings.get(ep.name), reading)
                readings[ep.name] = reading
        self.readings = readings

    async def _read_one(self, ep: Endpoint) -> EngineReading | None:
        """One endpoint's reading; None when the operator itself was too late to tell (the
        last reading stays)."""
        key = (ep.address, ep.port)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = MetricsConnection(ep.address, ep.port, self.path)
        deadline = Deadline(self.timeout)
        try:
            async with deadline:
                body = await conn.get()
        except SCRAPE_ERRORS as exc:
            conn.close()
            if isinstance(exc, TimeoutError) and deadline.late > LATE:
                return None
            reason, message = failure_reason(exc)
            return EngineReading(None, self.clock(), reason, f"GET {self.path}: {message}")
        values, missing = read_gauges(body, self.profile.gauges)
        load = Load(values.get("waiting"), values.get("running"), values.get("kvUsage"), missing=missing)
        if missing:
            return EngineReading(load, self.clock(), GAUGES_MISSING, self.profile.describe_missing(missing))
        return EngineReading(load, self.clock())

    def _log_change(self, ep: Endpoint, before: EngineReading | None, after: EngineReading) -> None:
        """Logged when the reason changes, not every read."""
        if after.reason != (before.reason if before is not None else None) and after.reason is not None:
            log.info("engine load of %s (%s:%s) not read in full: %s: %s", ep.name, ep.address, ep.port,
                     after.reason, after.message)  # fmt: skip

    def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()


def load_reader_for(spec: ClusterPoolSpec) -> LoadReader | None:
    """The pool's reader: None without spec.engine or for an engine without metrics."""
    profile = profile_for(spec.engine)
    if profile is None or profile.metrics_path is None or not profile.gauges:
        return None
    hc = spec.health_check
    return LoadReader(profile, float(hc.interval_seconds), float(hc.timeout_seconds))
