"""Replicas share pools through Leases on the real apiserver (k8s/shards.py): each of
300 pools is drivable by exactly one replica once settled and by at most one at every
instant sampled (every 50 ms) through joins, graceful leaves, a replica cut off from the
API and its return. No operator process: Shards instances on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from backends import free_port
from clusterpool.k8s.shards import SHARD_LABEL, Shards, lease_name

# lease, renew period, request timeout: R + T < L/3, 3T < L/3; a hold period survives
# syncs up to L/3 - T = 1.37 s apart, so a loaded machine delaying a sync by 0.8 s is fine
L, R, T = 5.0, 0.5, 0.3
DEADLINE = L * 2 / 3
KEYS = [(f"team-{i % 3}", f"pool-{i}") for i in range(300)]
SAMPLE = 0.05


@pytest.fixture
def lease_namespace(cluster, k8s) -> Iterator[str]:
    ns = f"shards-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(k8s)
    core.create_namespace({"metadata": {"name": ns}})
    yield ns
    with contextlib.suppress(ApiException):
        core.delete_namespace(ns)


class Fleet:
    """Shards instances on this event loop and a sampler that records, every 50 ms, which
    keys each one may drive."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.shards: dict[str, Shards] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.samples: list[tuple[float, dict[str, frozenset[tuple[str, str]]]]] = []
        self.violations: list[str] = []
        self.membership: dict[str, list[tuple[str, ...]]] = {}  # what each one's on_members heard

    def start(self, identity: str) -> Shards:
        client = kubernetes.config.new_client_from_config(config_file=self.cluster.kubeconfig)
        heard = self.membership.setdefault(identity, [])
        shards = Shards(
            client,
            identity,
            self.namespace,
            lease_seconds=L,
            renew_seconds=R,
            request_timeout=T,
            on_members=heard.append,
        )
        self.shards[identity] = shards
        self.tasks[identity] = asyncio.create_task(shards.run())
        return shards

    async def stop(self, identity: str) -> None:
        task = self.tasks.pop(identity)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def driven(self, now: float | None = None) -> dict[str, frozenset[tuple[str, str]]]:
        """Which keys each one may drive at `now` (one instant for all: a sample's time is
        exactly when its answers hold)."""
        at = time.monotonic() if now is None else now
        return {i: frozenset(k for k in KEYS if s.view.may_drive("/".join(k), at)) for i, s in self.shards.items()}

    async def sample(self) -> None:
        while True:
            now = time.monotonic()
            driven = self.driven(now)
            self.samples.append((now, driven))
            for key in KEYS:
                drivers = [i for i, keys in driven.items() if key in keys]
                if len(drivers) > 1:
                    self.violations.append(f"{now:.3f}: {key} driven by {drivers}")
            await asyncio.sleep(SAMPLE)

    def settled(self, members: set[str]) -> bool:
        driven = self.driven()
        if {i for i, keys in driven.items() if keys} != members:
            return False
        return all(sum(key in keys for keys in driven.values()) == 1 for key in KEYS)

    async def wait_settled(self, members: set[str], timeout: float) -> float:
        """Seconds until every key has exactly one driver, among exactly `members`."""
        start = time.monotonic()
        while not self.settled(members):
            if time.monotonic() - start > timeout:
                now = time.monotonic()
                got = {
                    i: (len(k), self.shards[i].holds_lease(), self.shards[i].view.drivable_from() - now)
                    for i, k in self.driven().items()
                }
                raise AssertionError(
                    f"not settled on {sorted(members)} within {timeout}s: (keys, holds, wait left) {got}"
                )
            await asyncio.sleep(0.02)
        return time.monotonic() - start


@pytest.fixture
async def fleet(cluster, lease_namespace) -> AsyncIterator[Fleet]:
    f = Fleet(cluster, lease_namespace)
    sampler = asyncio.create_task(f.sample())
    yield f
    sampler.cancel()
    for identity in list(f.tasks):
        await f.stop(identity)


async def read_lease(k8s, namespace: str, identity: str) -> kubernetes.client.V1Lease | None:
    api = kubernetes.client.CoordinationV1Api(k8s)
    try:
        return await asyncio.to_thread(api.read_namespaced_lease, lease_name(identity), namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def test_two_then_three_replicas_share_300_pools_and_a_graceful_leave_hands_over_at_once(fleet, k8s):
    fleet.start("a")
    assert await fleet.wait_settled({"a"}, timeout=2) < 2  # alone: no hand-over wait

    a = fleet.shards["a"]
    woken = asyncio.create_task(a.changed())
    b_started = time.monotonic()
    b = fleet.start("b")
    await asyncio.wait_for(woken, R + 1)  # a's next list shows b: a is told
    assert a.members == ("a", "b")
    await fleet.wait_settled({"a", "b"}, timeout=L + 2)
    took = time.monotonic() - b_started
    assert took >= L - 0.2, f"b drove pools {took:.2f}s after it started, before a's Lease could have lapsed"
    fleet.start("c")
    await fleet.wait_settled({"a", "b", "c"}, timeout=L + 2)
    shares = {i: len(k) for i, k in fleet.driven().items()}
    assert all(60 <= n <= 140 for n in shares.values()), shares
    assert b.members == ("a", "b", "c") and b.holds_lease()
    assert fleet.shards["a"].owner_of(*KEYS[0]) == fleet.shards["c"].owner_of(*KEYS[0])

    lease = await read_lease(k8s, fleet.namespace, "b")
    assert lease is not None
    assert lease.metadata.labels == {SHARD_LABEL: "true"}
    assert lease.spec.holder_identity == "b" and lease.spec.lease_duration_seconds == L
    assert lease.spec.renew_time is not None and lease.spec.acquire_time is not None

    await fleet.stop("b")
    stopped = time.monotonic()
    assert not b.holds_lease() and not any(b.may_drive(*k) for k in KEYS)
    assert await read_lease(k8s, fleet.namespace, "b") is None  # deleted on the way out
    took = await fleet.wait_settled({"a", "c"}, timeout=3)
    assert time.monotonic() - stopped < 2 * R + 2 * T + 0.2, f"survivors took b's pools {took:.2f}s after it left"
    assert fleet.violations == []
    # each change of the members was told (the operator counts them as hand-overs in its metrics)
    # (told from the change notifier, a moment after may_drive already answers from the view)
    heard = fleet.membership["a"]
    for _ in range(100):
        if heard[-1] == ("a", "c"):
            break
        await asyncio.sleep(0.05)
    assert heard[0] == ("a",) and ("a", "b", "c") in heard and heard[-1] == ("a", "c"), heard


class SilentPort:
    """A TCP port that accepts connections and never answers (a partition that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]


@pytest.mark.parametrize("cut", ["refused", "silent"])
async def test_a_replica_cut_off_from_the_api_stops_before_the_survivors_take_its_pools(fleet, cut):
    for identity in ("a", "b", "c"):
        fleet.start(identity)
    await fleet.wait_settled({"a", "b", "c"}, timeout=L + 3)
    b = fleet.shards["b"]
    theirs = fleet.driven()["b"]
    assert theirs

    silent = SilentPort()
    port = silent.port if cut == "silent" else free_port()
    server = b.client.configuration.host
    cut_at = time.monotonic()
    b.client.configuration.host = f"https://127.0.0.1:{port}"
    try:
        while b.holds_lease():  # b is told when its Lease is no longer certainly its own
            await asyncio.wait_for(b.changed(), DEADLINE + 1)
        told = time.monotonic()
        assert 0 <= told - b.view.lease_valid_until() < 0.1
        await fleet.wait_settled({"a", "c"}, timeout=L + R + 2)
        await asyncio.sleep(2 * SAMPLE)  # let the sampler record the settled state
        after = [(t, d) for t, d in fleet.samples if t >= cut_at]
        b_last = max(t for t, d in after if d["b"])
        taken = min(t for t, d in after if (d["a"] | d["c"]) & theirs)
        # b stops within renew_deadline of its last sync, which started before the cut
        assert b_last < cut_at + DEADLINE + SAMPLE, (b_last - cut_at, DEADLINE)
        assert not b.holds_lease()
        # the survivors wait lease_seconds from their last sight of b's Lease
        last_seen = [fleet.shards[i].view.observed_at("b") for i in ("a", "c")]
        assert all(seen is not None for seen in last_seen)
        assert taken >= min(s for s in last_seen if s is not None) + L
        assert b_last < taken, f"b drove until {b_last - cut_at:.2f}s after the cut, others from {taken - cut_at:.2f}s"
        assert taken - cut_at < L + R + 1
    finally:
        b.client.configuration.host = server
        silent.sock.close()

    # b comes back: a new hold period; it waits, the survivors hand its pools back first.
    await fleet.wait_settled({"a", "b", "c"}, timeout=L + 3)
    assert fleet.driven()["b"] == theirs
    assert fleet.violations == []


async def test_a_dead_replicas_lease_delays_a_newcomer_by_one_lease_and_is_then_deleted(fleet, k8s):
    api = kubernetes.client.CoordinationV1Api(k8s)
    ghost = {
        "metadata": {"name": lease_name("ghost"), "labels": {SHARD_LABEL: "true"}},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": int(L)},
    }
    await asyncio.to_thread(api.create_namespaced_lease, fleet.namespace, ghost)
    a = fleet.start("a")
    # The ghost might be a live replica cut off from the API: a must wait out its lease.
    took = await fleet.wait_settled({"a"}, timeout=L + 2)
    assert took >= L - 0.2, f"a drove {took:.2f}s after it started, next to a Lease it had just seen"
    assert a.members == ("a",)
    start = time.monotonic()
    while await read_lease(k8s, fleet.namespace, "ghost") is not None:
        assert time.monotonic() - start < L + R + 1.5, "the expired Lease was not deleted"
        await asyncio.sleep(0.1)
    assert await read_lease(k8s, fleet.namespace, "a") is not None
    assert fleet.violations == []
