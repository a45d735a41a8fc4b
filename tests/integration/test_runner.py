"""PoolRunner with real backends and an in-memory object body: what it writes and emits."""

import asyncio
import logging
import socket

import pytest

from backends import HTTPBackend, free_port
from clusterpool.k8s.writes import NotOwnedError
from clusterpool.runner import PoolRunner


@pytest.fixture
def backends():
    port = free_port()
    bs = [HTTPBackend(f"127.0.0.{i}", port).start() for i in (7, 8)]
    yield bs
    for b in bs:
        b.stop()


def body_for(backends, generation=1, **check):
    eps = [{"name": f"ep-{i}", "address": b.host, "port": b.port} for i, b in enumerate(backends)]
    hc = {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}, **check}
    return {
        "metadata": {"name": "p", "namespace": "ns", "generation": generation},
        "spec": {"discovery": {"static": {"endpoints": eps}}, "healthCheck": hc},
    }


class Recorder:
    def __init__(self):
        self.writes, self.events = [], []

    async def write(self, status, stored, version):
        self.writes.append(status)
        return True

    def emit(self, type_, reason, message):
        self.events.append((type_, reason, message))


async def test_writes_status_once_while_nothing_changes(backends):
    rec = Recorder()
    runner = PoolRunner(body_for(backends), rec.write, rec.emit, logging.getLogger("t"))
    await runner.run_once()  # written as the probes answer (one or two batches)
    first_round = len(rec.writes)
    assert rec.writes[-1]["healthy"] == 2
    for _ in range(2):
        await runner.run_once()
    assert len(rec.writes) == first_round  # nothing new, nothing written
    assert "EndpointHealthy" not in [e[1] for e in rec.events]  # healthy from the first probe: no change
    ready = [e for e in rec.events if e[1] == "PoolReady"]  # once, as soon as the first endpoint answered
    assert len(ready) == 1 and ready[0][2] in ("1 of 2 endpoints healthy", "2 of 2 endpoints healthy")


async def test_an_invalid_spec_keeps_the_last_valid_one(backends):
    rec = Recorder()
    body = body_for(backends)
    runner = PoolRunner(body, rec.write, rec.emit, logging.getLogger("t"))
    await runner.run_once()
    body["metadata"]["generation"] = 2
    body["spec"]["healthCheck"]["timeoutSeconds"] = 5  # not below the interval: invalid
    await runner.run_once()
    last = rec.writes[-1]
    valid = next(c for c in last["conditions"] if c["type"] == "SpecValid")
    assert valid["status"] == "False" and "timeoutSeconds must be less than intervalSeconds" in valid["message"]
    assert last["healthy"] == 2 and last["total"] == 2  # still probing with the last valid spec
    assert any(e[:2] == ("Warning", "InvalidSpec") for e in rec.events)
    # fixing it clears the condition
    body["metadata"]["generation"] = 3
    body["spec"]["healthCheck"]["timeoutSeconds"] = 1
    await runner.run_once()
    assert next(c for c in rec.writes[-1]["conditions"] if c["type"] == "SpecValid")["status"] == "True"


async def test_a_pool_that_never_had_a_valid_spec_is_not_ready(backends):
    rec = Recorder()
    body = body_for(backends)
    body["spec"]["discovery"] = {}
    runner = PoolRunner(body, rec.write, rec.emit, logging.getLogger("t"))
    await runner.run_once()
    ready = next(c for c in rec.writes[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")


async def test_a_pool_whose_name_cannot_name_its_service_runs_nothing(backends):
    """Stored before the CRD checked metadata.name: refused by the operator, never Ready."""
    rec = Recorder()
    body = body_for(backends)
    body["metadata"]["name"] = "llm.pool"
    runner = PoolRunner(body, rec.write, rec.emit, logging.getLogger("t"))
    await runner.run_once()
    conditions = {c["type"]: c for c in rec.writes[-1]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "InvalidSpec")
    assert conditions["SpecValid"]["status"] == "False"
    assert "metadata.name must be a DNS-1035 label" in conditions["SpecValid"]["message"]
    assert "'llm.pool'" in conditions["SpecValid"]["message"]
    assert rec.writes[-1]["total"] == 0  # nothing probed, nothing published
    assert any(e[:2] == ("Warning", "InvalidSpec") and "metadata.name" in e[2] for e in rec.events)


async def test_jitter_stretches_the_interval_within_its_bound(backends):
    rec = Recorder()
    runner = PoolRunner(
        body_for(backends, intervalJitterPercent=50), rec.write, rec.emit, logging.getLogger("t"), rand=lambda: 1.0
    )
    await runner.run_once()
    assert runner.next_delay(0.5) == pytest.approx(2 * 1.5 - 0.5)


class HangingPublisher:
    """A sink that never answers (an API server that accepts and stalls)."""

    async def apply(self, objs, adopt=False):
        await asyncio.sleep(3600)

    async def prune_slices(self, namespace, pool, keep):
        await asyncio.sleep(3600)

    async def delete_all(self, namespace, pool, uid):
        pass


async def test_a_hanging_sink_delays_neither_detection_nor_the_status(backends):
    rec = Recorder()
    runner = PoolRunner(
        body_for(backends, unhealthyThreshold=1),
        rec.write,
        rec.emit,
        logging.getLogger("t"),
        publisher=HangingPublisher(),
        sink_timeout=0.5,
    )
    try:
        await runner.run_once()
        assert rec.writes[-1]["healthy"] == 2  # written although publishing hangs
        backends[1].stop()
        await runner.run_once()
        assert runner.objects.syncs == 0  # the round did not wait for the sink, still in its first sync
        assert rec.writes[-1]["healthy"] == 1
        await asyncio.sleep(0.7)  # the sink's own timeout passes: its condition says so
        await runner.run_once()
        published = next(c for c in rec.writes[-1]["conditions"] if c["type"] == "Published")
        assert (published["status"], published["reason"]) == ("False", "Timeout")
    finally:
        await runner.objects.close()


async def test_a_refused_endpoint_is_reported_before_a_hanging_probe_times_out(backends):
    silent = socket.socket()
    silent.bind(("127.0.0.9", 0))
    silent.listen(16)  # the kernel accepts connections; nobody ever answers
    try:
        backends[1].stop()
        body = body_for(backends)
        body["spec"]["discovery"]["static"]["endpoints"].append(
            {"name": "silent", "address": "127.0.0.9", "port": silent.getsockname()[1]}
        )
        rec = Recorder()
        runner = PoolRunner(body, rec.write, rec.emit, logging.getLogger("t"))
        await runner.run_once()
        health = [{e["name"]: e["health"] for e in w["endpoints"]} for w in rec.writes]
        # written while the silent endpoint's probe was still waiting for its timeout
        assert {"ep-0": "Healthy", "ep-1": "Unhealthy", "silent": "Unknown"} in health
        assert health[-1] == {"ep-0": "Healthy", "ep-1": "Unhealthy", "silent": "Unhealthy"}
    finally:
        silent.close()


async def test_while_it_may_not_write_it_keeps_probing_and_holds_its_events(backends):
    rec = Recorder()
    allowed = [True]
    runner = PoolRunner(body_for(backends, unhealthyThreshold=1), rec.write, rec.emit, logging.getLogger("t"))
    runner.may_drive = lambda: allowed[0]
    await runner.run_once()
    writes, events = len(rec.writes), len(rec.events)
    allowed[0] = False  # e.g. the API server is away and the Lease cannot be renewed
    backends[1].stop()
    await runner.run_once()
    assert runner.pool.health.of("ep-1").health == "Unhealthy"  # still probing
    assert (len(rec.writes), len(rec.events)) == (writes, events)  # but nothing written or posted
    allowed[0] = True
    await runner.run_once()
    assert rec.writes[-1]["healthy"] == 1
    assert "EndpointUnhealthy" in [e[1] for e in rec.events[events:]]  # the held Event, posted now


async def test_after_a_pause_it_compares_with_what_another_replica_wrote(backends):
    """While this replica may not write, another may drive the pool; when this one drives
    it again, an unchanged health must still be written (drivenBy, and the objects), not
    skipped because it equals this runner's own last write."""
    rec = Recorder()
    forgotten = []
    allowed = [True]
    body = body_for(backends)
    runner = PoolRunner(
        body, rec.write, rec.emit, logging.getLogger("t"), identity="me", forget_written=lambda: forgotten.append(1)
    )
    runner.may_drive = lambda: allowed[0]
    await runner.run_once()
    mine = rec.writes[-1]
    assert mine["drivenBy"] == "me"
    allowed[0] = False  # the Lease is uncertain; another replica takes the pool over and writes
    await runner.run_once()
    body["status"] = {**mine, "drivenBy": "other"}
    writes = len(rec.writes)
    await runner.run_once()
    assert len(rec.writes) == writes and not forgotten
    allowed[0] = True
    await runner.run_once()
    assert len(rec.writes) == writes + 1 and rec.writes[-1]["drivenBy"] == "me"
    assert forgotten == [1]  # the status writer and the object publisher compare afresh too
    await runner.run_once()
    assert len(rec.writes) == writes + 1 and forgotten == [1]


async def test_after_a_pause_no_one_else_wrote_in_it_keeps_what_it_knows_it_wrote(backends):
    """A pause in which no other replica drove the pool (its own Lease blipped, and the
    status the API server holds still names this replica): nothing is forgotten, and an
    unchanged health is not written again, so a busy replica's Lease blip costs one read
    per pool, not a re-publication of every pool. The read is the API server's, not
    kopf's copy of the body (which may lag a write of the other replica)."""
    rec = Recorder()
    forgotten, reads = [], []
    allowed = [True]
    body = body_for(backends)
    stored: dict = {}

    async def read_stored_status():
        reads.append(1)
        return stored

    runner = PoolRunner(
        body,
        rec.write,
        rec.emit,
        logging.getLogger("t"),
        identity="me",
        forget_written=lambda: forgotten.append(1),
        read_stored_status=read_stored_status,
    )
    runner.may_drive = lambda: allowed[0]
    await runner.run_once()
    await runner.run_once()  # both endpoints answered twice: the health is settled
    stored.update(rec.writes[-1])
    body["status"] = dict(stored)
    writes = len(rec.writes)
    allowed[0] = False
    await runner.run_once()
    allowed[0] = True
    await runner.run_once()
    assert (len(rec.writes), forgotten, len(reads)) == (writes, [], 1)
    await runner.run_once()  # resumed once: no read per round
    assert len(reads) == 1

    allowed[0] = False  # a second pause, in which another replica wrote (kopf has not seen it)
    await runner.run_once()
    stored["drivenBy"] = "other"
    allowed[0] = True
    await runner.run_once()
    assert forgotten == [1] and len(reads) == 2
    assert len(rec.writes) == writes + 1 and rec.writes[-1]["drivenBy"] == "me"


async def test_a_status_another_replica_wrote_is_compared_afresh_even_without_a_pause_seen(backends):
    """The rounds may miss the time this replica could not write (a round longer than the
    hand-over); the stored status naming another driver is enough to compare afresh."""
    rec = Recorder()
    body = body_for(backends)
    runner = PoolRunner(body, rec.write, rec.emit, logging.getLogger("t"), identity="me")
    await runner.run_once()
    mine = rec.writes[-1]
    body["status"] = {**mine, "drivenBy": "other"}
    writes = len(rec.writes)
    await runner.run_once()
    assert len(rec.writes) == writes + 1 and rec.writes[-1]["drivenBy"] == "me"


async def test_a_status_write_the_fence_refused_is_no_error_and_is_compared_afresh(backends, caplog):
    """The Lease became uncertain between the round's decision and the send: the write
    queue refuses it (NotOwnedError). That is not a failed round; the next write compares
    with what is stored, as after any pause."""
    rec = Recorder()
    refused, forgotten = [], []

    async def write(status, stored, version):
        if not refused:
            refused.append(status)
            raise NotOwnedError("not sent")
        return await rec.write(status, stored, version)

    caplog.set_level(logging.DEBUG)
    runner = PoolRunner(
        body_for(backends), write, rec.emit, logging.getLogger("t"), forget_written=lambda: forgotten.append(1)
    )
    task = asyncio.create_task(runner.run())
    for _ in range(200):
        if refused:
            break
        await asyncio.sleep(0.05)
    runner.wake.set()
    for _ in range(200):
        if rec.writes:
            break
        await asyncio.sleep(0.05)
    runner.stop()
    await task
    assert refused and rec.writes and forgotten == [1]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_change_of_counters_alone_waits_for_the_next_health_change(backends):
    rec = Recorder()
    runner = PoolRunner(body_for(backends, unhealthyThreshold=2), rec.write, rec.emit, logging.getLogger("t"))
    await runner.run_once()
    writes = len(rec.writes)
    backends[1].stop()
    await runner.run_once()  # one failure: only consecutiveFailures and the message moved
    assert runner.pool.health.of("ep-1").failures == 1
    assert len(rec.writes) == writes
    await runner.run_once()  # the second makes it Unhealthy: written, with the counters
    ep1 = next(e for e in rec.writes[-1]["endpoints"] if e["name"] == "ep-1")
    assert (ep1["health"], ep1["consecutiveFailures"], ep1["reason"]) == ("Unhealthy", 2, "ConnectionRefused")


async def test_counters_alone_are_written_when_due_and_the_shared_budget_has_a_token(backends):
    """Informational fields alone (counters, messages, latencies) are written at most every
    INFORMATIONAL_EVERY, and only with a token of the budget all pools share."""
    rec = Recorder()
    tokens = [False]
    runner = PoolRunner(
        body_for(backends, unhealthyThreshold=3),
        rec.write,
        rec.emit,
        logging.getLogger("t"),
        informational_budget=lambda: tokens[0],
    )
    await runner.run_once()
    writes = len(rec.writes)
    backends[1].stop()
    runner.informational_due = 0.0  # due
    await runner.run_once()  # one failure of three: only the counters and the message moved
    assert runner.pool.health.of("ep-1").failures == 1
    assert len(rec.writes) == writes  # due, but no token
    tokens[0] = True
    await runner.run_once()
    assert len(rec.writes) == writes + 1
    ep1 = next(e for e in rec.writes[-1]["endpoints"] if e["name"] == "ep-1")
    assert (ep1["health"], ep1["consecutiveFailures"]) == ("Healthy", 2)
