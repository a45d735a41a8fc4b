"""Probes against real servers on loopback: every outcome gets its reason."""

import asyncio
import time

import pytest

from backends import HTTPBackend, TCPBackend, free_port
from clusterpool.api import HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint, ProbeResult
from clusterpool.health.probes import (
    LATE,
    Deadline,
    OperatorLateError,
    Prober,
    _raise_if_late,
    parse_status_line,
    probe_batches,
    probe_http,
    probe_tcp,
)

CHECK = HTTPCheck()


@pytest.fixture
def backend():
    b = HTTPBackend("127.0.0.5", free_port()).start()
    yield b
    b.stop()


async def test_http_ok(backend):
    r = await probe_http(backend.host, backend.port, CHECK, 1.0)
    assert (r.ok, r.reason) == (True, "ProbeSucceeded") and r.latency_s > 0
    assert r.message == f"GET /health on {backend.host}:{backend.port}: HTTP 200"


async def test_http_unexpected_status(backend):
    backend.mode = "fail"
    r = await probe_http(backend.host, backend.port, CHECK, 1.0)
    assert (r.ok, r.reason) == (False, "UnexpectedStatus") and "HTTP 500, expected 200-299" in r.message
    r = await probe_http(backend.host, backend.port, HTTPCheck(expected_statuses=["500"]), 1.0)
    assert r.ok


async def test_http_hang_is_a_timeout(backend):
    backend.mode = "hang"
    r = await probe_http(backend.host, backend.port, CHECK, 0.3)
    assert (r.ok, r.reason) == (False, "Timeout") and "0.3s" in r.message


async def test_http_garbage_is_a_protocol_error(backend):
    backend.mode = "garbage"
    r = await probe_http(backend.host, backend.port, CHECK, 1.0)
    assert (r.ok, r.reason) == (False, "ProtocolError")


async def test_http_refused(backend):
    backend.stop()
    r = await probe_http(backend.host, backend.port, CHECK, 1.0)
    assert (r.ok, r.reason) == (False, "ConnectionRefused")


async def test_tcp_accepted_then_refused():
    b = TCPBackend("127.0.0.6", free_port()).start()
    try:
        assert (await probe_tcp(b.host, b.port, 1.0)).ok
    finally:
        b.stop()
    r = await probe_tcp(b.host, b.port, 1.0)
    assert (r.ok, r.reason) == (False, "ConnectionRefused")


def test_parse_status_line():
    assert parse_status_line(b"HTTP/1.1 204 No Content") == 204
    assert parse_status_line(b"HTTP/1.0 200") == 200
    for bad in (b"", b"SSH-2.0-OpenSSH", b"HTTP/1.1 2000 x", b"HTTP/2 200", b"HTTP/1.1 abc"):
        assert parse_status_line(bad) is None


from clusterpool.health.probes import HTTPProber  # noqa: E402


async def test_method_and_headers_are_sent(backend):
    check = HTTPCheck(method="POST", path="/v1/ping", headers=[{"name": "Authorization", "value": "Bearer t0k"}])
    r = await probe_http(backend.host, backend.port, check, 1.0)
    assert r.ok and r.message.startswith("POST /v1/ping")
    assert backend.last_method == "POST" and backend.last_headers["Authorization"] == "Bearer t0k"
    r = await probe_http(backend.host, backend.port, HTTPCheck(method="HEAD"), 1.0)
    assert r.ok and backend.last_method == "HEAD"


async def test_body_contains(backend):
    backend.body = b'{"status": "ready", "model": "llama"}'
    assert (await probe_http(backend.host, backend.port, HTTPCheck(body_contains='"ready"'), 1.0)).ok
    r = await probe_http(backend.host, backend.port, HTTPCheck(body_contains="loading-done"), 1.0)
    assert (r.ok, r.reason) == (False, "UnexpectedBody")


async def test_keep_alive_reuses_one_connection_and_survives_a_server_restart(backend):
    prober = HTTPProber(HTTPCheck(), 1.0)
    try:
        for _ in range(5):
            assert (await prober.probe(backend.host, backend.port)).ok
        assert backend.connections == 1
        backend.stop()  # the idle connection dies with the server
        backend.start()
        r = await prober.probe(backend.host, backend.port)
        assert r.ok, r.message
    finally:
        await prober.close()
    no_reuse = HTTPProber(HTTPCheck(keep_alive=False), 1.0)
    before = backend.connections
    for _ in range(3):
        assert (await no_reuse.probe(backend.host, backend.port)).ok
    assert backend.connections - before == 3


@pytest.fixture
def tls_backend(tmp_path):
    import controlplane  # the project's certificate helper: a CA and a serving cert for 127.0.0.1

    controlplane.make_certs(tmp_path)
    b = HTTPBackend("127.0.0.1", free_port(), tls=(str(tmp_path / "apiserver.crt"), str(tmp_path / "apiserver.key")))
    b.start()
    yield b
    b.stop()


async def test_https_verifies_certificates_unless_told_not_to(tls_backend):
    r = await probe_http(tls_backend.host, tls_backend.port, HTTPCheck(scheme="HTTPS"), 2.0)
    assert (r.ok, r.reason) == (False, "TLSError") and "certificate" in r.message
    r = await probe_http(tls_backend.host, tls_backend.port, HTTPCheck(scheme="HTTPS", insecure_skip_verify=True), 2.0)
    assert r.ok, r.message
    r = await probe_http(tls_backend.host, tls_backend.port, HTTPCheck(), 2.0)  # plain HTTP to a TLS port
    assert not r.ok


async def test_composite_modes(backend):
    closed_port = free_port()

    def composite(mode, *checks):
        return HealthCheck(composite={"mode": mode, "checks": list(checks)}, interval_seconds=5, timeout_seconds=1)

    http = {"name": "api", "http": {}}
    tcp_ok = {"name": "port", "tcp": {}}
    tcp_bad = {"name": "sidecar", "tcp": {"port": closed_port}}
    ep = Endpoint("e", backend.host, backend.port)
    cases = [
        ("All", [http, tcp_ok], True),
        ("All", [http, tcp_bad], False),
        ("Any", [http, tcp_bad], True),
        ("Majority", [http, tcp_ok, tcp_bad], True),
        ("Majority", [http, tcp_bad], False),
    ]
    for mode, checks, expected in cases:
        prober = Prober(composite(mode, *checks))
        try:
            r = await prober(ep)
        finally:
            await prober.close()
        assert r.ok is expected, (mode, checks, r)
        if not r.ok:
            assert r.reason == "ChecksFailed" and "sidecar: TCP connect" in r.message


async def test_an_answer_that_came_while_the_loop_was_busy_across_the_deadline_is_read(backend):
    """The loop is busy from 0.7 s to 1.2 s; the answer comes at 0.8 s; the deadline (1 s)
    fires 0.2 s late and gives the exchange those 0.2 s back: the answer waiting unread is
    read, the probe succeeds, and its connection is kept for the next probe. (At 1,000
    pools probes cut off there flapped endpoints whose backends answered within 50 ms, and
    every cut cost a new connection, which loaded the loop further.)"""
    members = (Endpoint("a", backend.host, backend.port),)
    prober = Prober(HealthCheck(timeout_seconds=1, http=CHECK))
    backend.mode, backend.delay = "slow", 0.8
    late: list[str] = []
    results: dict[str, ProbeResult] = {}
    asyncio.get_running_loop().call_later(0.7, time.sleep, 0.5)
    async for batch in probe_batches(members, prober, late=lambda ep: late.append(ep.name)):
        results.update(batch)
    try:
        assert late == [] and results["a"].ok, results
        assert len(prober._http[0]._idle) == 1  # kept alive
    finally:
        await prober.close()


async def test_a_backend_that_hangs_fails_although_the_busy_loop_was_given_time_back(backend):
    """The lateness given back is bounded: a backend that never answers still fails its
    probe, once the deadline, moved by the time the loop was away, has passed."""
    members = (Endpoint("a", backend.host, backend.port),)
    prober = Prober(HealthCheck(timeout_seconds=1, http=CHECK))
    backend.mode = "hang"
    results: dict[str, ProbeResult] = {}
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.7, time.sleep, 0.5)
    async for batch in probe_batches(members, prober):
        results.update(batch)
    took = time.monotonic() - started
    await prober.close()
    assert results["a"].reason == "Timeout", results
    assert took >= 1.35  # cut off after the 0.2 s given back, not when the late deadline first ran


async def test_a_loop_stalled_for_seconds_past_the_deadline_still_reads_the_answer(backend):
    """The event loop is blocked from 0.1 s to 2.1 s (an overloaded operator), past the
    deadline (1 s); the backend answered at 0.3 s. The 1.1 s the deadline ran late are
    given back: the answer is read, the probe succeeds, its connection is kept. A backend
    that really does not answer still fails its probe."""
    members = (Endpoint("a", backend.host, backend.port),)
    prober = Prober(HealthCheck(timeout_seconds=1, http=CHECK))
    backend.mode, backend.delay = "slow", 0.3
    late: list[str] = []
    results: dict[str, ProbeResult] = {}
    asyncio.get_running_loop().call_later(0.1, time.sleep, 2.0)
    async for batch in probe_batches(members, prober, late=lambda ep: late.append(ep.name)):
        results.update(batch)
    assert late == [] and results["a"].ok, results
    assert len(prober._http[0]._idle) == 1
    backend.mode = "hang"
    results = {}
    async for batch in probe_batches(members, prober):
        results.update(batch)
    assert results["a"].reason == "Timeout"
    await prober.close()


async def test_a_deadline_late_by_more_than_it_may_give_back_is_the_operators_fault():
    """Past `give_back`, the deadline cuts the exchange off when it runs, however late;
    a timeout that late says nothing about the backend: it is left out (OperatorLateError)."""
    deadline = Deadline(0.2, give_back=0.1)

    async def stalled_past_it() -> None:
        async with deadline:
            asyncio.get_running_loop().call_later(0.05, time.sleep, 0.8)  # the deadline runs 0.65 s late
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError) as cut:
        await stalled_past_it()
    assert deadline.given == 0 and deadline.late > LATE
    with pytest.raises(OperatorLateError):
        _raise_if_late(cut.value, deadline)
