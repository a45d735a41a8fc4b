"""Active probes: TCP connect, HTTP(S) requests and composites of them, on plain asyncio
streams.

A probe needs a connect, one request and one answer, so a lean HTTP/1.1 client on asyncio
streams does it: several times faster per probe than a general HTTP client (see
docs/benchmarks.md) and never blocking the event loop. HTTP probes keep one connection
per endpoint alive between probes unless told not to; a reused connection that the
server closed meanwhile is retried once on a fresh one, as browsers do. Every failure
becomes a ProbeResult with a stable reason and a message without timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from clusterpool.api import HOST_RULE, CompositeCheck, HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint, ProbeResult

USER_AGENT = "clusterpool-probe/0.1"
MAX_LINE = 8192
MAX_HEADERS = 100
MAX_BODY = 64 * 1024


class ProtocolError(Exception):
    """The answer is not the HTTP/1.x we can read."""


def _failure(exc: BaseException, timeout: float, what: str) -> ProbeResult:
    if isinstance(exc, TimeoutError):
        return ProbeResult(False, "Timeout", f"{what}: no answer within {timeout:g}s")
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or exc.reason or exc.__class__.__name__
        return ProbeResult(False, "TLSError", f"{what}: TLS failed: {detail}")
    if isinstance(exc, ProtocolError | asyncio.LimitOverrunError):
        return ProbeResult(False, "ProtocolError", f"{what}: the answer is not HTTP: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(False, "ConnectionRefused", f"{what}: connection refused")
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError):
        return ProbeResult(False, "ConnectionClosed", f"{what}: connection closed before a full answer")
    if isinstance(exc, OSError):
        detail = exc.strerror or exc.__class__.__name__
        return ProbeResult(False, "ConnectionFailed", f"{what}: {detail}")
    return ProbeResult(False, "ProbeError", f"{what}: {exc.__class__.__name__}: {exc}")


_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    what = f"TCP connect to {host}:{port}"
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
            await _close(writer)
    except _ERRORS as exc:
        return _failure(exc, timeout, what)
    return ProbeResult(True, "ProbeSucceeded", f"{what} accepted", time.perf_counter() - start)


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line, or None if it is not one."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


@dataclass
class Answer:
    status: int
    body: bytes
    reusable: bool


async def _line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readuntil(b"\n")).rstrip(b"\r\n")


async def read_answer(reader: asyncio.StreamReader, method: str) -> Answer:
    """Read one HTTP/1.x answer: status, headers, and up to MAX_BODY of the body."""
    status_line = await _line(reader)
    status = parse_status_line(status_line)
    if status is None:
        raise ProtocolError(repr(status_line[:40]))
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ProtocolError("too many headers")
    reusable = status_line.startswith(b"HTTP/1.1") and headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Answer(status, b"", reusable)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await _line(reader)).split(b";")[0] or b"0", 16)
            if size == 0:
                while await _line(reader):  # trailers
                    pass
                return Answer(status, bytes(body), reusable)
            if len(body) + size > MAX_BODY:
                body += await reader.readexactly(MAX_BODY - len(body))
                return Answer(status, bytes(body), False)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise ProtocolError("bad Content-Length") from exc
        content = await reader.readexactly(min(length, MAX_BODY))
        return Answer(status, content, reusable and length <= MAX_BODY)
    return Answer(status, await reader.read(MAX_BODY), False)  # delimited by the close


class HTTPProber:
    """Probes endpoints with one HTTPCheck, keeping a connection per endpoint alive.

    It sends only what it validated: the check is validated again when the prober is
    built (a model can be constructed or copied past its validators), so a method, path
    or header with CR/LF or other control characters raises ValueError here and never
    reaches the wire; an endpoint address that is not an IP or DNS name fails its probe
    with InvalidAddress instead of going into the Host header."""

    def __init__(self, check: HTTPCheck, timeout: float) -> None:
        HTTPCheck.model_validate(check.model_dump())  # raises ValueError naming the field
        self.check = check
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if check.scheme == "HTTPS":
            self.tls = ssl.create_default_context()
            if check.insecure_skip_verify:
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE
        self._idle: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    def _request(self, host: str, port: int) -> bytes:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [
            f"{self.check.method} {self.check.path} HTTP/1.1",
            f"Host: {authority}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            f"Connection: {'keep-alive' if self.check.keep_alive else 'close'}",
        ]
        if self.check.method == "POST":
            lines.append("Content-Length: 0")
        lines += [f"{h.name}: {h.value}" for h in self.check.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, host: str, port: int) -> Answer:
        key = (host, port)
        conn = self._idle.pop(key, None)
        reused = conn is not None
        if conn is None:
            conn = await asyncio.open_connection(host, port, ssl=self.tls, limit=MAX_LINE)
        reader, writer = conn
        try:
            writer.write(self._request(host, port))
            await writer.drain()
            answer = await read_answer(reader, self.check.method)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            await _close(writer)
            if reused:  # the server closed the idle connection meanwhile: once more, fresh
                return await self._exchange(host, port)
            raise
        except BaseException:
            await _close(writer)
            raise
        if answer.reusable and self.check.keep_alive and key not in self._idle:
            self._idle[key] = conn
        else:
            await _close(writer)
        return answer

    async def probe(self, host: str, port: int) -> ProbeResult:
        what = f"{self.check.method} {self.check.path} on {host!r}:{port}"
        try:
            HOST_RULE.check(host)
        except ValueError as exc:
            return ProbeResult(False, "InvalidAddress", f"{what}: not probed: the address {exc}")
        what = f"{self.check.method} {self.check.path} on {host}:{port}"
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(host, port)
        except _ERRORS as exc:
            return _failure(exc, self.timeout, what)
        latency = time.perf_counter() - start
        if not self.check.accepts(answer.status):
            expected = ", ".join(self.check.expected_statuses)
            return ProbeResult(False, "UnexpectedStatus", f"{what}: HTTP {answer.status}, expected {expected}", latency)
        wanted = self.check.body_contains
        if wanted is not None and wanted.encode() not in answer.body:
            return ProbeResult(False, "UnexpectedBody", f"{what}: HTTP {answer.status}, body lacks {wanted!r}", latency)
        return ProbeResult(True, "ProbeSucceeded", f"{what}: HTTP {answer.status}", latency)

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for _, writer in idle.values():
            await _close(writer)


async def probe_http(host: str, port: int, check: HTTPCheck, timeout: float) -> ProbeResult:
    """One probe on a connection of its own."""
    prober = HTTPProber(check.model_copy(update={"keep_alive": False}), timeout)
    try:
        return await prober.probe(host, port)
    finally:
        await prober.close()


Check = Callable[[Endpoint], Awaitable[ProbeResult]]


class Prober:
    """What a HealthCheck describes, as one callable per endpoint; close() ends idle
    keep-alive connections."""

    def __init__(self, check: HealthCheck) -> None:
        self.timeout = float(check.timeout_seconds)
        self._http: list[HTTPProber] = []
        self.composite: CompositeCheck | None = check.composite
        self.checks: list[tuple[str, Check]] = []
        if check.composite is not None:
            for sub in check.composite.checks:
                self.checks.append((sub.name, self._one(sub.http, sub.tcp.port if sub.tcp else None)))
        else:
            self.checks.append(("", self._one(check.http, check.tcp.port if check.tcp else None)))

    def _one(self, http: HTTPCheck | None, tcp_port: int | None) -> Check:
        if http is not None:
            prober = HTTPProber(http, self.timeout)
            self._http.append(prober)

            async def run_http(ep: Endpoint) -> ProbeResult:
                return await prober.probe(ep.address, http.port or ep.port)

            return run_http

        async def run_tcp(ep: Endpoint) -> ProbeResult:
            return await probe_tcp(ep.address, tcp_port or ep.port, self.timeout)

        return run_tcp

    async def __call__(self, ep: Endpoint) -> ProbeResult:
        if self.composite is None:
            return await self.checks[0][1](ep)
        results = await asyncio.gather(*(check(ep) for _, check in self.checks))
        return combine(self.composite.mode, [name for name, _ in self.checks], results)

    async def close(self) -> None:
        for p in self._http:
            await p.close()


def combine(mode: str, names: list[str], results: list[ProbeResult]) -> ProbeResult:
    """All, Any or Majority of the checks' results."""
    passed = sum(r.ok for r in results)
    ok = {"All": passed == len(results), "Any": passed > 0, "Majority": 2 * passed > len(results)}[mode]
    latency = max((r.latency_s for r in results), default=0.0)
    failing = [f"{n}: {r.message}" for n, r in zip(names, results, strict=True) if not r.ok]
    summary = f"{passed} of {len(results)} checks passed ({mode})"
    if ok:
        return ProbeResult(True, "ProbeSucceeded", summary, latency)
    return ProbeResult(False, "ChecksFailed", f"{summary}: {'; '.join(failing)}", latency)


def prober_for(check: HealthCheck) -> Prober:
    return Prober(check)


async def probe_all(members: tuple[Endpoint, ...], prober: Check) -> dict[str, ProbeResult]:
    """Probe every endpoint concurrently; a probe that raises counts as a failure."""
    out: dict[str, ProbeResult] = {}
    async for batch in probe_batches(members, prober):
        out.update(batch)
    return out


async def probe_batches(
    members: tuple[Endpoint, ...], prober: Check, gather_for: float = 0.05
) -> AsyncIterator[dict[str, ProbeResult]]:
    """Probe every endpoint concurrently and yield the results as they come: the first
    ones at once (a refused connection is known long before a slow probe times out), then
    whatever finished within each further `gather_for` seconds, so a round with spread
    latencies is a few batches, not one per endpoint. A probe that raises is a failure."""
    tasks: dict[asyncio.Future[ProbeResult], Endpoint] = {asyncio.ensure_future(prober(ep)): ep for ep in members}
    pending: set[asyncio.Future[ProbeResult]] = set(tasks)
    try:
        first = True
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not first and pending:
                await asyncio.sleep(gather_for)
                more = {t for t in pending if t.done()}
                done, pending = done | more, pending - more
            first = False
            batch: dict[str, ProbeResult] = {}
            for t in done:
                ep = tasks[t]
                exc = t.exception()
                if exc is None:
                    batch[ep.name] = t.result()
                else:
                    batch[ep.name] = _failure(exc, 0.0, f"probe of {ep.address}:{ep.port}")
            yield batch
    finally:
        for t in pending:
            t.cancel()
