"""PoolRunner with real backends and an in-memory object body: what it writes and emits."""

import logging

import pytest

from backends import HTTPBackend, free_port
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

    async def write(self, status):
        self.writes.append(status)
        return True

    def emit(self, type_, reason, message):
        self.events.append((type_, reason, message))


async def test_writes_status_once_while_nothing_changes(backends):
    rec = Recorder()
    runner = PoolRunner(body_for(backends), rec.write, rec.emit, logging.getLogger("t"))
    for _ in range(3):
        await runner.run_once()
    assert len(rec.writes) == 1
    assert rec.writes[0]["healthy"] == 2
    assert [e[1] for e in rec.events].count("EndpointHealthy") == 2
    assert ("Normal", "PoolReady", "2 of 2 endpoints healthy") in rec.events


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


async def test_jitter_stretches_the_interval_within_its_bound(backends):
    rec = Recorder()
    runner = PoolRunner(
        body_for(backends, intervalJitterPercent=50), rec.write, rec.emit, logging.getLogger("t"), rand=lambda: 1.0
    )
    await runner.run_once()
    assert runner.next_delay(0.5) == pytest.approx(2 * 1.5 - 0.5)
