"""Several operator processes share the pools through Leases: each pool is driven by one
replica at a time (status.drivenBy says which), a killed replica's pools move to the
others once its Lease runs out, and a replica that was frozen past its Lease writes
nothing for the pools it lost."""

import os
import re
import signal
import threading
import time

import kubernetes
import pytest
import urllib3

from clusterpool import api
from clusterpool.core.publish import POOL_LABEL
from clusterpool.core.ring import HashRing
from clusterpool.k8s.client import StatusWriter
from clusterpool.k8s.publish import APPLY, FIELD_MANAGER, Publisher
from clusterpool.k8s.writes import NotOwnedError, WriteQueue
from conftest import OperatorProcess, endpoints_of, wait_for

LEASE = 9.0  # seconds; renewals every LEASE / 10
INTERVAL = 2


class DriverLog:
    """Every status the API server stores for the namespace's pools, with its drivenBy."""

    def __init__(self, k8s, namespace):
        self.api = kubernetes.client.CustomObjectsApi(k8s)
        self.namespace = namespace
        self.writes: list[tuple[float, str, str]] = []  # (monotonic time, pool, drivenBy)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(
                    self.api.list_namespaced_custom_object,
                    "clusterpool.dev",
                    "v1alpha1",
                    self.namespace,
                    "clusterpools",
                    timeout_seconds=5,
                ):
                    obj = ev["object"]
                    by = (obj.get("status") or {}).get("drivenBy")
                    if by:
                        self.writes.append((time.monotonic(), obj["metadata"]["name"], by))
                    if self._stop.is_set():
                        break
            except Exception:  # the watch ends and restarts
                time.sleep(0.2)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def drivers(self, pool, since=0.0):
        """The pool's drivers in order, consecutive repeats folded."""
        out: list[str] = []
        for t, p, by in self.writes:
            if p == pool and t >= since and (not out or out[-1] != by):
                out.append(by)
        return out


@pytest.fixture
def replicas(operator, cluster, tmp_path, request):
    """Replaces the session's operator by operator processes of our own. When the test
    failed, prints what each replica logged about its Lease and its share."""
    operator.stop()
    started: list[OperatorProcess] = []

    def start(identity):
        op = OperatorProcess(cluster.kubeconfig, tmp_path, identity=identity, args=("--lease-seconds", str(LEASE)))
        op.start()
        started.append(op)
        return op

    yield start
    exited = {op.log.name: op.proc.poll() for op in started if op.proc is not None}
    for op in started:
        if op.proc is not None:
            os.kill(op.proc.pid, signal.SIGCONT)
        op.stop()
    if getattr(request.node, "failed_call", False):
        print(f"exit codes before the teardown (None: running): {exited}")
        for op in started:
            lines = op.log.read_text().splitlines()
            shard = [line for line in lines if "shard" in line or "Lease" in line]
            print(f"--- {op.log.name}: shard lines\n" + "\n".join(shard[-40:]))
            print(f"--- {op.log.name}: last lines\n" + "\n".join(lines[-15:]))
    operator.start()


def current_drivers(pools, names):
    return {n: pools.status(n).get("drivenBy") for n in names}


def wait_until_each_drives_some(pools, names, replicas):
    """Every pool names a driver and each of `replicas` drives some (60 s at most); a
    timeout shows who drove what."""
    wait_for(
        lambda: set(current_drivers(pools, names).values()) == set(replicas),
        60,
        "each replica driving its share",
        describe=lambda: current_drivers(pools, names),
    )


def create_pools(pools, backends, names):
    for n in names:
        pools.create(
            n,
            {
                "discovery": {"static": {"endpoints": endpoints_of(backends)}},
                "healthCheck": {"intervalSeconds": INTERVAL, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
            },
        )


def test_three_replicas_share_the_pools_and_a_killed_one_hands_over(replicas, pools, http_backends, k8s):
    log = DriverLog(k8s, pools.namespace)
    try:
        ops = {i: replicas(i) for i in ("rep-a", "rep-b", "rep-c")}
        backends = http_backends(1)
        names = [f"p{i}" for i in range(30)]
        create_pools(pools, backends, names)
        for n in names:
            pools.wait_ready(n, healthy=1, timeout=60)
        # every pool driven by its owner on the ring of all three (the hand-overs done)
        ring = HashRing(ops)
        drivers = {n: ring.owner(f"{pools.namespace}/{n}") for n in names}
        assert set(drivers.values()) == set(ops), f"every replica owns some pools: {drivers}"
        wait_for(
            lambda: current_drivers(pools, names) == drivers,
            60,
            "each pool driven by its owner among the three",
            describe=lambda: current_drivers(pools, names),
        )
        settled = time.monotonic()
        # the log sees every pool again within a watch's span (it lists them when it restarts)
        wait_for(lambda: all(log.drivers(n, since=settled) for n in names), 30, "every pool's status seen again")
        for n in names:  # nobody else wrote for a pool once the replicas were all up
            assert log.drivers(n, since=settled) == [drivers[n]], (n, log.drivers(n, since=settled))

        victim = "rep-b"
        moved = [n for n, by in drivers.items() if by == victim]
        ops[victim].stop(kill=True)
        killed = time.monotonic()
        wait_for(
            lambda: all(pools.status(n).get("drivenBy") not in (None, victim) for n in moved),
            LEASE + 3 * INTERVAL + 10,
            "the killed replica's pools taken over",
        )
        took = time.monotonic() - killed
        # and they are really driven: a backend change reaches every moved pool
        backends[0].stop()
        for n in moved:
            wait_for(lambda n=n: pools.status(n).get("healthy") == 0, 4 * INTERVAL + 5, f"{n} follows the backend")
        stayed = [n for n in names if n not in moved]
        assert all(pools.status(n)["drivenBy"] == drivers[n] for n in stayed), "pools of live replicas stayed put"
        print(f"takeover of {len(moved)} pools after SIGKILL: {took:.1f}s (lease {LEASE}s)")
    finally:
        log.stop()


def test_a_frozen_replica_writes_nothing_for_the_pools_it_lost(replicas, pools, http_backends, k8s):
    log = DriverLog(k8s, pools.namespace)
    try:
        ops = {i: replicas(i) for i in ("rep-a", "rep-b")}
        backends = http_backends(1)
        names = [f"q{i}" for i in range(12)]
        create_pools(pools, backends, names)
        # a replica answers its liveness probe before its first Lease renewal: wait until
        # both have joined and each drives its share
        wait_until_each_drives_some(pools, names, ops)
        drivers = current_drivers(pools, names)
        frozen = "rep-b"
        lost = [n for n, by in drivers.items() if by == frozen]
        assert lost, drivers
        proc = ops[frozen].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)  # cut off: no renewals, no writes, but alive
        wait_for(
            lambda: all(pools.status(n).get("drivenBy") == "rep-a" for n in lost),
            LEASE + 3 * INTERVAL + 10,
            "the frozen replica's pools taken over",
        )
        backends[0].mode = "unavailable"  # a change the survivor writes meanwhile, for every pool:
        # a write the frozen replica had in flight (a pool it was just taking) is then
        # refused, its resourceVersion no longer the stored one
        for n in names:
            wait_for(lambda n=n: pools.status(n).get("healthy") == 0, 4 * INTERVAL + 5, f"{n} down")
        resumed = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        # Back after a full Lease of waiting, the replica drives its pools again and says
        # so; before that it writes nothing (a write it had in flight when it froze
        # would land right away, with the health it saw then).
        wait_for(
            lambda: all(pools.status(n).get("drivenBy") == frozen for n in lost),
            2 * LEASE + 3 * INTERVAL + 10,
            "the resumed replica driving its pools again",
        )
        late = sorted((round(t - resumed, 2), p) for t, p, by in log.writes if by == frozen and t >= resumed)
        assert late, "the resumed replica's writes were not seen"
        assert late[0][0] >= LEASE * 0.8, f"the frozen replica wrote before a Lease had passed since it resumed: {late}"
        for n in lost:  # what it wrote is what it probes now, not what it saw before it froze
            wait_for(lambda n=n: pools.status(n).get("healthy") == 0, 4 * INTERVAL + 5, f"{n} still down")
        backends[0].mode = "ok"
        for n in lost:
            wait_for(lambda n=n: pools.status(n).get("healthy") == 1, 4 * INTERVAL + 5, f"{n} up again")
    finally:
        log.stop()


async def test_a_status_write_lands_only_on_the_version_it_was_computed_against(replicas, pools, k8s):
    """The race behind a frozen replica's late write, made deterministic: another replica
    writes the pool's status after this one's write passed the fence and before it is
    sent. The API server refuses it (its resourceVersion is no longer the stored one);
    the writer re-reads and asks the fence again, which now says no: nothing of the
    stale write lands. When the fence still says yes, the write is sent again, computed
    against what is stored, so it says everything it means (drivenBy too), not only what
    differs from what this writer last wrote."""
    custom = kubernetes.client.CustomObjectsApi(k8s)
    pools.create("w", {"discovery": {"static": {"endpoints": [{"name": "e", "address": "127.0.0.9", "port": 9}]}}})

    def write_as_other(status):
        custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, pools.namespace, api.PLURAL, "w", {"status": status}
        )

    fence_answers: list[bool] = []
    races = [0]

    def fence(pool):
        if not fence_answers:  # the other replica writes between this fence and the send
            races[0] += 1
            write_as_other({"drivenBy": "other", "healthy": 0, "total": 10 + races[0]})
            fence_answers.append(True)
            return True
        fence_answers.append(owned[0])
        return owned[0]

    owned = [False]
    writes = WriteQueue(fence=fence)
    writer = StatusWriter(k8s, writes, field_manager="test")
    try:
        mine = {"drivenBy": "me", "healthy": 1, "total": 1}
        created = pools.get("w")
        with pytest.raises(NotOwnedError):
            await writer.write(pools.namespace, "w", mine, {}, created["metadata"]["resourceVersion"])
        assert fence_answers == [True, False] and writer.conflicts == 1
        stored = pools.status("w")
        assert (stored.get("drivenBy"), stored.get("healthy"), stored.get("total")) == ("other", 0, 11)

        owned[0] = True  # the same race while this replica still owns the pool
        fence_answers.clear()
        assert await writer.write(pools.namespace, "w", mine, {}, created["metadata"]["resourceVersion"])
        assert fence_answers == [True, True] and writer.conflicts == 2
        stored = pools.status("w")
        assert (stored["drivenBy"], stored["healthy"], stored["total"]) == ("me", 1, 1)

        write_as_other({"drivenBy": "other"})  # what this writer last wrote is no longer stored
        assert await writer.write(pools.namespace, "w", mine, {}, None)
        assert pools.status("w")["drivenBy"] == "me" and writer.conflicts == 3
    finally:
        await writes.close()


async def test_an_object_apply_lands_only_on_the_version_last_applied(replicas, pools, k8s):
    """The same race for a published object (here a ConfigMap): another replica applies
    it after this one's apply passed the fence and before it is sent. The stale apply is
    refused; applied again only if the fence still says yes."""
    core = kubernetes.client.CoreV1Api(k8s)

    def config_map(value):
        meta = {"name": "race", "namespace": pools.namespace, "labels": {POOL_LABEL: "w"}}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"v": value}}

    def apply_as_other(value):
        core.patch_namespaced_config_map(
            "race", pools.namespace, config_map(value), field_manager=FIELD_MANAGER, force=True, _content_type=APPLY
        )

    raced, owned = [False], [True]

    def fence(pool):
        if not raced[0]:  # the other replica applies between this fence and the send
            raced[0] = True
            apply_as_other(f"other-{publisher.conflicts}")
            return True
        return owned[0]

    writes = WriteQueue(fence=lambda pool: True)
    publisher = Publisher(k8s, writes)
    stored = lambda: core.read_namespaced_config_map("race", pools.namespace).data["v"]  # noqa: E731
    try:
        assert await publisher.apply([config_map("1")]) == []
        writes.fence, owned[0] = fence, False
        with pytest.raises(NotOwnedError):
            await publisher.apply([config_map("2")])
        assert (stored(), publisher.conflicts) == ("other-0", 1)

        raced[0], owned[0] = False, True  # the same race while this replica still owns the pool
        assert await publisher.apply([config_map("3")]) == []
        assert (stored(), publisher.conflicts) == ("3", 2)
    finally:
        await writes.close()


def test_a_replica_stopped_gracefully_gives_its_pools_up_at_once(replicas, pools, http_backends, k8s):
    """SIGTERM (a pod deleted, a rollout): the replica stops its pools, deletes its Lease
    and exits by itself; the other replica takes the pools without waiting for the Lease
    to run out."""
    ops = {i: replicas(i) for i in ("rep-a", "rep-b")}
    backends = http_backends(1)
    names = [f"g{i}" for i in range(12)]
    create_pools(pools, backends, names)
    wait_until_each_drives_some(pools, names, ops)
    leaving = "rep-b"
    moved = [n for n, by in current_drivers(pools, names).items() if by == leaving]
    proc = ops[leaving].proc
    assert proc is not None
    leases = kubernetes.client.CoordinationV1Api(k8s)
    lease_names = {lease.metadata.name for lease in leases.list_namespaced_lease("default").items}
    assert any(leaving in n for n in lease_names), lease_names
    stopped = time.monotonic()
    proc.terminate()
    code = proc.wait(timeout=60)
    exited = time.monotonic() - stopped
    ops[leaving].proc = None
    assert code == 0, f"the replica did not exit cleanly ({code}); log:\n{ops[leaving].log.read_text()[-3000:]}"
    assert "deleted Lease" in ops[leaving].log.read_text()
    lease_names = {lease.metadata.name for lease in leases.list_namespaced_lease("default").items}
    assert not any(leaving in n for n in lease_names), lease_names
    try:
        wait_for(
            lambda: all(pools.status(n).get("drivenBy") == "rep-a" for n in moved),
            LEASE + 3 * INTERVAL + 10,
            "the stopped replica's pools taken over",
        )
    except AssertionError as exc:
        left = {n: pools.status(n).get("drivenBy") for n in moved}
        logs = {r: ops[r].log.read_text()[-8000:] for r in ops}
        raise AssertionError(f"{exc}; drivenBy now {left}; logs: {logs['rep-a']}\n---\n{logs[leaving]}") from exc
    took = time.monotonic() - stopped
    print(
        f"graceful stop: exited after {exited:.1f}s, {len(moved)} pools taken over after {took:.1f}s (lease {LEASE}s)"
    )


def test_deleting_pools_over_two_replicas_leaves_the_other_replica_quiet(replicas, pools, http_backends, k8s):
    """Only the replica that drives a pool cleans it up; the other's delete handler waits
    instead of failing, so it writes nothing to the pool (each kopf retry PATCHed the
    pool twice: at 1,000 pools that was a storm that starved the Lease renewals)."""
    ops = {i: replicas(i) for i in ("rep-a", "rep-b")}
    backends = http_backends(1)
    names = [f"d{i}" for i in range(12)]
    create_pools(pools, backends, names)
    wait_until_each_drives_some(pools, names, ops)
    api = kubernetes.client.CustomObjectsApi(k8s)
    seen: list[dict] = []  # the pools' annotations in every version stored while they were deleted
    stop = threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        stream = w.stream(
            api.list_namespaced_custom_object,
            "clusterpool.dev",
            "v1alpha1",
            pools.namespace,
            "clusterpools",
            timeout_seconds=60,
        )
        try:
            for ev in stream:
                meta = ev["object"]["metadata"]
                if meta.get("deletionTimestamp"):
                    seen.append({"name": meta["name"], **(meta.get("annotations") or {})})
                if stop.is_set():
                    break
        except urllib3.exceptions.ProtocolError:
            if not stop.is_set():  # cut while the test still reads it
                raise
            # else: the test is over and the control plane went away under the open watch

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(1)  # the watch is open
    for n in names:
        pools.delete(n)
    try:
        wait_for(lambda: not set(pools.names()) & set(names), 30, "every pool removed")
    finally:
        stop.set()
    assert {s["name"] for s in seen} == set(names)  # the watch saw each deletion
    retried = [s for s in seen if "driven by" in s.get("clusterpool.dev/remove-published", "")]
    assert not retried, retried
    for op in ops.values():
        assert "failed temporarily" not in op.log.read_text()


def published_object_writes(k8s) -> float:
    """Writes the API server answered so far to Services, EndpointSlices and ConfigMaps
    (its own apiserver_request_total)."""
    method, url, headers, body, post = k8s.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    answer = k8s.call_api(method, url, headers, body, post, _request_timeout=30)
    answer.read()
    total = 0.0
    for line in answer.data.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("verb") in ("APPLY", "PATCH", "POST", "PUT") and labels.get("resource") in (
                "services",
                "endpointslices",
                "configmaps",
            ):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_lone_replica_that_lost_its_lease_for_a_moment_publishes_nothing_again(replicas, pools, http_backends, k8s):
    """With no other replica, nobody can have driven the pools while this one's Lease was
    uncertain (its status still names it): it resumes without applying every pool's
    Service, EndpointSlices and ConfigMap again (at 1,000 pools a Lease blip of a busy
    replica did that, thousands of writes, in the middle of a detection)."""
    solo = replicas("rep-solo")
    backends = http_backends(1)
    names = [f"s{i}" for i in range(6)]
    create_pools(pools, backends, names)
    for n in names:
        pools.wait_ready(n, healthy=1, timeout=60)
    wait_for(lambda: set(current_drivers(pools, names).values()) == {"rep-solo"}, 60, "the replica driving its pools")
    counts = [published_object_writes(k8s)]

    def quiet() -> bool:  # the pools' objects are all published: no write for two rounds
        time.sleep(2 * INTERVAL)
        counts.append(published_object_writes(k8s))
        return counts[-1] == counts[-2]

    wait_for(quiet, 60, "the pools' objects all published")
    before = counts[-1]
    proc = solo.proc
    assert proc is not None
    mark = solo.log_mark()
    os.kill(proc.pid, signal.SIGSTOP)  # past the renew deadline (2/3 of the Lease)
    try:
        leases = kubernetes.client.CoordinationV1Api(k8s)
        lease = next(x for x in leases.list_namespaced_lease("default").items if x.spec.holder_identity == "rep-solo")
        # a new version, so the first renewal after the freeze fails (409) and the Lease
        # stays uncertain for a renewal period, long enough for the rounds to see it
        leases.patch_namespaced_lease(lease.metadata.name, "default", {"metadata": {"labels": {"touched": "yes"}}})
        time.sleep(LEASE * 0.8)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: "drives its share" in solo.log_since(mark), LEASE + 10, "the replica driving again")
    paused = solo.log_since(mark)
    assert "does not hold its Lease" in paused, paused[-3000:]
    time.sleep(3 * INTERVAL)  # every pool's rounds ran after the pause
    assert published_object_writes(k8s) == before
    assert set(current_drivers(pools, names).values()) == {"rep-solo"}
    # and it still publishes what changes
    backends[0].mode = "unavailable"
    for n in names:
        wait_for(lambda n=n: pools.status(n).get("healthy") == 0, 4 * INTERVAL + 5, f"{n} down")
    wait_for(lambda: published_object_writes(k8s) > before, 4 * INTERVAL + 5, "the objects follow the health")
