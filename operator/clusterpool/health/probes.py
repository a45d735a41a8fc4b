"""Active probes: TCP connect, HTTP(S) requests and composites of them, on plain asyncio
streams.

A probe needs a connect, one request and one answer, so a lean HTTP/1.1 client on asyncio
streams does it: several times faster per probe than a general HTTP client (see
docs/benchmarks.md) and never blocking the event loop. HTTP probes keep one connection
per endpoint alive between probes unless told not to; a reused connection that the
server closed meanwhile is retried once on a fresh one, as browsers do. Every failure
becomes a ProbeResult with a stable reason and a message without timings that says what
the exchange was doing.

A backend cannot hold a probe or its memory: the timeout is a deadline for the whole
exchange (a byte every 200 ms does not stretch it), the status line and headers are
capped (MAX_LINE, MAX_HEAD, MAX_HEADERS), and a body is read only as far as the check
needs, never past MAX_BODY (docs/reliability.md, "Hostile backends").
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from clusterpool.api import HOST_RULE, CompositeCheck, HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint, ProbeResult

USER_AGENT = "clusterpool-probe/0.1"
MAX_LINE = 8192  # bytes of one status, header, chunk-size or trailer line
MAX_HEAD = 32 * 1024  # bytes of the status line and headers together (trailers too)
MAX_HEADERS = 100  # header lines (trailer lines too)
MAX_BODY = 64 * 1024  # bytes of a body read (bodyContains looks at this much)
LATE = 0.5  # seconds a probe's deadline may fire late before its timeout says more about us than the backend
STALLED = 0.005  # seconds late past which a deadline that finds the answer unread was the operator's fault
GIVE_BACK = 10.0  # seconds of the loop's lateness a probe's deadline gives back at most


class ProtocolError(Exception):
    """The answer is not the HTTP/1.x we can read."""


class OperatorLateError(Exception):
    """The probe's deadline fired well after it was due: the operator's event loop was too
    busy to read the answer in time, so the timeout says nothing about the backend. The
    probe is not counted, as if it had not been made; the endpoint keeps its health."""


class Deadline:
    """A probe's timeout in which time the operator's event loop was away does not count
    against the backend: when the deadline's callback runs more than STALLED late (the
    loop was busy elsewhere; an answer may be waiting unread), the exchange gets that
    lateness back before it is cut off, up to `give_back` in all. The extension only
    comes with a late callback, so a backend that does not answer still fails as soon as
    the deadline runs on time; a probe on a loaded operator keeps its connection instead
    of being cut with the answer in its buffer (at 1,000 pools those cuts made every
    probe a new connection, which loaded the loop further, and stalls of the loop of a
    few seconds cut every probe in flight).

        async with Deadline(1.0) as deadline:
            ...  # TimeoutError when cut off; deadline.late: how late the cut was

    Like asyncio.timeout, it cuts off by cancelling the task, at once when due (so an
    answer that came meanwhile stays unread), and turns that cancel into TimeoutError."""

    def __init__(self, seconds: float, give_back: float = GIVE_BACK) -> None:
        self.seconds = seconds
        self.give_back = give_back
        self.given = 0.0  # lateness given back so far
        self.late = 0.0  # how late the deadline's callback ran, the last time it ran
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cut = False
        self._cancelling = 0  # cancels the task had asked for on entry

    async def __aenter__(self) -> Deadline:
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task is not None else 0
        self._arm(asyncio.get_running_loop(), self.seconds)
        return self

    def _arm(self, loop: asyncio.AbstractEventLoop, after: float) -> None:
        when = loop.time() + after
        self._handle = loop.call_at(when, self._due, loop, when)

    def _due(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.late = loop.time() - when
        if STALLED < self.late <= self.give_back - self.given:
            self.given += self.late
            self._arm(loop, self.late)
        elif self._task is not None:
            self._cut = True
            self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # a cut takes its cancel back; the cancel was ours alone when no other came meanwhile
        ours = self._cut and self._task is not None and self._task.uncancel() <= self._cancelling
        if ours and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def _raise_if_late(exc: BaseException, deadline: Deadline, progress: Progress | None = None) -> None:
    """A timeout that says more about the operator than the backend: its deadline was
    cut off long after it was due, or late with the backend's answer already received and
    unread (the loop was busy when it came, and looked again only after the deadline),
    the lateness being more than what could still be given back."""
    if isinstance(exc, TimeoutError):
        if deadline.late > LATE:
            raise OperatorLateError(f"the probe's deadline fired {deadline.late:.1f}s late") from exc
        if deadline.late > STALLED and progress is not None and progress.answer_unread():
            raise OperatorLateError(
                f"the answer was in, unread, when the deadline fired {deadline.late:.2f}s late"
            ) from exc


class Progress:
    """What an exchange is doing, so that a failure names what it interrupted."""

    def __init__(self) -> None:
        self.doing = "connecting"
        self.head_bytes = 0
        self.reader: asyncio.StreamReader | None = None  # of the connection the request went on

    def answer_unread(self) -> bool:
        """Whether bytes of the answer were received and not yet read (asyncio's
        StreamReader keeps them in its buffer until a read takes them)."""
        return self.reader is not None and bool(getattr(self.reader, "_buffer", b""))


def _failure(exc: BaseException, timeout: float, what: str, doing: str | None = None) -> ProbeResult:
    """A failed probe as a stable reason and a message without timings or byte counts (so
    the same fault gives the same message every time)."""
    during = f" {doing}" if doing is not None else ""
    if isinstance(exc, TimeoutError):
        return ProbeResult(False, "Timeout", f"{what}: timed out after {timeout:g}s{during}")
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or exc.reason or exc.__class__.__name__
        return ProbeResult(False, "TLSError", f"{what}: TLS failed{during}: {detail}")
    if isinstance(exc, ProtocolError):
        return ProbeResult(False, "ProtocolError", f"{what}: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(False, "ConnectionRefused", f"{what}: connection refused")
    if isinstance(exc, ConnectionResetError):
        return ProbeResult(False, "ConnectionClosed", f"{what}: connection reset by the backend{during}")
    if isinstance(exc, asyncio.IncompleteReadError | BrokenPipeError):
        return ProbeResult(False, "ConnectionClosed", f"{what}: connection closed by the backend{during}")
    if isinstance(exc, OSError):
        detail = exc.strerror or exc.__class__.__name__
        return ProbeResult(False, "ConnectionFailed", f"{what}: {detail}{during}")
    return ProbeResult(False, "ProbeError", f"{what}: {exc.__class__.__name__}: {exc}")


_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError)


def _drop(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once, without waiting for the backend: a graceful TLS close
    waits for the peer's close_notify, which a misbehaving backend never sends."""
    writer.transport.abort()


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    what = f"TCP connect to {host}:{port}"
    start = time.perf_counter()
    deadline = Deadline(timeout)
    try:
        async with deadline:
            _, writer = await asyncio.open_connection(host, port)
            _drop(writer)
    except _ERRORS as exc:
        _raise_if_late(exc, deadline)
        return _failure(exc, timeout, what, "while connecting")
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
    truncated: bool = False  # the body went on past MAX_BODY


async def _line(reader: asyncio.StreamReader, what: str, progress: Progress | None = None) -> bytes:
    """One line; with progress, it counts against MAX_HEAD."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"{what} longer than {MAX_LINE // 1024} KiB") from exc
    if progress is not None:
        progress.head_bytes += len(line)
        if progress.head_bytes > MAX_HEAD:
            raise ProtocolError(f"status line and headers longer than {MAX_HEAD // 1024} KiB")
    return line.rstrip(b"\r\n")


async def _fields(reader: asyncio.StreamReader, progress: Progress, what: str) -> dict[str, str]:
    """Header (or trailer) lines up to the empty line, at most MAX_HEADERS of them."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader, f"a {what} line", progress)
        if not line:
            return fields
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"bad {what} line {line[:40]!r}")
        fields[name.strip().lower()] = value.strip()
    raise ProtocolError(f"more than {MAX_HEADERS} {what} lines")


async def read_answer(
    reader: asyncio.StreamReader, method: str, wanted: bytes | None = None, progress: Progress | None = None
) -> Answer:
    """Read one HTTP/1.x answer: status and headers (at most MAX_HEAD bytes), and as much
    of the body as is needed, never more than MAX_BODY: all of a short length-delimited
    body (so the connection can be reused); of any other body only what a search for
    `wanted` needs. A body that is not read leaves the connection unusable."""
    p = progress or Progress()
    p.doing = "while waiting for the status line"
    status_line = await _line(reader, "a status line", p)
    status = parse_status_line(status_line)
    if status is None:
        raise ProtocolError(f"the status line is not HTTP/1.x: {status_line[:40]!r}")
    p.doing = "while reading the headers"
    headers = await _fields(reader, p, "header")
    reusable = status_line.startswith(b"HTTP/1.1") and headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Answer(status, b"", reusable)
    p.doing = "while reading the body"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _chunked(reader, status, reusable, p)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise ProtocolError(f"bad Content-Length {headers['content-length'][:40]!r}") from exc
        if length < 0:
            raise ProtocolError(f"bad Content-Length {length}")
        if length > MAX_BODY and wanted is None:
            return Answer(status, b"", False, truncated=True)  # too long to read for reuse, not needed
        body = await reader.readexactly(min(length, MAX_BODY))
        return Answer(status, body, reusable and length <= MAX_BODY, truncated=length > MAX_BODY)
    if wanted is None:
        return Answer(status, b"", False)  # the body ends with the close: nothing to read it for
    return await _until_close(reader, status, wanted)


async def _chunked(reader: asyncio.StreamReader, status: int, reusable: bool, p: Progress) -> Answer:
    body = bytearray()
    while True:
        size_line = await _line(reader, "a chunk-size line")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from exc
        if size < 0:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}")
        if size == 0:
            await _fields(reader, p, "trailer")
            return Answer(status, bytes(body), reusable)
        if len(body) + size > MAX_BODY:
            body += await reader.readexactly(MAX_BODY - len(body))
            return Answer(status, bytes(body), False, truncated=True)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _until_close(reader: asyncio.StreamReader, status: int, wanted: bytes) -> Answer:
    """A body that ends with the close: read until `wanted` is in it, the close, or MAX_BODY."""
    body = bytearray()
    while len(body) < MAX_BODY:
        chunk = await reader.read(MAX_BODY - len(body))
        if not chunk:
            return Answer(status, bytes(body), False)
        searched = max(0, len(body) - len(wanted) + 1)
        body += chunk
        if body.find(wanted, searched) >= 0:
            return Answer(status, bytes(body), False)
    return Answer(status, bytes(body), False, truncated=True)


class HTTPProber:
    """Probes endpoints with one HTTPCheck, keeping a connection per endpoint alive.

    It sends only what it validated: the check is validated again when the prober is
    built (a model can be constructed or copied past its validators), so a method, path
    or header with CR/LF or other control characters raises ValueError here and never
    reaches the wire; an endpoint address that is not an IP or DNS name fails its probe
    with InvalidAddress instead of going into the Host header."""

    def __init__(self, check: HTTPCheck, timeout: float, engine: str | None = None) -> None:
        HTTPCheck.model_validate(check.model_dump())  # raises ValueError naming the field
        self.check = check
        self.path = check.path_for(engine)  # the check's path, else the engine profile's health path
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
            f"{self.check.method} {self.path} HTTP/1.1",
            f"Host: {authority}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            f"Connection: {'keep-alive' if self.check.keep_alive else 'close'}",
        ]
        if self.check.method == "POST":
            lines.append("Content-Length: 0")
        lines += [f"{h.name}: {h.value}" for h in self.check.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, host: str, port: int, progress: Progress) -> Answer:
        key = (host, port)
        conn = self._idle.pop(key, None)
        reused = conn is not None
        if conn is None:
            progress.doing = "while connecting"
            conn = await asyncio.open_connection(host, port, limit=MAX_LINE)
            if self.tls is not None:
                progress.doing = "in the TLS handshake"
                try:
                    await conn[1].start_tls(self.tls, server_hostname=host)
                except BaseException:
                    _drop(conn[1])
                    raise
        reader, writer = conn
        wanted = self.check.body_contains.encode() if self.check.body_contains is not None else None
        try:
            progress.doing = "while sending the request"
            progress.head_bytes = 0
            progress.reader = reader
            writer.write(self._request(host, port))
            await writer.drain()
            answer = await read_answer(reader, self.check.method, wanted, progress)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            _drop(writer)
            if reused:  # the server closed the idle connection meanwhile: once more, fresh
                return await self._exchange(host, port, progress)
            raise
        except BaseException:
            _drop(writer)
            raise
        if answer.reusable and self.check.keep_alive and key not in self._idle:
            self._idle[key] = conn
        else:
            _drop(writer)
        return answer

    async def probe(self, host: str, port: int) -> ProbeResult:
        """One request and its answer, all of it within the timeout (a deadline for the
        whole exchange, not for each read: a backend dripping bytes cannot stretch it)."""
        try:
            HOST_RULE.check(host)
        except ValueError as exc:
            return ProbeResult(
                False,
                "InvalidAddress",
                f"{self.check.method} {self.path} on {host!r}:{port}: not probed: the address {exc}",
            )
        what = f"{self.check.method} {self.path} on {host}:{port}"
        start = time.perf_counter()
        progress = Progress()
        deadline = Deadline(self.timeout)
        try:
            async with deadline:
                answer = await self._exchange(host, port, progress)
        except _ERRORS as exc:
            _raise_if_late(exc, deadline, progress)
            return _failure(exc, self.timeout, what, progress.doing)
        latency = time.perf_counter() - start
        if not self.check.accepts(answer.status):
            expected = ", ".join(self.check.expected_statuses)
            return ProbeResult(False, "UnexpectedStatus", f"{what}: HTTP {answer.status}, expected {expected}", latency)
        wanted = self.check.body_contains
        if wanted is not None and wanted.encode() not in answer.body:
            within = f" in its first {MAX_BODY // 1024} KiB" if answer.truncated else ""
            return ProbeResult(
                False, "UnexpectedBody", f"{what}: HTTP {answer.status}, body lacks {wanted!r}{within}", latency
            )
        return ProbeResult(True, "ProbeSucceeded", f"{what}: HTTP {answer.status}", latency)

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for _, writer in idle.values():
            _drop(writer)


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
    keep-alive connections. HTTP checks without a path request `engine`'s health path
    (engines/profiles.py), or /health without an engine."""

    def __init__(self, check: HealthCheck, engine: str | None = None) -> None:
        self.timeout = float(check.timeout_seconds)
        self.engine = engine
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
            prober = HTTPProber(http, self.timeout, self.engine)
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


def prober_for(check: HealthCheck, engine: str | None = None) -> Prober:
    """The prober of a pool: `prober_for(spec.health_check, spec.engine)`."""
    return Prober(check, engine)


async def probe_all(members: tuple[Endpoint, ...], prober: Check) -> dict[str, ProbeResult]:
    """Probe every endpoint concurrently; a probe that raises counts as a failure."""
    out: dict[str, ProbeResult] = {}
    async for batch in probe_batches(members, prober):
        out.update(batch)
    return out


async def probe_batches(
    members: tuple[Endpoint, ...],
    prober: Check,
    gather_for: float = 0.05,
    late: Callable[[Endpoint], None] = lambda ep: None,
) -> AsyncIterator[dict[str, ProbeResult]]:
    """Probe every endpoint concurrently and yield the results as they come: the first
    ones at once (a refused connection is known long before a slow probe times out), then
    whatever finished within each further `gather_for` seconds, so a round with spread
    latencies is a few batches, not one per endpoint. A probe that raises is a failure,
    except one the operator was too late for (OperatorLateError): it is left out and `late` told."""
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
                if isinstance(exc, OperatorLateError):
                    late(ep)
                elif exc is None:
                    batch[ep.name] = t.result()
                else:
                    batch[ep.name] = _failure(exc, 0.0, f"probe of {ep.address}:{ep.port}")
            yield batch
    finally:
        for t in pending:
            t.cancel()
