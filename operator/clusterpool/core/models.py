"""Which pool serves which model: spec.models is unique per namespace (pure functions).

Admission sees one object at a time, so two pools of a namespace may both claim a model.
The pool created first (creationTimestamp, then name) keeps it; a later one does not serve
it and says so in its ModelsConflict condition and an Event naming the other pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clusterpool.core.status import ConditionSpec

CONDITION = "ModelsConflict"


@dataclass(frozen=True)
class ModelClaim:
    """A pool of one namespace and the models its spec declares."""

    name: str
    created: str  # metadata.creationTimestamp (RFC 3339 in UTC: sorts as text)
    models: tuple[str, ...]

    @property
    def rank(self) -> tuple[str, str]:
        return (self.created, self.name)


@dataclass(frozen=True)
class ModelOwnership:
    """What one pool serves: `served` in the order declared, and each model it declares but
    does not serve with the pool that holds it."""

    served: tuple[str, ...] = ()
    held_elsewhere: tuple[tuple[str, str], ...] = ()  # (model, the pool that serves it)


def claims_from(entries: Iterable[Mapping[str, object]]) -> tuple[ModelClaim, ...]:
    """Claims from pools as stored (name, creationTimestamp, spec.models); entries without a
    name, and model names that are not strings, are left out (a stored spec is not validated)."""
    out = []
    for e in entries:
        models = e.get("models")
        if not isinstance(e.get("name"), str) or not isinstance(models, list | tuple):
            continue
        out.append(
            ModelClaim(str(e["name"]), str(e.get("created") or ""), tuple(m for m in models if isinstance(m, str)))
        )
    return tuple(out)


def ownership(pool: ModelClaim, namespace_claims: Iterable[ModelClaim]) -> ModelOwnership:
    """The models `pool` serves among the claims of its namespace (it may be among them; the
    claims of other namespaces must not be)."""
    first: dict[str, ModelClaim] = {}
    for claim in namespace_claims:
        if claim.name == pool.name:
            continue
        for model in claim.models:
            holder = first.get(model)
            if holder is None or claim.rank < holder.rank:
                first[model] = claim
    served, elsewhere = [], []
    for model in dict.fromkeys(pool.models):
        holder = first.get(model)
        if holder is not None and holder.rank < pool.rank:
            elsewhere.append((model, holder.name))
        else:
            served.append(model)
    return ModelOwnership(tuple(served), tuple(elsewhere))


def conflict_message(pool: str, held: tuple[tuple[str, str], ...]) -> str:
    by_pool: dict[str, list[str]] = {}
    for model, other in held:
        by_pool.setdefault(other, []).append(model)
    parts = [f"{', '.join(models)} already served by pool {other}" for other, models in sorted(by_pool.items())]
    return (
        f"spec.models of pool {pool}: {'; '.join(parts)} (created earlier in this namespace), so this pool does not "
        "serve them; remove them from spec.models here, or from the other pool to move them here"
    )


def models_condition(pool: str, declared: bool, owned: ModelOwnership) -> ConditionSpec | None:
    """The ModelsConflict condition; None for a pool that declares no models."""
    if not declared:
        return None
    if owned.held_elsewhere:
        return ConditionSpec(CONDITION, "True", "ModelServedElsewhere", conflict_message(pool, owned.held_elsewhere))
    return ConditionSpec(CONDITION, "False", "NoConflict", f"serves {', '.join(owned.served)}")
