"""The pool loop's stage interfaces (Source, Sink) and what every stage shares.

A Source says who exists; Sinks take the state elsewhere; all of them know the pool by
its PoolRef, read its Secrets through PoolSecrets, post Events and wake the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from clusterpool import api
from clusterpool.core.health import Endpoint
from clusterpool.core.pool import PoolState
from clusterpool.core.status import ConditionSpec

Emit = Callable[[str, str, str], None]  # (type: Normal|Warning, reason, message)
SecretReader = Callable[[str, str, str], Awaitable[str | None]]  # (namespace, name, key) -> the value or None
SecretValue = Callable[[], Awaitable[str | None]]  # one Secret's value, read when called
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PoolRef:
    """Which pool: its namespace and name, read from the object's metadata in one place."""

    namespace: str
    name: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> PoolRef:
        meta = body.get("metadata") or {}
        return cls(str(meta.get("namespace")), str(meta.get("name")))


class SecretKey(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def key(self) -> str: ...


class PoolSecrets:
    """The Secrets a pool names, always read in the pool's namespace (None: cannot be read)."""

    def __init__(self, reader: SecretReader | None, namespace: str) -> None:
        self._reader, self._namespace = reader, namespace

    async def read(self, ref: SecretKey | None) -> str | None:
        if ref is None or self._reader is None:
            return None
        return await self._reader(self._namespace, ref.name, ref.key)

    def value(self, ref: SecretKey | None) -> SecretValue:
        """The read as a callable, for clients that read it again when they reconnect."""

        async def value() -> str | None:
            return await self.read(ref)

        return value


class Wakeups:
    """Why the loop should run before its interval ends. Reasons are kept as a set, so a
    burst of the same wake-up (a slice changing ten times) is one round, not ten, as in
    controller-runtime's work queue; the round logs what woke it."""

    def __init__(self) -> None:
        self._reasons: set[str] = set()
        self._event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self._reasons.add(reason)
        self._event.set()

    def take(self) -> frozenset[str]:
        """The reasons gathered so far; later wake-ups wake the next round."""
        reasons = frozenset(self._reasons)
        self._reasons.clear()
        self._event.clear()
        return reasons

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()


Wake = Callable[[str], None]  # (reason)


@dataclass(frozen=True)
class Observation:
    """What a source says: the members, and its own condition (DiscoveryDegraded), if any."""

    members: tuple[Endpoint, ...]
    condition: ConditionSpec | None = None


class Source(Protocol):
    """Who exists. Made from spec.discovery by discovery.source.open_source."""

    async def observe(self) -> Observation: ...


@dataclass(frozen=True)
class Snapshot:
    """What a sink is offered: the spec in use and the pool's state."""

    spec: api.ClusterPoolSpec
    state: PoolState
    models: tuple[str, ...] = ()  # the model names the pool serves (spec.models less those held elsewhere)


class Sink(Protocol):
    """Takes the pool's state somewhere else and answers with its condition (None: it has
    nothing to report). `condition` is the one the status shows now (seeded from the
    stored status, then set by the task that runs the sink)."""

    condition_type: str
    condition: ConditionSpec | None

    async def sync(self, snapshot: Snapshot) -> ConditionSpec | None: ...
    async def close(self) -> None: ...
    async def remove(self) -> None: ...


def _always() -> bool:
    return True


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Fence:
    """What the wiring says of this replica and the pool (sharding): whether it may write
    now, whether the pool stays here, its name, and how to make the writers forget what
    they remember having written (after another replica may have written meanwhile)."""

    may_drive: Callable[[], bool] = _always
    keeps: Callable[[], bool] = _always
    identity: str | None = None
    forget_written: Callable[[], None] = _nothing
    # the status as the API server holds it now (a quorum read); None: the body's own copy
    read_stored_status: Callable[[], Awaitable[Mapping[str, Any] | None]] | None = None
