"""PoolRunner with real backends and an in-memory object body: what it writes and emits.

The Recorder stands where the API server would: each test checks what the runner sent
there (status writes, Events, reads), never the runner's own attributes."""

import asyncio
import contextlib
import logging
import socket

import pytest

from backends import HTTPBackend, free_port
from clusterpool.k8s.writes import NotOwnedError
from clusterpool.pool_status import InformationalPace
from clusterpool.runner import PoolRunner, PoolWiring
from clusterpool.stages import Fence

LOG = logging.getLogger("t")


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
    """What reached the API server, in order: status writes, Events, and quorum reads."""

    def __init__(self, stored=None):
        self.writes, self.events, self.timeline = [], [], []
        self.stored = stored  # the status the API server holds, for quorum reads

    async def write(self, status, stored, version):
        self.writes.append(status)
        self.timeline.append(("write", status))
        return True

    def emit(self, type_, reason, message):
        self.events.append((type_, reason, message))
        self.timeline.append(("event", reason, message))

    async def read(self):
        self.timeline.append(("read",))
        return self.stored


def runner_for(body, rec, **wiring):
    return PoolRunner(body, PoolWiring(rec.write, rec.emit, LOG, **wiring))


async def test_writes_status_once_while_nothing_changes(backends):
    rec = Recorder()
    runner = runner_for(body_for(backends), rec)
    await runner.run_once()  # written as the probes answer (one or two batches)
    first_round = len(rec.writes)
    assert rec.writes[-1]["healthy"] == 2
    for _ in range(2):
        await runner.run_once()
    assert len(rec.writes) == first_round  # nothing new, nothing written
    assert "EndpointHealthy" not in [e[1] for e in rec.events]  # healthy from the first probe: no change
    ready = [e for e in rec.events if e[1] == "PoolReady"]  # once, as soon as the first endpoint answered
    assert len(ready) == 1 and ready[0][2] in ("1 of 2 endpoints healthy", "2 of 2 endpoints healthy")


@pytest.mark.parametrize("landed", [False, True], ids=["write-lost", "answer-lost"])
async def test_a_status_write_that_failed_posts_its_ready_event_once(backends, landed):
    """The API server timed out on the write that made the pool Ready, either before
    storing it or after (the answer lost): PoolReady is posted exactly once, once the
    status saying so is stored, not once per attempt, nor never."""
    body = body_for(backends)

    class FailingFirst(Recorder):
        failures = 2

        async def write(self, status, stored, version):
            if self.failures:
                self.failures -= 1
                if landed:
                    body["status"] = status  # stored, and seen by the watch
                self.timeline.append(("failed write", status))
                raise TimeoutError("the API server did not answer")
            return await super().write(status, stored, version)

    rec = FailingFirst()
    runner = runner_for(body, rec)
    for _ in range(4):
        with contextlib.suppress(TimeoutError):
            await runner.run_once()
    ready = [i for i, e in enumerate(rec.timeline) if e[:2] == ("event", "PoolReady")]
    assert len(ready) == 1, rec.timeline
    first_write = next(i for i, e in enumerate(rec.timeline) if e[0] == "failed write")
    assert ready[0] > first_write  # announced once stored


async def test_an_invalid_spec_keeps_the_last_valid_one(backends):
    rec = Recorder()
    body = body_for(backends)
    runner = runner_for(body, rec)
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
    runner = runner_for(body, rec)
    await runner.run_once()
    ready = next(c for c in rec.writes[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")


async def test_a_pool_whose_name_cannot_name_its_service_runs_nothing(backends):
    """Stored before the CRD checked metadata.name: refused by the operator, never Ready."""
    rec = Recorder()
    body = body_for(backends)
    body["metadata"]["name"] = "llm.pool"
    runner = runner_for(body, rec)
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
    runner = runner_for(body_for(backends, intervalJitterPercent=50), rec, rand=lambda: 1.0)
    await runner.run_once()
    assert runner.next_delay(0.5) == pytest.approx(2 * 1.5 - 0.5)


class HangingPublisher:
    """A sink's API server that accepts and never answers: it counts the applies begun
    and ended."""

    def __init__(self):
        self.begun = self.ended = 0

    async def apply(self, objs, adopt=False):
        self.begun += 1
        await asyncio.sleep(3600)
        self.ended += 1

    async def prune_slices(self, namespace, pool, keep):
        await asyncio.sleep(3600)

    async def delete_all(self, namespace, pool, uid):
        pass


async def test_a_hanging_sink_delays_neither_detection_nor_the_status(backends):
    rec = Recorder()
    publisher = HangingPublisher()
    runner = runner_for(body_for(backends, unhealthyThreshold=1), rec, publisher=publisher, sink_timeout=0.5)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(lambda: rec.writes and rec.writes[-1]["healthy"] == 2)  # written although publishing hangs
        await wait_until(lambda: publisher.begun == 1)
        backends[1].stop()
        runner.wake("test: probe now")
        await wait_until(lambda: rec.writes[-1]["healthy"] == 1)
        assert (publisher.begun, publisher.ended) == (1, 0)  # the first apply still hangs
        # the sink's own timeout passes: its condition says so
        await wait_until(lambda: ("False", "Timeout") in conditions_of(rec.writes[-1], "Published"))
    finally:
        runner.stop()
        await task


def conditions_of(status, type_):
    return [(c["status"], c["reason"]) for c in status["conditions"] if c["type"] == type_]


async def wait_until(condition, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


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
        runner = runner_for(body, rec)
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
    runner = runner_for(body_for(backends, unhealthyThreshold=1), rec, fence=Fence(may_drive=lambda: allowed[0]))
    await runner.run_once()
    writes, events = len(rec.writes), len(rec.events)
    allowed[0] = False  # e.g. the API server is away and the Lease cannot be renewed
    backends[1].stop()
    await runner.run_once()
    assert (len(rec.writes), len(rec.events)) == (writes, events)  # nothing written or posted
    allowed[0] = True
    await runner.run_once()
    assert rec.writes[-1]["healthy"] == 1
    # the Event of the transition the paused round saw (it kept probing), posted now
    assert [e[1] for e in rec.events[events:]].count("EndpointUnhealthy") == 1


async def test_a_transition_in_the_first_round_after_a_pause_is_written_after_the_resume(backends):
    """The first round after a pause finds a transition: nothing is written or posted
    before the runner has read what the API server holds (another replica may have driven
    the pool meanwhile), the Events held in the pause go out before the new ones, and the
    Ready change is judged against the stored status, not this runner's own last write."""
    body = body_for(backends, unhealthyThreshold=1)
    rec = Recorder()
    allowed = [True]
    runner = runner_for(body, rec, fence=Fence(lambda: allowed[0], identity="me", read_stored_status=rec.read))
    await runner.run_once()
    await runner.run_once()
    assert rec.writes[-1]["healthy"] == 2
    allowed[0] = False
    backends[1].stop()
    await runner.run_once()  # ep-1 Unhealthy: its Event held
    # meanwhile another replica drove the pool and found it not ready (its Event posted by it)
    ready = {"type": "Ready", "status": "False", "reason": "NoHealthyEndpoints", "message": "0 of 2 endpoints healthy"}
    rec.stored = {**rec.writes[-1], "drivenBy": "other"}
    rec.stored["conditions"] = [ready if c["type"] == "Ready" else c for c in rec.stored["conditions"]]
    body["status"] = rec.stored
    allowed[0] = True
    backends[0].stop()
    mark = len(rec.timeline)
    await runner.run_once()  # ep-0 Unhealthy in the first round after the pause
    after = rec.timeline[mark:]
    assert after[0] == ("read",), after[:3]  # resumed before anything was written or posted
    unhealthy = [e[2] for e in after if e[0] == "event" and e[1] == "EndpointUnhealthy"]
    assert [m.split()[1] for m in unhealthy] == ["ep-1", "ep-0"], unhealthy  # the held one first
    assert "PoolNotReady" not in [e[1] for e in after if e[0] == "event"]  # the stored status said so already
    written = [e[1] for e in after if e[0] == "write"]
    assert written and written[-1]["healthy"] == 0 and written[-1]["drivenBy"] == "me"


async def test_after_a_pause_it_compares_with_what_another_replica_wrote(backends):
    """While this replica may not write, another may drive the pool; when this one drives
    it again, an unchanged health must still be written (drivenBy, and the objects), not
    skipped because it equals this runner's own last write."""
    rec = Recorder()
    forgotten = []
    allowed = [True]
    body = body_for(backends)
    fence = Fence(lambda: allowed[0], identity="me", forget_written=lambda: forgotten.append(1))
    runner = runner_for(body, rec, fence=fence)
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
    rec = Recorder(stored={})
    forgotten = []
    allowed = [True]
    body = body_for(backends)
    fence = Fence(
        lambda: allowed[0], identity="me", forget_written=lambda: forgotten.append(1), read_stored_status=rec.read
    )
    runner = runner_for(body, rec, fence=fence)

    def reads():
        return rec.timeline.count(("read",))

    await runner.run_once()
    await runner.run_once()  # both endpoints answered twice: the health is settled
    rec.stored.update(rec.writes[-1])
    body["status"] = dict(rec.stored)
    writes = len(rec.writes)
    allowed[0] = False
    await runner.run_once()
    allowed[0] = True
    await runner.run_once()
    assert (len(rec.writes), forgotten, reads()) == (writes, [], 1)
    await runner.run_once()  # resumed once: no read per round
    assert reads() == 1

    allowed[0] = False  # a second pause, in which another replica wrote (kopf has not seen it)
    await runner.run_once()
    rec.stored["drivenBy"] = "other"
    allowed[0] = True
    await runner.run_once()
    assert forgotten == [1] and reads() == 2
    assert len(rec.writes) == writes + 1 and rec.writes[-1]["drivenBy"] == "me"


async def test_a_status_another_replica_wrote_is_compared_afresh_even_without_a_pause_seen(backends):
    """The rounds may miss the time this replica could not write (a round longer than the
    hand-over); the stored status naming another driver is enough to compare afresh."""
    rec = Recorder()
    body = body_for(backends)
    runner = runner_for(body, rec, fence=Fence(identity="me"))
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
    wiring = PoolWiring(write, rec.emit, LOG, fence=Fence(forget_written=lambda: forgotten.append(1)))
    runner = PoolRunner(body_for(backends), wiring)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(lambda: refused)
        runner.wake("test: write again now")
        await wait_until(lambda: rec.writes)
    finally:
        runner.stop()
        await task
    assert forgotten == [1]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_change_of_counters_alone_waits_for_the_next_health_change(backends):
    rec = Recorder()
    runner = runner_for(body_for(backends, unhealthyThreshold=2), rec)
    await runner.run_once()
    writes = len(rec.writes)
    backends[1].stop()
    await runner.run_once()  # one failure: only consecutiveFailures and the message moved
    assert len(rec.writes) == writes
    await runner.run_once()  # the second makes it Unhealthy: written, with the counters
    ep1 = next(e for e in rec.writes[-1]["endpoints"] if e["name"] == "ep-1")
    assert (ep1["health"], ep1["consecutiveFailures"], ep1["reason"]) == ("Unhealthy", 2, "ConnectionRefused")


async def test_counters_alone_are_written_when_due_and_the_shared_budget_has_a_token(backends):
    """Informational fields alone (counters, messages, latencies) are written at most every
    INFORMATIONAL_EVERY, and only with a token of the budget all pools share."""
    rec = Recorder()
    tokens = [False]
    due = InformationalPace(lambda: tokens[0], every=0.0)  # always due: the budget decides
    runner = runner_for(body_for(backends, unhealthyThreshold=3), rec, informational=due)
    await runner.run_once()
    writes = len(rec.writes)
    backends[1].stop()
    await runner.run_once()  # one failure of three: only the counters and the message moved
    assert len(rec.writes) == writes  # due, but no token
    tokens[0] = True
    await runner.run_once()
    assert len(rec.writes) == writes + 1
    ep1 = next(e for e in rec.writes[-1]["endpoints"] if e["name"] == "ep-1")
    assert (ep1["health"], ep1["consecutiveFailures"]) == ("Healthy", 2)


async def test_counters_alone_wait_for_their_pace(backends):
    """Not due yet (the pace has not passed since the last write): not written, even with
    a token to spare."""
    rec = Recorder()
    runner = runner_for(body_for(backends, unhealthyThreshold=3), rec, informational=InformationalPace(lambda: True))
    await runner.run_once()
    writes = len(rec.writes)
    backends[1].stop()
    await runner.run_once()
    await runner.run_once()
    assert len(rec.writes) == writes
