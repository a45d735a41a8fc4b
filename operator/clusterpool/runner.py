"""One pool's loop: read the spec, probe, fold results into health, publish.

The runner knows nothing of kopf: the wiring hands it the live object body and three
callables (write status, emit an Event, the logger). Each round:

1. re-validates the spec when its generation changed; a bad spec is reported
   (SpecValid=False and a Warning Event) and the last valid spec stays in use;
2. probes every endpoint concurrently and folds the results into PoolHealth;
3. emits an Event per transition and writes status only when it differs from the
   last status written;
4. sleeps intervalSeconds plus jitter, or until woken by a spec change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from clusterpool import api
from clusterpool.core.health import Endpoint, PoolHealth, Thresholds, Transition
from clusterpool.core.status import render_status, restore_health
from clusterpool.discovery.static import static_members
from clusterpool.health.probes import Prober, probe_all, prober_for

WriteStatus = Callable[[dict[str, Any]], Awaitable[bool]]
Emit = Callable[[str, str, str], None]  # (type: Normal|Warning, reason, message)


def utcnow() -> datetime:
    return datetime.now(UTC)


def members_of(spec: api.ClusterPoolSpec) -> tuple[Endpoint, ...]:
    if spec.discovery.static is not None:
        return static_members(spec.discovery.static)
    return ()


def _count(n: int, what: str) -> str:
    return f"1 {what}" if n == 1 else f"{n} consecutive {what}s"


def transition_event(t: Transition, thresholds: Thresholds) -> tuple[str, str, str]:
    ep = f"endpoint {t.endpoint.name} ({t.endpoint.address}:{t.endpoint.port})"
    if t.after == "Unhealthy":
        after = "its first probe failed" if t.before == "Unknown" else _count(thresholds.unhealthy, "failed probe")
        return "Warning", "EndpointUnhealthy", f"{ep} is Unhealthy after {after}: {t.message}"
    after = "its first probe passed" if t.before == "Unknown" else _count(thresholds.healthy, "passing probe")
    return "Normal", "EndpointHealthy", f"{ep} is Healthy after {after}"


class PoolRunner:
    def __init__(
        self,
        body: Mapping[str, Any],
        write_status: WriteStatus,
        emit: Emit,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.body = body  # a live view: kopf updates it as the object changes
        self.write_status = write_status
        self.emit = emit
        self.log = logger
        self.rand = rand
        self.wake = asyncio.Event()
        self.stopping = False
        self.spec: api.ClusterPoolSpec | None = None
        self.spec_error: str | None = None
        self.generation: int | None = None
        self.prober: Prober | None = None
        self.pool = PoolHealth()
        self.last_written: dict[str, Any] | None = None

    # -- spec ---------------------------------------------------------------------------

    def _current_generation(self) -> int | None:
        gen = (self.body.get("metadata") or {}).get("generation")
        return int(gen) if gen is not None else None

    def refresh_spec(self) -> None:
        """Re-validate the spec when its generation changed (objects stored under an
        older schema, or edits the CRD cannot check, end up here)."""
        generation = self._current_generation()
        if self.generation is not None and generation == self.generation:
            return
        first = self.generation is None
        self.generation = generation
        try:
            spec = api.parse_spec(dict(self.body.get("spec") or {}))
        except ValidationError as exc:
            self.spec_error = api.spec_errors(exc)
            self.log.warning("invalid spec (generation %s): %s", generation, self.spec_error)
            self.emit(
                "Warning",
                "InvalidSpec",
                f"{self.spec_error}; "
                + ("the last valid spec stays in use" if self.spec else "nothing runs until it is fixed"),
            )
            return
        self.spec_error = None
        members = members_of(spec)
        if first:
            self.pool = restore_health(members, self.body.get("status") or {})
        else:
            self.pool = self.pool.with_members(members)
        self.spec = spec
        self.prober = prober_for(spec.health_check)

    # -- one round ----------------------------------------------------------------------

    async def probe_round(self) -> None:
        if self.spec is None or self.prober is None:
            return
        results = await probe_all(self.pool.members, self.prober)
        hc = self.spec.health_check
        thresholds = Thresholds(healthy=hc.healthy_threshold, unhealthy=hc.unhealthy_threshold)
        self.pool, transitions = self.pool.observe(results, thresholds, utcnow())
        for t in transitions:
            kind, reason, message = transition_event(t, thresholds)
            self.log.info("%s: %s", reason, message)
            self.emit(kind, reason, message)

    def render(self) -> dict[str, Any]:
        status = self.last_written if self.last_written is not None else (self.body.get("status") or {})
        return render_status(
            self.pool,
            source=self.spec.discovery.source if self.spec else None,
            generation=self.generation,
            prev_conditions=list(status.get("conditions") or []),
            now=utcnow(),
            spec_error=self.spec_error,
            have_spec=self.spec is not None,
        )

    async def publish(self) -> None:
        status = self.render()
        if self.last_written is None:
            current = dict(self.body.get("status") or {})
            if _same(current, status):
                self.last_written = status
                return
        elif _same(self.last_written, status):
            return
        self._emit_ready_change(status)
        if await self.write_status(status):
            self.last_written = status

    def _emit_ready_change(self, status: dict[str, Any]) -> None:
        before = _condition(self.last_written or dict(self.body.get("status") or {}), "Ready")
        after = _condition(status, "Ready")
        if after is None or (before is not None and before.get("status") == after.get("status")):
            return
        if after["status"] == "True":
            self.emit("Normal", "PoolReady", after["message"])
        elif after["status"] == "False":
            self.emit("Warning", "PoolNotReady", f"{after['reason']}: {after['message']}")

    # -- the loop -----------------------------------------------------------------------

    def next_delay(self, took: float) -> float:
        if self.spec is None:
            return 30.0
        hc = self.spec.health_check
        interval = hc.interval_seconds * (1 + hc.interval_jitter_percent / 100 * self.rand())
        return max(0.0, interval - took)

    async def run_once(self) -> float:
        start = time.monotonic()
        self.refresh_spec()
        await self.probe_round()
        await self.publish()
        return self.next_delay(time.monotonic() - start)

    def stop(self) -> None:
        """Finish the current round and return from run()."""
        self.stopping = True
        self.wake.set()

    async def run(self) -> None:
        while not self.stopping:
            self.wake.clear()  # before the round, so a change during it wakes the next one
            try:
                delay = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed write or a bug in one round must not stop probing
                self.log.exception("pool round failed; retrying")
                delay = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal as the API server would store them (kopf's views are not plain dicts)."""
    return bool(_plain(a) == _plain(b))


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
