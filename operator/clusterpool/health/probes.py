"""Active probes: TCP connect and HTTP GET, on plain asyncio streams.

A probe needs a connect, one request and one status line, so a lean HTTP/1.1 client on
asyncio streams does it; it is several times faster per probe than a general HTTP
client (see docs/architecture.md, "Probing") and never blocks the event loop.
Every failure is turned into a ProbeResult with a stable reason and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from clusterpool.api import HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint, ProbeResult

USER_AGENT = "clusterpool-probe/0.1"
MAX_STATUS_LINE = 4096


def _failure(exc: BaseException, timeout: float, what: str) -> ProbeResult:
    if isinstance(exc, TimeoutError):
        return ProbeResult(False, "Timeout", f"{what}: no answer within {timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(False, "ConnectionRefused", f"{what}: connection refused")
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError):
        return ProbeResult(False, "ConnectionClosed", f"{what}: connection closed before an answer")
    if isinstance(exc, OSError):
        detail = exc.strerror or exc.__class__.__name__
        return ProbeResult(False, "ConnectionFailed", f"{what}: {detail}")
    return ProbeResult(False, "ProbeError", f"{what}: {exc.__class__.__name__}: {exc}")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    what = f"TCP connect to {host}:{port}"
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
            await _close(writer)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return _failure(exc, timeout, what)
    return ProbeResult(True, "ProbeSucceeded", f"{what} accepted", time.perf_counter() - start)


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line, or None if it is not one."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


async def probe_http(host: str, port: int, check: HTTPCheck, timeout: float) -> ProbeResult:
    what = f"GET {check.path} on {host}:{port}"
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {check.path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_STATUS_LINE)
            try:
                writer.write(request)
                await writer.drain()
                line = await reader.readuntil(b"\n")
            finally:
                await _close(writer)
    except asyncio.LimitOverrunError:
        return ProbeResult(False, "ProtocolError", f"{what}: the answer is not HTTP (no status line)")
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return _failure(exc, timeout, what)
    latency = time.perf_counter() - start
    code = parse_status_line(line.rstrip(b"\r\n"))
    if code is None:
        return ProbeResult(False, "ProtocolError", f"{what}: the answer is not HTTP: {line[:40]!r}", latency)
    if not check.accepts(code):
        expected = ", ".join(check.expected_statuses)
        return ProbeResult(False, "UnexpectedStatus", f"{what}: HTTP {code}, expected {expected}", latency)
    return ProbeResult(True, "ProbeSucceeded", f"{what}: HTTP {code}", latency)


Prober = Callable[[Endpoint], Awaitable[ProbeResult]]


def prober_for(check: HealthCheck) -> Prober:
    """The probe function a health check describes."""
    timeout = float(check.timeout_seconds)
    if check.http is not None:
        http = check.http

        async def run_http(ep: Endpoint) -> ProbeResult:
            return await probe_http(ep.address, http.port or ep.port, http, timeout)

        return run_http
    tcp_port = check.tcp.port if check.tcp is not None else None

    async def run_tcp(ep: Endpoint) -> ProbeResult:
        return await probe_tcp(ep.address, tcp_port or ep.port, timeout)

    return run_tcp


async def probe_all(members: tuple[Endpoint, ...], prober: Prober) -> dict[str, ProbeResult]:
    """Probe every endpoint concurrently; a probe that raises counts as a failure."""
    results = await asyncio.gather(*(prober(ep) for ep in members), return_exceptions=True)
    out: dict[str, ProbeResult] = {}
    for ep, res in zip(members, results, strict=True):
        if isinstance(res, ProbeResult):
            out[ep.name] = res
        elif isinstance(res, asyncio.CancelledError):
            raise res
        else:
            out[ep.name] = _failure(res, 0.0, f"probe of {ep.address}:{ep.port}")
    return out
