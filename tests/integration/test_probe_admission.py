"""The prober sends only what it validated, even when a check got past the CRD and the
models (built with model_construct or model_copy, which skip validation): a real server
records every byte it receives, and none of a CR/LF injection ever arrives."""

import asyncio

import pytest

from clusterpool.api import HealthCheck, HTTPCheck, HTTPHeader
from clusterpool.health.probes import HTTPProber, Prober, probe_http

INJECTED = b"X-Injected"


class RecordingServer:
    """Accepts connections, keeps every byte, answers each request head with 200."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0

    async def start(self, host: str = "127.0.0.61") -> "RecordingServer":
        self.server = await asyncio.start_server(self._serve, host, 0)
        self.host, self.port = host, self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                if b"\r\n\r\n" in data:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    break
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def server():
    s = await RecordingServer().start()
    yield s
    await s.stop()


def unvalidated(**fields):
    """An HTTPCheck that skipped every validator, as a bypassed CRD would hand over."""
    return HTTPCheck.model_construct(**fields)


def header(name, value):
    return HTTPHeader.model_construct(name=name, value=value)


BAD_CHECKS = {
    "header-value-crlf": lambda: unvalidated(headers=[header("X-A", "ok\r\nX-Injected: 1")]),
    "header-value-lf": lambda: unvalidated(headers=[header("X-A", "ok\nX-Injected: 1")]),
    "header-name-crlf": lambda: unvalidated(headers=[header("X-Injected: 1\r\nX-A", "v")]),
    "path-crlf": lambda: unvalidated(path="/health HTTP/1.1\r\nX-Injected: 1\r\nX-B:"),
    "method-crlf": lambda: unvalidated(method="GET /x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET"),
    "host-header-override": lambda: unvalidated(headers=[header("Host", "X-Injected")]),
    "copied-past-validation": lambda: HTTPCheck().model_copy(update={"headers": [header("X-A", "\r\nX-Injected: 1")]}),
}


async def test_a_valid_check_reaches_the_recording_server(server):
    """The control: what the prober does send is recorded."""
    check = HTTPCheck(headers=[{"name": "X-A", "value": "fine"}])
    r = await probe_http(server.host, server.port, check, 2.0)
    assert r.ok, r.message
    assert b"GET /health HTTP/1.1\r\n" in server.received and b"X-A: fine\r\n" in server.received


@pytest.mark.parametrize("name", sorted(BAD_CHECKS))
async def test_an_unvalidated_check_is_refused_before_anything_is_sent(server, name):
    with pytest.raises(ValueError) as exc:
        HTTPProber(BAD_CHECKS[name](), 2.0)
    assert any(f in str(exc.value) for f in ("headers", "path", "method"))
    with pytest.raises(ValueError):
        Prober(HealthCheck.model_construct(http=BAD_CHECKS[name](), timeout_seconds=2))
    with pytest.raises(ValueError):
        await probe_http(server.host, server.port, BAD_CHECKS[name](), 2.0)
    await asyncio.sleep(0.05)
    assert server.connections == 0 and INJECTED not in server.received


@pytest.mark.parametrize("address", ["127.0.0.61\r\nX-Injected: 1", "127.0.0.61 X-Injected", "http://127.0.0.61"])
async def test_an_endpoint_address_that_is_not_a_host_is_never_probed(server, address):
    prober = HTTPProber(HTTPCheck(), 2.0)
    try:
        r = await prober.probe(address, server.port)
    finally:
        await prober.close()
    assert (r.ok, r.reason) == (False, "InvalidAddress")
    assert "must be an IP address or a lowercase DNS name" in r.message
    assert server.connections == 0 and INJECTED not in server.received
