"""The gateway's client side and its wiring: client connections (asyncio protocols, one
request at a time each, within the limits), the ticker that enforces timeouts, and the
Gateway that builds the parts, runs them and shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from time import monotonic
from typing import cast

from clusterpool.client.load import LoadScraper
from clusterpool.gateway.accesslog import AccessLog
from clusterpool.gateway.admin import AdminListener
from clusterpool.gateway.apikeys import ApiKeys
from clusterpool.gateway.http1 import Request, RequestError, RequestReader, response_head
from clusterpool.gateway.metrics import GatewayMetrics
from clusterpool.gateway.proxy import Proxy, openai_error
from clusterpool.gateway.routes import Routes
from clusterpool.gateway.settings import Settings
from clusterpool.gateway.tables import RoutingFiles, Sources
from clusterpool.gateway.upstream import UpstreamConnection, UpstreamError, Upstreams

log = logging.getLogger(__name__)

IDLE, HEAD, BODY, BUSY = range(4)  # what a client connection is waiting for
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 1.0


class ClientConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.upstream: UpstreamConnection | None = None
        self.phase = IDLE
        self.deadline = 0.0
        self.closed = False
        self._reader = RequestReader(gateway.settings.limits)
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        gw = self.gateway
        if len(gw.connections) >= gw.settings.limits.max_connections:
            gw.metrics.reject("connections")
            body = openai_error(503, "the gateway is at its connection limit", "overloaded")
            self._close_with(503, body, (b"Retry-After", b"1"))
            return
        gw.connections.add(self)
        self.deadline = monotonic() + gw.settings.limits.header_timeout  # the first request's head
        self._task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # lingering: what a refused client still sends is dropped
        reader = self._reader
        try:
            reader.feed(data)
        except RequestError as exc:
            self.gateway.metrics.reject(exc.reason)
            self._close_with(exc.status, openai_error(exc.status, str(exc), "invalid_request_error", exc.reason))
            return
        if self.phase == IDLE and reader.head_started:
            self.phase = HEAD
            self.deadline = monotonic() + self.gateway.settings.limits.header_timeout
        if self.phase == HEAD and reader.in_body:
            self.phase = BODY
            self.deadline = monotonic() + self.gateway.settings.limits.body_timeout
            if reader.wants_continue and self.transport is not None:
                reader.wants_continue = False
                self.transport.write(CONTINUE)
        if reader.ready:
            if self.phase != BUSY:
                self.phase = BUSY
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(None)
            if len(reader.ready) > 1 and self.transport is not None:
                self.transport.pause_reading()  # pipelined requests: one at a time

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a request in flight: its upstream request is cancelled too

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- for the proxy ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals ----------------------------------------------------------------------------

    def _close_with(self, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
        if self.transport is None or self.closed:
            return
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
            *extra,
            (b"Connection", b"close"),
        ]
        self.transport.write(response_head(status, headers) + body)
        self.closed = True
        # A lingering close: stop writing, drop what the client still sends for a moment, then
        # close; closing at once with unread bytes would reset the connection and the client
        # might never read the answer.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    async def _serve(self) -> None:
        gw = self.gateway
        reader = self._reader
        try:
            while not self.closed:
                if not reader.ready:
                    if gw.proxy.draining:
                        break
                    self._waiter = self.loop.create_future()
                    await self._waiter
                    self._waiter = None
                    continue
                req: Request = reader.ready.popleft()
                self.phase = BUSY
                if not reader.ready and self.transport is not None:
                    self.transport.resume_reading()
                keep = await gw.proxy.handle(self, req)
                if not keep or self.closed:
                    break
                self.phase = IDLE if not reader.head_started else HEAD
                self.deadline = monotonic() + (
                    gw.settings.limits.keepalive_timeout if self.phase == IDLE else gw.settings.limits.header_timeout
                )
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("request failed inside the gateway")
            self._close_with(500, openai_error(500, "internal gateway error", "internal_error"))
        finally:
            if not self.closed and self.transport is not None:
                self.closed = True
                self.transport.close()

    def check(self, now: float) -> None:
        """Called by the ticker: enforce the client-side deadlines."""
        if self.phase == BUSY or now <= self.deadline or self.closed:
            return
        if self.phase == IDLE:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        reason = "header_timeout" if self.phase == HEAD else "body_timeout"
        self.gateway.metrics.reject(reason)
        self._close_with(408, openai_error(408, f"the request did not arrive in time ({reason})", "timeout", reason))

    def close_if_idle(self) -> None:
        if self.phase == IDLE and not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class Ticker:
    """Every tick: the client connections' and the upstream exchanges' deadlines, the access
    log's pending lines; every second: the routing files."""

    def __init__(
        self,
        seconds: float,
        connections: set[ClientConnection],
        upstreams: Upstreams,
        files: RoutingFiles,
        access_log: AccessLog | None,
    ) -> None:
        self.seconds = seconds
        self.connections, self.upstreams, self.files, self.access_log = connections, upstreams, files, access_log

    async def run(self) -> None:
        last_poll = 0.0
        while True:
            await asyncio.sleep(self.seconds)
            now = monotonic()
            for conn in list(self.connections):
                conn.check(now)
            for up in self.upstreams.busy():
                reason = up.expired(now)
                if reason is not None:
                    up.fail(UpstreamError(reason, f"the endpoint did not answer in time ({reason})"))
            if now - last_poll >= 1.0:
                last_poll = now
                self.files.poll()
            if self.access_log is not None:
                self.access_log.flush()


class Gateway:
    """Builds the parts (routes, upstreams, metrics, the proxy, the sources of tables) and runs
    the listeners, the ticker and the load scraper; graceful shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.load = LoadScraper()  # engine load for LeastLoaded/PrefixAffinity pools, scraped on the gateway's loop
        routes = Routes(s.outliers, s.retries, s.retry_budget_ratio, s.retry_budget_burst, self.load)
        upstreams = Upstreams(s.timeouts, s.upstream_idle_connections)
        # an endpoint that left every table: its kept-alive connections close
        routes.on_change.append(lambda: upstreams.retain(routes.endpoints()))
        self.metrics = GatewayMetrics(
            lambda: [(r.namespace, r.name, r.in_flight) for r in routes.pools.values()], upstreams.open_connections
        )
        keys = ApiKeys("/".join(s.api_keys_secret)) if s.api_keys_secret else None
        access_log = AccessLog() if s.access_log else None
        self.proxy = Proxy(s, routes, upstreams, self.metrics, keys, access_log)
        self.connections: set[ClientConnection] = set()
        self.sources = Sources(routes, s.routing_files, s.namespaces, s.api_keys_secret, self._apply_keys)
        self.ticker = Ticker(s.tick_seconds, self.connections, upstreams, self.sources.files, access_log)
        self.admin = AdminListener(self.metrics, lambda: self.ready)
        self.stopping = False
        self._listener: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the ticker, the load scraper
        self._stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        keys = self.proxy.keys
        return not self.stopping and self.sources.ready and (keys is None or keys.loaded)

    def _apply_keys(self, data: dict[str, str] | None) -> None:
        keys = self.proxy.keys
        assert keys is not None
        if data is None:
            keys.clear()
            keys.loaded = True  # fail closed: no Secret, no key
        else:
            keys.load(data)

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.sources.start(loop)
        host, port = s.listen
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._listener = await loop.create_server(lambda: ClientConnection(self), sock=sock, backlog=4096)
        ahost, aport = s.admin_listen
        await self.admin.start(ahost, aport)
        self._tasks = [loop.create_task(self.ticker.run()), loop.create_task(self.load.run())]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.shutdown()))
        log.info("gateway listening on %s:%d, admin on %s:%d", host, port, ahost, aport)

    async def shutdown(self) -> None:
        """Not ready at once; after the drain delay, stop accepting and close idle
        connections; requests in flight get the grace period, then everything closes."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: not ready; in-flight requests get %.0fs", self.settings.grace_seconds)
        await asyncio.sleep(self.settings.drain_delay_seconds)
        self.proxy.draining = True
        if self._listener is not None:
            self._listener.close()
        deadline = monotonic() + self.settings.grace_seconds
        while monotonic() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        self.proxy.upstreams.close()
        self.load.stop()
        await self._tasks[1]
        self.sources.stop()
        if self.proxy.access_log is not None:
            self.proxy.access_log.flush()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def run(settings: Settings) -> None:
    gw = Gateway(settings)
    await gw.start()
    await gw.wait_stopped()
