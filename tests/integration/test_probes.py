"""Probes against real servers on loopback: every outcome gets its reason."""

import pytest

from backends import HTTPBackend, TCPBackend, free_port
from clusterpool.api import HTTPCheck
from clusterpool.health.probes import parse_status_line, probe_http, probe_tcp

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
