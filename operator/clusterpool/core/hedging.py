"""The hedging policy of a pool (spec.hedging, the routing table's `hedging`) and the one
rule both the SDK's async transport and the gateway apply before sending a hedge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HedgePolicy:
    after: float  # seconds an attempt waits for its response head before the next hedge
    max_hedges: int = 1

    def to_json(self) -> dict[str, int]:
        return {"afterMilliseconds": round(self.after * 1000), "maxHedges": self.max_hedges}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HedgePolicy:
        after, most = int(raw["afterMilliseconds"]), int(raw.get("maxHedges", 1))
        if after < 1 or most < 1:
            raise ValueError(f"hedging needs afterMilliseconds >= 1 and maxHedges >= 1, not {dict(raw)!r}")
        return cls(after / 1000, most)

    def allows(self, hedges: int, tried: int, matching: int) -> bool:
        """Whether one more hedge may go out, after `hedges` hedges and with `tried` of the
        `matching` endpoints tried (a hedge never goes to an endpoint already tried). The
        caller then draws a token from the retry budget, which hedges share with retries."""
        return hedges < self.max_hedges and tried < matching
