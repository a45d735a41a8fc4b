"""Which pools this replica may drive: the pure rules of the shard set.

`ShardView` is fed the outcome of each renew-and-list cycle (k8s/shards.py does the
I/O) and answers, for any instant of the local monotonic clock, who the live members
are, whether this replica still certainly holds its Lease, and whether it may drive a
pool. No I/O and no clock of its own, so every rule is testable with made-up times.
Why the rules never let two replicas drive one pool: see clusterpool.k8s.shards.

The rules, with L = lease_seconds, T = request_timeout:
- A sync is a renewal of the own Lease that answered within T of its start, followed by
  a successful list of all shard Leases. `holds_lease(now)` is now < start of the last
  sync + renew_deadline (2/3 L).
- Another member is live until this replica's clock passes the instant it *first saw*
  the member's current Lease version (resourceVersion) + max(its leaseDurationSeconds,
  L). Wall clocks are never compared. A Lease missing from the list is gone at once
  (a holder deletes its Lease only after it stopped driving; others delete one only
  when expired_leases offers it, with its version as precondition).
- A hold period is a run of syncs whose starts are less than L/3 - T apart. A new one
  starts at the first sync, when the renewal had to create the Lease, and after any
  longer gap. During the first max(L, the others' durations) of a hold period nothing
  is drivable, unless the sync that began it saw no other live member. (With
  consistent hashing this is the only way a ring change gives a pool to this replica
  while the pool's previous owner is live: joins only take keys, and keys only move
  from members that left.)
- `may_drive(key, now)`: holds_lease, the ring of the live members and this replica
  assigns the key here, and the hold period's wait is over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clusterpool.core.ring import DEFAULT_VNODES, HashRing


@dataclass(frozen=True)
class LeaseRecord:
    """One shard Lease as listed: who holds it, its resourceVersion, its duration, its name."""

    holder: str
    version: str
    duration: float
    name: str = ""


@dataclass(frozen=True)
class _Seen:
    version: str
    observed_at: float
    duration: float
    name: str


class ShardView:
    def __init__(
        self, identity: str, lease_seconds: float, request_timeout: float, vnodes: int = DEFAULT_VNODES
    ) -> None:
        if not identity:
            raise ValueError("a shard member needs a non-empty identity")
        if not 0 < request_timeout < lease_seconds / 3:
            raise ValueError(
                f"request_timeout ({request_timeout}s) must be positive and under lease_seconds/3 ({lease_seconds}s/3)"
            )
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = lease_seconds * 2 / 3
        # Two syncs whose starts are this far apart end a hold period: another member
        # may by then have judged this one expired on a view as old as its own
        # renew_deadline (see the argument in k8s/shards.py).
        self.continuity = lease_seconds / 3 - request_timeout
        self._vnodes = vnodes
        self._seen: dict[str, _Seen] = {}
        self._synced_at: float | None = None  # start of the last sync
        self._drivable_from = float("inf")
        self._stopped = False
        self._rings: dict[frozenset[str], HashRing] = {}

    # -- feeding -----------------------------------------------------------------

    def synced(self, started: float, finished: float, leases: Iterable[LeaseRecord], created: bool = False) -> None:
        """A sync: the renewal started at `started` (and answered within the request
        timeout), the list that followed answered at `finished`; `leases` is what it
        returned; `created` when the renewal had to create the own Lease."""
        if self._stopped:
            return
        new_hold = created or self._synced_at is None or started - self._synced_at >= self.continuity
        seen: dict[str, _Seen] = {}
        for lease in leases:
            if not lease.holder or lease.holder == self.identity:
                continue
            before = self._seen.get(lease.holder)
            if before is not None and before.version == lease.version:
                seen[lease.holder] = before
            else:
                seen[lease.holder] = _Seen(lease.version, finished, lease.duration, lease.name)
        self._seen = seen
        self._synced_at = started
        if new_hold:
            others = self.live_others(finished)
            wait = max([self.lease_seconds, *(seen[o].duration for o in others)])
            self._drivable_from = finished + wait if others else finished

    def stop(self) -> None:
        """Stop for good (graceful shutdown): nothing is drivable from now on."""
        self._stopped = True

    # -- answers -----------------------------------------------------------------

    def holds_lease(self, now: float) -> bool:
        return not self._stopped and self._synced_at is not None and now < self._synced_at + self.renew_deadline

    def live_others(self, now: float) -> frozenset[str]:
        return frozenset(m for m, s in self._seen.items() if now < self._expiry(s))

    def members(self, now: float) -> tuple[str, ...]:
        """The live members as this replica sees them, itself included while it holds its Lease."""
        return self._ring(now).members

    def owner_of(self, key: str, now: float) -> str | None:
        return self._ring(now).owner(key)

    def lease_valid_until(self) -> float:
        """The instant holds_lease turns False unless a sync comes first (-inf before the first)."""
        if self._stopped or self._synced_at is None:
            return float("-inf")
        return self._synced_at + self.renew_deadline

    def drivable_from(self) -> float:
        """When the current hold period's wait ends (inf before the first sync)."""
        return self._drivable_from

    def may_drive(self, key: str, now: float) -> bool:
        return self.holds_lease(now) and now >= self._drivable_from and self._ring(now).owner(key) == self.identity

    def observed_at(self, member: str) -> float | None:
        """When this replica first saw `member`'s current Lease version."""
        seen = self._seen.get(member)
        return seen.observed_at if seen else None

    def expired_leases(self, now: float) -> list[tuple[str, str]]:
        """(name, resourceVersion) of other members' Leases that expired at least
        lease_seconds ago: left by replicas that died. Deleting one with that version as
        precondition is safe: its holder's last renewal is older than the version, so it
        has not held its Lease since long before; should it come back, its renewal finds
        the Lease gone and starts a new hold period."""
        return [
            (s.name, s.version) for s in self._seen.values() if s.name and now >= self._expiry(s) + self.lease_seconds
        ]

    def next_change(self, now: float) -> float | None:
        """The next instant after `now` at which an answer can change without a sync:
        the own Lease's deadline, the end of the hold period's wait, another member's expiry."""
        if self._stopped or self._synced_at is None:
            return None
        times = [self._synced_at + self.renew_deadline, self._drivable_from]
        times += [self._expiry(s) for s in self._seen.values()]
        future = [t for t in times if t > now]
        return min(future) if future else None

    # -- helpers -----------------------------------------------------------------

    def _expiry(self, seen: _Seen) -> float:
        return seen.observed_at + max(seen.duration, self.lease_seconds)

    def _ring(self, now: float) -> HashRing:
        members = self.live_others(now)
        if self.holds_lease(now):
            members |= {self.identity}
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) > 16:
                self._rings.clear()
            ring = self._rings[members] = HashRing(members, self._vnodes)
        return ring
