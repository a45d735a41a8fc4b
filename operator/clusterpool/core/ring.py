"""Consistent hashing of pool keys ("namespace/name") onto shard members.

Each member puts `vnodes` points on a 64-bit ring (xxh3 of "member#i"); a key belongs to
the member owning the first point at or after the key's hash, wrapping around. A
member's points depend only on its own identity, so:

- adding a member moves only the keys it takes (about 1/n of them) and no others;
- removing a member moves only its own keys;
- if owner(key) under a member set V is in a subset S of V, the owner under S is the
  same (the sharding's safety argument in k8s/shards.py relies on this).

Equal points (a 64-bit collision) are ordered by member identity, so every replica
computes the same ring from the same members. Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

import xxhash

DEFAULT_VNODES = 100


def _point(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode())


class HashRing:
    """An immutable ring of members; `owner(key)` is None only for an empty ring."""

    def __init__(self, members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self.vnodes = vnodes
        points = sorted((_point(f"{m}#{i}"), m) for m in self.members for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def owner(self, key: str) -> str | None:
        if not self._hashes:
            return None
        i = bisect_left(self._hashes, _point(key))
        return self._owners[i if i < len(self._owners) else 0]

    def __repr__(self) -> str:
        return f"HashRing({list(self.members)!r}, vnodes={self.vnodes})"
