"""The Consul sink against a real `consul agent -dev`: a spec change while a sync is under
way, and a stopped loop leaving no connection to Consul open."""

import asyncio
import logging
import os
import re

import httpx
import pytest

import consul as consul_script
from backends import HTTPBackend, free_port
from clusterpool.runner import PoolRunner, PoolWiring

LOG = logging.getLogger("t")


@pytest.fixture(scope="module")
def consul_agent(tmp_path_factory):
    agent = consul_script.up(tmp_path_factory.mktemp("consul"), http_port=free_port())
    yield agent
    consul_script.down(agent)


@pytest.fixture
def backends():
    port = free_port()
    bs = [HTTPBackend(f"127.0.0.{i}", port).start() for i in (21, 22, 23, 24)]
    yield bs
    for b in bs:
        b.stop()


class SlowPath:
    """A TCP relay on loopback in front of the agent that holds what the client sends for
    `delay` seconds before passing it on (a slow network path): each Consul call takes
    that long, so a sync of several instances is under way for a while."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.delay = (host, int(port)), delay
        self.server: asyncio.Server | None = None
        self.sent = 0  # requests (chunks) the client sent through it

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer, self.delay, True), self._pipe(up_reader, writer, 0.0))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, count: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                self.sent += count
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class Recorder:
    def __init__(self):
        self.writes, self.events = [], []

    async def write(self, status, stored, version):
        self.writes.append(status)
        return True

    def emit(self, type_, reason, message):
        self.events.append((type_, reason, message))


def body_for(backends, consul_address, service, tags):
    eps = [{"name": f"ep-{i}", "address": b.host, "port": b.port} for i, b in enumerate(backends)]
    return {
        "metadata": {"name": service, "namespace": "ns", "generation": 1, "uid": "u-1"},
        "spec": {
            "discovery": {"static": {"endpoints": eps}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}},
            "publish": {"consul": {"address": consul_address, "service": service, "tags": tags}},
        },
    }


def instances(agent, service):
    r = httpx.get(f"{agent.http}/v1/agent/services", params={"filter": f'Service == "{service}"'})
    r.raise_for_status()
    return {s["Meta"]["clusterpool-endpoint"]: s["Tags"] for s in r.json().values()}


def consul_condition(status):
    return next((c for c in status["conditions"] if c["type"] == "PublishedToConsul"), None)


async def wait_until(condition, timeout=20.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := condition()):
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not met in {timeout}s"
        await asyncio.sleep(0.05)
    return result


async def test_a_spec_change_during_a_sync_neither_breaks_it_nor_reports_a_failure(consul_agent, backends):
    """publish.consul changes while the sink is registering the instances (each call slow):
    the sync under way finishes, the change applies to the next one, and the status never
    shows PublishedToConsul failing or missing, nor is a ConsulPublishFailed Event posted."""
    rec = Recorder()
    path = SlowPath(consul_agent.http, 0.3)
    async with path as address:
        slow = path
        body = body_for(backends, address, "race", ["a"])
        runner = PoolRunner(body, PoolWiring(rec.write, rec.emit, LOG))
        task = asyncio.create_task(runner.run())
        try:
            await wait_until(lambda: consul_condition(rec.writes[-1]) if rec.writes else None, what="published once")
            assert consul_condition(rec.writes[-1])["status"] == "True"
            sent = slow.sent
            runner.wake("test: a round")  # its sync refreshes the four checks, one slow call each
            await wait_until(lambda: slow.sent > sent, what="the next sync under way")
            body["spec"]["publish"]["consul"]["tags"] = ["b"]
            body["metadata"]["generation"] = 2
            runner.wake("test: the spec changed")
            await wait_until(
                lambda: instances(consul_agent, "race") == {f"ep-{i}": ["b"] for i in range(4)},
                what="every instance re-registered with the new tags",
            )
        finally:
            runner.stop()
            await task
    first = next(i for i, w in enumerate(rec.writes) if consul_condition(w) is not None)
    seen = [consul_condition(w) for w in rec.writes[first:]]
    assert all(c is not None and c["status"] == "True" for c in seen), [c and (c["status"], c["reason"]) for c in seen]
    assert "ConsulPublishFailed" not in [e[1] for e in rec.events]


def open_sockets_to(port: int) -> int:
    """This process's TCP sockets whose remote end is `port` on loopback, in any state
    (a connection the peer closed stays open here until it is closed here)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(m.group(1))
    count = 0
    with open("/proc/self/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1
    return count


async def test_a_stopped_loop_leaves_no_connection_to_consul_open(consul_agent, backends):
    """Each stop (a pool deleted, handed over to another replica) closes the Consul client
    the loop published with."""
    port = int(consul_agent.http.rsplit(":", 1)[1])
    before = open_sockets_to(port)
    for round_ in range(3):
        rec = Recorder()
        runner = PoolRunner(
            body_for(backends, consul_agent.http, f"leak-{round_}", []), PoolWiring(rec.write, rec.emit, LOG)
        )
        task = asyncio.create_task(runner.run())
        try:
            await wait_until(
                lambda rec=rec: rec.writes and (c := consul_condition(rec.writes[-1])) and c["status"] == "True",
                what="published to Consul",
            )
            assert open_sockets_to(port) > before  # the client it publishes with is connected
        finally:
            runner.stop()
            await task
    await wait_until(lambda: open_sockets_to(port) <= before, 5, "every connection to Consul closed")
