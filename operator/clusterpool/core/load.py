"""Engine-reported load as the strategies see it: one reading per endpoint, and the rule
that a reading too old (or none at all) counts as saturated, never as idle."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar

SATURATED_SCORE = 1e9  # above any real score; a saturated endpoint is taken only when all are


@dataclass(frozen=True)
class Load:
    """One endpoint's load: requests waiting in the engine's queue, sequences running, the
    share of its KV cache in use (0-1); None where the engine did not report it. `saturated`
    is set for a reading that is stale or missing (it must not attract traffic); `missing`
    names the gauges the engine's profile lists but its metrics lacked (the caller falls back
    to its own signals for those and may report a condition)."""

    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    saturated: bool = False
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineReading:
    """What the operator last read of one endpoint's load gauges, for its status (a coarse
    view, not the routing signal): the load, None when the read failed; when it was read;
    and, when the reading is missing or partial, why (reason: one CamelCase word)."""

    load: Load | None
    at: datetime
    reason: str | None = None
    message: str | None = None


SATURATED = Load(saturated=True)
NO_SIGNAL = Load()  # an engine without metrics (Ollama, a generic API): client-side signals only


class LoadView(Protocol):
    """The current load of an endpoint, by address and port (shared by every pool that has it)."""

    def load(self, address: str, port: int) -> Load: ...


@dataclass(frozen=True)
class LoadWeights:
    """How LeastLoaded weighs the signals: each queued request, each running sequence, the
    KV share (1.0 = full), each request this process has in flight there, and the endpoint's
    slowness: how many times the fleet's median latency its recent latency is above it
    (core/latency.py relative_slowness; 4.0 for an engine five times slower)."""

    waiting: float = 1.0
    running: float = 0.1
    kv_usage: float = 2.0
    inflight: float = 1.0
    latency: float = 4.0  # the routing benchmark's sweep (docs/routing-bench.md)

    def to_json(self) -> dict[str, float]:
        return _to_json(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LoadWeights:
        return _from_json(cls, raw, "leastLoaded")


def load_score(load: Load, inflight: int, w: LoadWeights, slowness: float = 0.0) -> float:
    """Lower is better. A saturated endpoint scores above any other, ordered among its
    kind by this process's in-flight requests."""
    if load.saturated:
        return SATURATED_SCORE + inflight
    score = w.inflight * inflight + w.latency * slowness
    if load.waiting is not None:
        score += w.waiting * load.waiting
    if load.running is not None:
        score += w.running * load.running
    if load.kv_usage is not None:
        score += w.kv_usage * load.kv_usage
    return score if math.isfinite(score) else SATURATED_SCORE + inflight


@dataclass(frozen=True)
class LoadBound:
    """When an endpoint counts as too busy for affinity: more than `waiting` queued, KV use
    above `kv_usage`, or more in flight from this process than `inflight_factor` x the mean
    (consistent hashing with bounded loads), or a saturated reading."""

    waiting: float = 4.0
    kv_usage: float = 0.9
    inflight_factor: float = 1.25

    def to_json(self) -> dict[str, float]:
        return _to_json(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LoadBound:
        return _from_json(cls, raw, "prefixAffinity")

    def over(self, load: Load, inflight: int, mean_inflight: float) -> bool:
        if load.saturated:
            return True
        if load.waiting is not None and load.waiting > self.waiting:
            return True
        if load.kv_usage is not None and load.kv_usage > self.kv_usage:
            return True
        return inflight >= max(1.0, math.ceil(self.inflight_factor * (mean_inflight + 1)))


# The routing table's form of LoadWeights and LoadBound (a pool's spec.leastLoaded and
# spec.prefixAffinity.loadBound, core/publish.py): the fields by their camelCase names, as
# plain numbers; a field left out keeps its default.
_Tuning = TypeVar("_Tuning", LoadWeights, LoadBound)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _to_json(tuning: LoadWeights | LoadBound) -> dict[str, float]:
    return {_camel(k): v for k, v in asdict(tuning).items()}


def _from_json(cls: type[_Tuning], raw: Mapping[str, Any], what: str) -> _Tuning:
    names = {_camel(f.name): f.name for f in fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown fields {unknown}; known: {sorted(names)}")
    values = {names[k]: float(v) for k, v in raw.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"{what}: {bad} must be finite and not negative")
    return cls(**values)
