"""This replica's membership in the shard set, on coordination.k8s.io/v1 Leases.

Every replica holds a Lease of its own, `clusterpool-shard-<identity>` labelled
clusterpool.dev/shard=true, and renews it every renew_seconds; right after each renewal
it lists all shard Leases. Pools go to the live members by a consistent hash of
"namespace/name" (core/ring.py). The rules (core/shards.py) are kube-controller-manager's
leader election applied per member: liveness of others is judged by when *this* process
saw their Lease change (local monotonic clock, never wall clocks), and a replica acts
only while its own last renewal is younger than renew_deadline = 2/3 lease_seconds
(self-fencing), as in client-go's leaderelection. As in timebertt's controller sharding,
a member that stops gracefully first stops acting, then deletes its Lease, so the
survivors take its pools at once; a member that dies or is cut off is taken over when
its Lease expires in the survivors' eyes. A Lease left expired for another
lease_seconds (a replica killed without a goodbye) is deleted by the survivors.

Why no pool is driven by two replicas at once. L = lease_seconds, T = request_timeout,
D = 2L/3. Assumptions: monotonic clocks of all replicas run at the same rate (drift is
far below L/3); a replica's renewal counts only if it answered within T of its start
(measured here, not trusted to the HTTP client); a Lease is deleted only by its holder
after it stopped driving, or by another member with its resourceVersion as precondition
once expired for another L (its holder's last renewal predates that version, so it has
held nothing since; coming back it finds the Lease gone and begins a new hold period);
all replicas use the same identity-to-key hash.
Definitions: X *drives* p at t when may_drive(p) is true at t; a *sync* of X starts at
s, renews (stored in etcd at some st with s <= st <= s+T), then lists (read at r >= st).
X drives at t only if its last sync started after t - D, in a hold period (syncs less
than L/3 - T apart) whose first sync ended at e_b with t >= e_b + L, unless that sync
saw no other live member.
1. If X drives at t and Y holds its Lease at t, Y sees X as live at t. Y's last list
   was read at r_Y > t - D. (a) If X's hold period began with a store after r_Y, X's
   wait would end after r_Y + L > t, so X must have been alone at e_b; but X's list
   read after r_Y saw Y's Lease, stored after t - D and first seen at or after that,
   so live at e_b < t: contradiction. (b) Otherwise let k be X's last sync of the hold
   period stored by r_Y. Y's read returned that version or a later one (a renewal whose
   answer was lost), first seen at obs >= s_k. If k is X's last sync, s_k > t - D and
   obs + L > t. If not, sync k+1 was stored after r_Y, so s_(k+1) > r_Y - T > t - D - T,
   and the hold period's rule s_(k+1) - s_k < L/3 - T gives obs >= s_k > t - L: live.
2. So if X and Y both drive p at t, each is live in the other's view; the ring of X's
   view gives p to X, which is in the intersection S of both views, so the ring of S
   gives p to X (core/ring.py); the same for Y: X = Y.
(Others' durations: liveness uses max(their leaseDurationSeconds, own L) and the hold
wait max over all, so replicas with different L stay safe.)

What the assumptions leave to the caller: a write decided while may_drive was true must
finish within L/3 (keep its request timeout under that), and on a graceful stop the
pools' drivers must be stopped before run() is cancelled (the Lease is deleted then).
Liveness (not safety) needs renew_seconds + T < L/3 and 3T < L/3, checked in __init__:
a healthy replica then keeps its hold period and its Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import logging
import math
import random
import re
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
import xxhash
from kubernetes.client.exceptions import ApiException

from clusterpool.core.shards import LeaseRecord, ShardView

log = logging.getLogger(__name__)

SHARD_LABEL = "clusterpool.dev/shard"
LEASE_PREFIX = "clusterpool-shard-"


def lease_name(identity: str) -> str:
    """The Lease name for an identity: a valid object name, distinct for distinct identities."""
    clean = re.sub(r"[^a-z0-9.-]+", "-", identity.lower()).strip("-.")
    if clean != identity or len(LEASE_PREFIX) + len(clean) > 253:
        digest = xxhash.xxh3_64_hexdigest(identity.encode())[:10]
        clean = f"{clean[:200].strip('-.')}-{digest}".lstrip("-")
    return LEASE_PREFIX + clean


def _micro_time() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC)
    # isoformat() drops the fraction when it is zero; MicroTime wants six digits.
    return now.replace(microsecond=now.microsecond or 1)


class LeaseCalls:
    """The Lease API calls of one replica: on a client and threads of its own, each timed in its worker thread.

    A client of its own: renewals never wait for a connection the operator's other calls
    hold, and are never retried by urllib3 behind the timeout's back (a replaced Lease
    retried after a lost answer would conflict with itself). Threads of its own: renewals
    never queue behind the operator's other API calls."""

    def __init__(
        self, client: kubernetes.client.ApiClient, identity: str, request_timeout: float, clock: Callable[[], float]
    ) -> None:
        config = copy.deepcopy(client.configuration)
        config.retries = False
        self.client = kubernetes.client.ApiClient(configuration=config)
        self.api = kubernetes.client.CoordinationV1Api(self.client)
        self.request_timeout = request_timeout
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"shards-{identity}")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return (await self.timed_call(fn, *args))[0]

    async def timed_call(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        """fn's answer, with when the request started and when it was answered, both taken
        in the worker thread: a busy event loop resuming late does not count against the
        API server (the answer's time is only ever later than the write it reports)."""

        def timed() -> tuple[Any, float, float]:
            started = self._clock()
            answer = fn(*args, _request_timeout=self.request_timeout)
            return answer, started, self._clock()

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class ShardLeases:
    """The shard Leases on the API server: this replica's own (created, renewed on the
    version it last wrote, deleted on the way out), the listing of all of them, and the
    deletion of one left expired."""

    def __init__(self, calls: LeaseCalls, identity: str, namespace: str, lease_seconds: float) -> None:
        self.calls = calls
        self.identity = identity
        self.namespace = namespace
        self.name = lease_name(identity)
        self.lease_seconds = lease_seconds
        self._version: str | None = None  # resourceVersion of the own Lease as last written
        self._acquired: datetime.datetime | None = None
        self._recreated = False

    def _body(self) -> kubernetes.client.V1Lease:
        now = _micro_time()
        if self._acquired is None:
            self._acquired = now
        return kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels={SHARD_LABEL: "true"},
                resource_version=self._version,
            ),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=math.ceil(self.lease_seconds),
                acquire_time=self._acquired,
                renew_time=now,
            ),
        )

    async def renew(self) -> tuple[bool, float, float]:
        """Renew the own Lease: (whether, since the last sync, the Lease was found missing
        or had to be created: a new hold period, someone may have seen it gone; when the
        renewing write started; when it was answered)."""
        api = self.calls.api
        if self._version is None:
            self._recreated = True
            try:
                lease, started, answered = await self.calls.timed_call(
                    api.create_namespaced_lease, self.namespace, self._body()
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Left by an earlier process with this identity: take it over.
                current = await self.calls.call(api.read_namespaced_lease, self.name, self.namespace)
                self._version = current.metadata.resource_version
            else:
                self._version = lease.metadata.resource_version
                return True, started, answered
        try:
            lease, started, answered = await self.calls.timed_call(
                api.replace_namespaced_lease, self.name, self.namespace, self._body()
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # deleted, or written by someone else: start over
                self._version = None
                self._acquired = None
            raise
        self._version = lease.metadata.resource_version
        return self._recreated, started, answered

    def synced(self) -> None:
        """A sync (renewal and listing) went through: the Lease's recreation is counted."""
        self._recreated = False

    async def list_all(self) -> list[LeaseRecord]:
        leases = await self.calls.call(
            functools.partial(self.calls.api.list_namespaced_lease, label_selector=f"{SHARD_LABEL}=true"),
            self.namespace,
        )
        return [
            LeaseRecord(
                holder=lease.spec.holder_identity or "",
                version=lease.metadata.resource_version,
                duration=float(lease.spec.lease_duration_seconds or 0),
                name=lease.metadata.name,
            )
            for lease in leases.items
            if lease.spec is not None
        ]

    async def delete_expired(self, name: str, version: str) -> None:
        options = kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(resource_version=version)
        )
        delete = functools.partial(self.calls.api.delete_namespaced_lease, body=options)
        try:
            await self.calls.call(delete, name, self.namespace)
        except Exception as exc:  # renewed meanwhile (409), gone (404), or the API: try again next time
            log.debug("shard %s: did not delete expired Lease %s/%s: %s", self.identity, self.namespace, name, exc)
        else:
            log.info("shard %s: deleted the expired Lease %s/%s", self.identity, self.namespace, name)

    async def release(self) -> None:
        """Delete the own Lease, best effort. Also when no renewal was answered: a create
        whose answer was lost may have landed."""
        try:
            async with asyncio.timeout(self.calls.request_timeout + 0.5):
                await self.calls.call(self.calls.api.delete_namespaced_lease, self.name, self.namespace)
        except Exception as exc:  # best effort: the Lease expires anyway
            if not (isinstance(exc, ApiException) and exc.status == 404):
                log.warning("shard %s: could not delete Lease %s/%s: %s", self.identity, self.namespace, self.name, exc)
        else:
            log.info("shard %s: stopped; deleted Lease %s/%s", self.identity, self.namespace, self.name)


class MembershipNotices:
    """Tells the waiters (changed()) and on_members when what the view says changed: the
    members, whether the own Lease is valid, whether the hand-over wait is over."""

    def __init__(
        self,
        view: ShardView,
        identity: str,
        clock: Callable[[], float],
        on_members: Callable[[tuple[str, ...]], None] | None,
    ) -> None:
        self.view = view
        self.identity = identity
        self._clock = clock
        self._on_members = on_members
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._state: tuple[tuple[str, ...], bool, bool] = ((), False, False)

    def changed(self) -> Coroutine[Any, Any, bool]:
        return self._changed.wait()

    def poke(self) -> None:
        """The view was synced: look again now."""
        self._poke.set()

    async def run(self) -> None:
        """Publish each change, waking at the view's next change in time or when poked."""
        while True:
            self.publish()
            now = self._clock()
            wake = self.view.next_change(now)
            timeout = None if wake is None else max(0.0, wake - now) + 0.001
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._poke.wait()
            self._poke.clear()

    def publish(self) -> None:
        now = self._clock()
        state = (self.view.members(now), self.view.holds_lease(now), now >= self.view.drivable_from())
        if state == self._state:
            return
        members, holds, waited = state
        role = "does not hold its Lease" if not holds else "drives its share" if waited else "waits for the hand-over"
        log.info("shard members: %s (%s %s)", ", ".join(members) or "none", self.identity, role)
        if members != self._state[0] and self._on_members is not None:
            self._on_members(members)
        self._state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Shards:
    """Run `run()` as a task for the operator's lifetime; ask `may_drive` before acting on a pool.

        shards = Shards(client, identity=os.environ["POD_NAME"], namespace=own_namespace)
        task = asyncio.create_task(shards.run())
        # a pool's loop
        while not shards.may_drive(namespace, name):
            await shards.changed()
        ... a round; check may_drive again before every write, stop when it turns False

    Stop the pools' loops before cancelling the task: it then deletes the Lease, and the
    survivors take over at once.
    """

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        identity: str,
        namespace: str,
        lease_seconds: float = 15,
        renew_seconds: float = 2,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float | None = None,
        on_members: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        """`on_members` is called with the live members each time they change (metrics)."""
        timeout = min(1.0, renew_seconds / 2) if request_timeout is None else request_timeout
        if renew_seconds <= 0 or timeout <= 0:
            raise ValueError(f"renew_seconds ({renew_seconds}) and request_timeout ({timeout}) must be positive")
        if renew_seconds + timeout >= lease_seconds / 3:
            raise ValueError(
                f"renew_seconds + request_timeout ({renew_seconds} + {timeout}) must be under lease_seconds/3 "
                f"({lease_seconds}/3): a healthy replica would lose its Lease between renewals"
            )
        if 3 * timeout >= lease_seconds / 3:
            raise ValueError(
                f"request_timeout ({timeout}) must be under lease_seconds/9 ({lease_seconds}/9): "
                "a renewal and a list must fit twice into a hold period's gap"
            )
        self.renew_seconds = renew_seconds
        self.view = ShardView(identity, lease_seconds, timeout)
        self._clock = clock
        self._leases = ShardLeases(LeaseCalls(client, identity, timeout, clock), identity, namespace, lease_seconds)
        self._notices = MembershipNotices(self.view, identity, clock, on_members)
        self._failing = False

    # -- answers -----------------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._leases.identity

    @property
    def namespace(self) -> str:
        return self._leases.namespace

    @property
    def lease_name(self) -> str:
        return self._leases.name

    @property
    def lease_seconds(self) -> float:
        return self._leases.lease_seconds

    @property
    def client(self) -> kubernetes.client.ApiClient:
        """The client the Lease calls go through: the operator's configuration, copied."""
        return self._leases.calls.client

    @property
    def request_timeout(self) -> float:
        return self._leases.calls.request_timeout

    @property
    def members(self) -> tuple[str, ...]:
        """The live members as this replica sees them (itself included while it holds its Lease)."""
        return self.view.members(self._clock())

    def holds_lease(self) -> bool:
        return self.view.holds_lease(self._clock())

    def drives_its_share(self) -> bool:
        """Holds its Lease and the hold period's hand-over wait is over: it drives what the ring gives it."""
        now = self._clock()
        return self.view.holds_lease(now) and now >= self.view.drivable_from()

    def owner_of(self, namespace: str, name: str) -> str | None:
        return self.view.owner_of(f"{namespace}/{name}", self._clock())

    def may_drive(self, namespace: str, name: str) -> bool:
        return self.view.may_drive(f"{namespace}/{name}", self._clock())

    def changed(self) -> Coroutine[Any, Any, bool]:
        """Ends at the next change of the members, of the own Lease's validity, or of
        the end of the hand-over wait: then ask may_drive again. The change counts from
        this call, not from when the wait first runs (a change in between wakes it)."""
        return self._notices.changed()

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Renew, list, repeat; on cancellation stop acting, then delete the own Lease."""
        notifier = asyncio.create_task(self._notices.run())
        try:
            while True:
                started = self._clock()
                await self._sync()
                self._notices.poke()
                pause = self.renew_seconds * (1 - 0.1 * random.random()) - (self._clock() - started)
                await asyncio.sleep(max(0.0, pause))
        finally:
            self.view.stop()
            self._publish()
            notifier.cancel()
            await asyncio.wait({notifier})
            await self._leases.release()
            self._leases.calls.close()

    async def _sync(self) -> None:
        try:
            created, started, answered = await self._leases.renew()
            if answered - started > self.request_timeout:
                raise TimeoutError(f"the renewal took {answered - started:.2f}s, over {self.request_timeout}s")
            leases = await self._leases.list_all()
        except Exception as exc:  # any failure: the Lease is not renewed this time
            if not self._failing:
                log.warning(
                    "shard %s: cannot renew Lease %s/%s: %s", self.identity, self.namespace, self.lease_name, exc
                )
            self._failing = True
            return
        if self._failing:
            log.info("shard %s: renewing Lease %s/%s again", self.identity, self.namespace, self.lease_name)
            self._failing = False
        self.view.synced(started, self._clock(), leases, created)
        self._leases.synced()
        # One per round: deletions must not delay the next renewal (the hold period).
        for name, version in self.view.expired_leases(self._clock())[:1]:
            await self._leases.delete_expired(name, version)

    def _publish(self) -> None:
        """Tell the waiters and on_members now if what the view says changed."""
        self._notices.publish()
