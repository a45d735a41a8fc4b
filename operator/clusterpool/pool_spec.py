"""Spec tracking for one pool: re-validated when its generation moves, and what the core's settings are made of."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from clusterpool import api
from clusterpool.core.failover import BreakerConfig, FailoverConfig
from clusterpool.core.health import Thresholds
from clusterpool.core.models import ModelClaim, ModelOwnership, conflict_message, models_condition, ownership
from clusterpool.core.status import FAILURE_CAP, ConditionSpec
from clusterpool.stages import Emit, Log, PoolRef


def thresholds_of(spec: api.ClusterPoolSpec) -> Thresholds:
    hc = spec.health_check
    bound = hc.degraded_latency_milliseconds
    return Thresholds(hc.healthy_threshold, hc.unhealthy_threshold, bound / 1000 if bound is not None else None)


def failover_of(spec: api.ClusterPoolSpec) -> FailoverConfig:
    f, cb = spec.failover, spec.failover.circuit_breaker
    return FailoverConfig(
        breaker=BreakerConfig(
            failure_threshold=cb.failure_threshold or spec.health_check.unhealthy_threshold,
            open_seconds=cb.open_seconds,
            max_open_seconds=cb.max_open_seconds,
            half_open_max_probes=cb.half_open_max_probes,
            success_threshold=cb.success_threshold,
        ),
        max_ejection_percent=f.max_ejection_percent,
        panic_threshold_percent=f.panic_threshold_percent,
        failover_percent=f.tiers.failover_percent,
        failback_percent=f.tiers.failback_percent,
        slow_start_seconds=f.slow_start_seconds,
    )


def failure_cap(spec: api.ClusterPoolSpec | None) -> int:
    """Consecutive failures are reported up to the count that ejects."""
    if spec is None:
        return FAILURE_CAP
    return max(spec.health_check.unhealthy_threshold, failover_of(spec).breaker.failure_threshold)


class SpecTracker:
    """The spec in use: re-validated when the generation moves (objects stored under an
    older schema, or edits the CRD cannot check, end up here). A bad spec is reported
    (SpecValid=False with the field and the fix, and a Warning Event) and the last valid
    one stays in use."""

    def __init__(
        self, body: Mapping[str, Any], emit: Emit, log: Log, claims: Callable[[], Iterable[ModelClaim]] = tuple
    ) -> None:
        self.body, self.emit, self.log = body, emit, log
        self.claims = claims  # the claims of the namespace's pools on model names
        self.models = ModelOwnership()  # what this pool serves of spec.models (refresh_models)
        self.spec: api.ClusterPoolSpec | None = None
        self.error: str | None = None
        self.generation: int | None = None
        self.first = True  # the refresh under way is the first one
        self._ownership_of: tuple[tuple[str, ...], object] | None = None  # (declared, claims) models was found from

    def moved(self) -> bool:
        """Whether the generation moved since the last refresh (always, the first time)."""
        return self.generation is None or self._current_generation() != self.generation

    def refresh(self) -> api.ClusterPoolSpec | None:
        """A new valid spec when the generation moved and the spec is valid; None otherwise."""
        if not self.moved():
            return None
        self.first = self.generation is None
        self.generation = generation = self._current_generation()
        try:
            spec = api.parse_spec(dict(self.body.get("spec") or {}))
            self.error = api.pool_name_error(PoolRef.of(self.body).name)
        except ValidationError as exc:
            self.error = api.spec_errors(exc)
        if self.error is None:
            return spec
        self.log.warning("invalid spec (generation %s): %s", generation, self.error)
        self.emit(
            "Warning",
            "InvalidSpec",
            f"{self.error}; " + ("the last valid spec stays in use" if self.spec else "nothing runs until it is fixed"),
        )
        return None

    def refresh_models(self) -> None:
        """spec.models against the claims of the namespace's other pools (core/models.py):
        what this pool serves; an Event when a conflict appears, changes or clears."""
        declared = tuple(self.spec.models or ()) if self.spec is not None else ()
        claims = self.claims() if declared else ()  # a pool that declares none serves none
        if self._ownership_of is not None and self._ownership_of[0] == declared and self._ownership_of[1] is claims:
            return  # (every round of every pool: at 1,000 pools in one namespace, this was 1,000 x 1,000 claims)
        self._ownership_of = (declared, claims)
        meta = self.body.get("metadata") or {}
        name = PoolRef.of(self.body).name
        owned = ownership(ModelClaim(name, str(meta.get("creationTimestamp") or ""), declared), claims)
        if owned.held_elsewhere != self.models.held_elsewhere:
            if owned.held_elsewhere:
                self.emit("Warning", "ModelsConflict", conflict_message(name, owned.held_elsewhere))
            else:
                self.emit("Normal", "ModelsConflictResolved", f"serves {', '.join(owned.served) or 'no model'} now")
        self.models = owned

    def models_condition(self) -> ConditionSpec | None:
        declared = bool(self.spec and self.spec.models)
        return models_condition(PoolRef.of(self.body).name, declared, self.models)

    def _current_generation(self) -> int | None:
        gen = (self.body.get("metadata") or {}).get("generation")
        return int(gen) if gen is not None else None
