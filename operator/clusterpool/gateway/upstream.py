"""Connections to the endpoints: raw asyncio protocols with an httptools response parser,
kept alive in a pool per endpoint, one exchange at a time each.

A response's head resolves `head`; its body goes to a sink as it arrives (buffered only
until the proxy commits to the response, which is when it knows the answer is not retried);
its end resolves `done`. A reset, a malformed response or a timeout fails whichever is
pending. The gateway's ticker calls `expired` on busy connections to enforce the timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import cast

import httptools

from clusterpool.gateway.settings import Timeouts


class UpstreamError(Exception):
    """An attempt failed before or while the endpoint answered; `reason` labels retries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Head:
    __slots__ = ("first", "headers", "keep_alive", "names", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        names: list[bytes],
        keep_alive: bool,
        first: dict[bytes, bytes],
    ) -> None:
        self.status, self.headers, self.names, self.keep_alive = status, headers, names, keep_alive
        self.first = first  # the first value of each name

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lowercase)."""
        return self.first.get(name)


class Exchange:
    """One request and its response on a connection: the head the proxy awaits, where the
    body goes, how it ended, and the deadlines the ticker checks. The end is a future only
    when the proxy has to wait for it (a small answer is usually whole by the time its head
    is handled, and then no future is made)."""

    __slots__ = (
        "buffered",
        "complete",
        "error",
        "first_byte_by",
        "head",
        "head_only",
        "last_chunk",
        "loop",
        "received",
        "request_by",
        "sink",
        "waiter",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, first_byte_by: float, request_by: float, head_only: bool
    ) -> None:
        self.loop = loop
        self.head: asyncio.Future[Head] = loop.create_future()
        self.complete = False  # the whole response is in
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None  # made by `end` when the body is still coming
        self.sink: Callable[[bytes], None] | None = None
        self.buffered: list[bytes] = []
        self.first_byte_by, self.request_by = first_byte_by, request_by
        self.last_chunk = 0.0
        self.head_only = head_only
        self.received = 0  # bytes of the response so far

    @property
    def over(self) -> bool:
        return self.complete or self.error is not None

    def end(self) -> asyncio.Future[None] | None:
        """None when the response is whole; raises its error when it failed; else a future
        that resolves (or fails) when it ends."""
        if self.error is not None:
            raise self.error
        if self.complete:
            return None
        if self.waiter is None:
            self.waiter = self.loop.create_future()
        return self.waiter

    def expired(self, now: float, idle: float) -> str | None:
        if self.over:
            return None
        if self.request_by and now > self.request_by:
            return "request_timeout"
        if not self.head.done():
            return "first_byte_timeout" if now > self.first_byte_by else None
        return "idle_timeout" if now > self.last_chunk + idle else None

    def fail(self, error: UpstreamError) -> None:
        if self.over:
            return
        self.error = error
        for f in (self.head, self.waiter):
            if f is not None and not f.done():
                f.set_exception(error)
                f.exception()  # retrieved: a head's error may never be awaited

    def finish(self) -> None:
        if self.complete or self.error is not None:  # `over`, without a property call per request
            return
        self.complete = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.exchange: Exchange | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._names: list[bytes] = []
        self._first: dict[bytes, bytes] = {}
        self._informational = False
        self._keep_alive = False
        self._close_delimited = False

    @property
    def received(self) -> int:
        """Bytes of the current response so far."""
        return self.exchange.received if self.exchange is not None else 0

    # -- the exchange -------------------------------------------------------------------------

    def send(self, data: bytes, request_by: float, head_only: bool) -> asyncio.Future[Head]:
        """Write one request; the future resolves with the response's head (its end: `end`)."""
        assert self.transport is not None
        ex = self.exchange = Exchange(
            self.pool.loop, monotonic() + self.pool.timeouts.first_byte, request_by, head_only
        )
        self._headers = []
        self._names = []
        self._first = {}
        self.transport.write(data)
        return ex.head

    def end(self) -> asyncio.Future[None] | None:
        """The end of the current response: None when it is whole, else a future (see Exchange)."""
        assert self.exchange is not None
        return self.exchange.end()

    def relay(self, sink: Callable[[bytes], None]) -> list[bytes]:
        """The proxy committed: all that follows goes to `sink`; returns what came before
        (for the proxy to send with the response head, in one write)."""
        ex = self.exchange
        assert ex is not None
        ex.sink = sink
        buffered, ex.buffered = ex.buffered, []
        return buffered

    def expired(self, now: float) -> str | None:
        """Which timeout ran out for the pending exchange, if any."""
        return self.exchange.expired(now, self.pool.timeouts.idle) if self.exchange is not None else None

    def fail(self, error: UpstreamError) -> None:
        """End the pending exchange with `error` and drop the connection."""
        if self.exchange is not None:
            self.exchange.fail(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool.discard(self)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError("malformed", f"malformed response from the endpoint: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None and not ex.over:
            if self._close_delimited and ex.head.done():  # a response delimited by the connection's end
                ex.finish()
            else:
                self.fail(UpstreamError("reset", "the endpoint closed the connection mid-response"))
        self.pool.discard(self)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lower = name.lower()
        self._names.append(lower)
        self._first.setdefault(lower, value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: another head follows
            self._informational = True
            self._headers = []
            self._names = []
            self._first = {}
            return
        self._keep_alive = self._parser.should_keep_alive()
        first = self._first
        head = Head(status, self._headers, self._names, self._keep_alive, first)
        self._close_delimited = b"content-length" not in first and b"transfer-encoding" not in first
        ex = self.exchange
        if ex is None:
            return
        ex.last_chunk = monotonic()
        if not ex.head.done():
            ex.head.set_result(head)
        if ex.head_only:  # a HEAD answer has no body, whatever its Content-Length says
            self._keep_alive = False
            ex.finish()

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            return
        ex.last_chunk = monotonic()
        if ex.sink is not None:
            ex.sink(data)
        else:
            ex.buffered.append(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self.exchange is not None:
            self.exchange.finish()


class EndpointPool:
    """Kept-alive connections to one endpoint."""

    def __init__(self, address: str, port: int, timeouts: Timeouts, max_idle: int) -> None:
        self.address, self.port = address, port
        self.host = b"%s:%d\r\n" % (address.encode(), port)  # the Host line's value, as sent
        self.timeouts = timeouts
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self.idle: deque[UpstreamConnection] = deque()
        self.busy: set[UpstreamConnection] = set()
        self.retired = False  # no table routes here any more: each connection closes when its exchange ends

    def take_idle(self) -> UpstreamConnection | None:
        """A kept-alive connection, None when there is none (then `connect`)."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                self.busy.add(conn)
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection, within the connect timeout."""
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, proto = await self.loop.create_connection(lambda: UpstreamConnection(self), self.address, self.port)
        except TimeoutError as exc:
            raise UpstreamError("connect_timeout", f"no connection to {self.address}:{self.port} in time") from exc
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {self.address}:{self.port}: {exc}") from exc
        self.busy.add(proto)
        return proto

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The exchange is over: keep the connection for the next one, or close it."""
        self.busy.discard(conn)
        if reusable and not conn.closed and not self.retired and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        self.busy.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def retire(self) -> None:
        """Close the idle connections now; the busy ones close as their exchanges end."""
        self.retired = True
        for conn in list(self.idle):
            conn.close()

    def close(self) -> None:
        for conn in [*self.idle, *self.busy]:
            conn.close()


Address = tuple[str, int]


class Upstreams:
    """The endpoint pools by address and port. A pool whose endpoint left every routing
    table is retired (`retain`): its idle connections close at once, its busy ones when their
    exchange ends, and it is forgotten then."""

    def __init__(self, timeouts: Timeouts, max_idle: int) -> None:
        self.timeouts, self.max_idle = timeouts, max_idle
        self.pools: dict[Address, EndpointPool] = {}
        self._retired: list[EndpointPool] = []  # retired, with exchanges still running

    def pool(self, address: str, port: int) -> EndpointPool:
        p = self.pools.get((address, port))
        if p is None:
            p = self.pools[(address, port)] = EndpointPool(address, port, self.timeouts, self.max_idle)
        return p

    def retain(self, endpoints: set[Address]) -> None:
        """Retire the pools of endpoints not in `endpoints` (those of every routing table)."""
        for key in [k for k in self.pools if k not in endpoints]:
            pool = self.pools.pop(key)
            pool.retire()
            self._retired.append(pool)  # until its last exchange ends (busy drops it)

    def busy(self) -> list[UpstreamConnection]:
        """The connections with an exchange running (for the ticker's timeouts)."""
        if self._retired:
            self._retired = [p for p in self._retired if p.busy]
        return [c for p in (*self.pools.values(), *self._retired) for c in p.busy]

    def open_connections(self) -> list[tuple[str, str, int]]:
        """(endpoint `address:port`, `idle` or `busy`, connections) for the metrics."""
        out = []
        for p in (*self.pools.values(), *self._retired):
            name = f"{p.address}:{p.port}"
            out += [(name, "idle", len(p.idle)), (name, "busy", len(p.busy))]
        return out

    def close(self) -> None:
        for p in (*self.pools.values(), *self._retired):
            p.close()
