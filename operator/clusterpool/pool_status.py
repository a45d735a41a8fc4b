"""A pool's status: rendered from the state and written when it changed; pacing, pause, resume, held Events.

Informational fields alone (counters, messages, latencies) are written at a slower pace,
the engines' load (status.load) never alone: it goes with writes made for other reasons;
while this replica may not write, Events are held, and before its first write after such
a pause it reads what is stored (another replica may have driven the pool meanwhile).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from clusterpool.core.load import EngineReading
from clusterpool.core.pool import PoolState
from clusterpool.core.status import ConditionSpec, render_status, status_change
from clusterpool.metrics import PoolMetrics
from clusterpool.pool_spec import SpecTracker, failure_cap
from clusterpool.stages import Emit, Fence, utcnow

# (status, the status as last seen stored, the resourceVersion it was seen in) -> written
WriteStatus = Callable[[dict[str, Any], dict[str, Any], str | None], Awaitable[bool]]
INFORMATIONAL_EVERY = 30.0  # seconds: the pace of status writes that change no health (counters, messages)
HELD_EVENTS = 32  # Events kept while the replica may not write (the newest)
_NEVER = object()


class HeldEvents:
    """Events posted now or, while this replica may not write for the pool (its Lease is
    uncertain, e.g. the API server is away), held until it resumes: the newest HELD_EVENTS
    are kept, and none is posted ahead of those held."""

    def __init__(self, post: Emit, may_drive: Callable[[], bool]) -> None:
        self.post, self.may_drive = post, may_drive
        self.held: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=HELD_EVENTS)
        self.paused = False  # this replica could not write since its last write: resume first

    def __call__(self, type_: str, reason: str, message: str) -> None:
        if not self.paused and not self.held and self.may_drive():
            self.post(type_, reason, message)
        else:  # (a pause is what a round or a refused write finds: see PoolStatus.may_write)
            self.held.append((type_, reason, message))

    def release(self) -> None:
        self.paused = False
        while self.held:
            self.post(*self.held.popleft())


class InformationalPace:
    """When a change of informational fields alone may be written: every INFORMATIONAL_EVERY
    at most, not at once after a start either (a restarted operator finds latencies and
    messages moved, nothing else), and only with a token of the budget all pools share (at
    many pools they come less often instead of filling the write queue ahead of health)."""

    def __init__(self, budget: Callable[[], bool], every: float = INFORMATIONAL_EVERY) -> None:
        self.budget, self.every = budget, every
        self.due = time.monotonic() + every

    def allows(self) -> bool:
        return time.monotonic() >= self.due and self.budget()

    def written(self) -> None:
        self.due = time.monotonic() + self.every


class PoolStatus:
    """Writes the status from the state (not behind the sinks) when it changed; before any
    write after a pause it finds out what is stored now (resume)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        write: WriteStatus,
        fence: Fence,
        events: HeldEvents,
        pace: InformationalPace,
        metrics: PoolMetrics | None,
    ) -> None:
        self.body, self.write_fn, self.fence, self.events, self.pace, self.metrics = (
            body,
            write,
            fence,
            events,
            pace,
            metrics,
        )
        self.last_written: dict[str, Any] | None = None
        # the Ready condition's status as last announced by an Event (here or by whoever
        # wrote the stored status): a change is announced once, when it is seen stored
        self.ready_announced = _ready_of(body.get("status") or {})
        self.foreign_version_seen: object = _NEVER  # resourceVersion of the last status another replica wrote

    async def may_write(self) -> bool:
        """Whether this replica may write for the pool now; after a pause, it resumes first
        (and posts the Events it held), so nothing is written against a stale view."""
        if not self.fence.may_drive():  # observe only: nothing is written until this replica may again
            self.events.paused = True
            return False
        if self.events.paused or self._another_replica_wrote():
            await self._resume()
        self.events.release()
        return True

    def render(
        self,
        state: PoolState,
        specs: SpecTracker,
        conditions: Sequence[ConditionSpec],
        cache: dict[str, Any] | None,
        load: Mapping[str, EngineReading] | None = None,
    ) -> dict[str, Any]:
        status = self.last_written if self.last_written is not None else (self.body.get("status") or {})
        out = render_status(
            state,
            source=specs.spec.discovery.source if specs.spec else None,
            generation=specs.generation,
            prev_conditions=list(status.get("conditions") or []),
            now=utcnow(),
            spec_error=specs.error,
            have_spec=specs.spec is not None,
            extra_conditions=conditions,
            failure_cap=failure_cap(specs.spec),
            load=load,
        )
        if cache is not None:
            out["cache"] = plain(cache)  # (after a restart, what was stored: a kopf view)
        if specs.spec is not None and specs.spec.models:
            out["models"] = list(specs.models.served)
        if self.fence.identity is not None:
            out["drivenBy"] = self.fence.identity
        return out

    async def write(self, status: dict[str, Any]) -> None:
        """Written when it differs from the last one. `status` is as render() makes it:
        plain, as the API server stores it, so == compares it with what was stored."""
        if self.metrics is not None:
            self.metrics.status(status)
        previous = self.last_written if self.last_written is not None else plain(self.body.get("status") or {})
        self._announce_ready_change(previous)  # known stored (a write whose answer was lost may have landed)
        change = status_change(previous, status)
        if change == "none":
            self.last_written = status
            return
        if change == "load":
            return  # only the engines' load moved: it rides along with the next write
        if change == "informational" and not self.pace.allows():
            return  # only counters, latencies and messages moved: they go with a later write
        stored = plain(self.body.get("status") or {})
        version = self._version()
        if await self.write_fn(status, stored, version):
            self.last_written = status
            self.pace.written()
            self._announce_ready_change(status)

    def _announce_ready_change(self, status: Mapping[str, Any]) -> None:
        """PoolReady / PoolNotReady once per change of the stored Ready condition: a write
        that failed and is sent again must not announce it twice, nor one that landed
        though its answer was lost not at all."""
        after = _condition(status, "Ready")
        if after is None or after.get("status") == self.ready_announced:
            return
        self.ready_announced = after.get("status")
        if after["status"] == "True":
            self.events("Normal", "PoolReady", after["message"])
        elif after["status"] == "False":
            self.events("Warning", "PoolNotReady", f"{after['reason']}: {after['message']}")

    def _another_replica_wrote(self) -> bool:
        """The stored status names another driver, in a version not seen here before: the
        rounds may have missed the pause (one round longer than the hand-over)."""
        stored_by = (self.body.get("status") or {}).get("drivenBy")
        if self.last_written is None or stored_by in (None, self.fence.identity):
            return False
        return self._version() != self.foreign_version_seen

    def _version(self) -> str | None:
        version = (self.body.get("metadata") or {}).get("resourceVersion")
        return None if version is None else str(version)

    async def _resume(self) -> None:
        """Writing again after a pause: while this replica's Lease was uncertain or its
        hand-over wait ran, another replica may have driven the pool and written its
        status and objects. Whoever drives a pool writes its status, naming itself, before
        any of its objects; so a stored status that still names this replica says no one
        else wrote anything since, and what was written here is still what is stored.
        Otherwise every writer compares with what is stored from now on."""
        read = self.fence.read_stored_status
        stored = await read() if read is not None else self.body.get("status")
        self.foreign_version_seen = self._version()
        self.last_written = None if stored is None else plain(stored)
        if stored is not None:  # whoever wrote it announced its Ready change
            self.ready_announced = _ready_of(stored)
        identity = self.fence.identity
        if identity is None or stored is None or stored.get("drivenBy") != identity:
            self.fence.forget_written()


def _ready_of(status: Mapping[str, Any]) -> str | None:
    ready = _condition(status, "Ready")
    return None if ready is None else ready.get("status")


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


_LEAVES = frozenset((str, int, float, bool, type(None)))


def plain(x: Any) -> Any:
    """As the API server would store it: kopf's views and tuples become dicts and lists."""
    if type(x) in _LEAVES:
        return x
    if isinstance(x, Mapping):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x
