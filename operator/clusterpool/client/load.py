"""Engine load where the routing happens: a scraper of the engines' load gauges, run by the
gateway and by SDK processes that opt in.

    scraper = LoadScraper(interval=0.25, on_failure=lambda addr, port, why: ...)
    scraper.watch("198.18.0.7", 8000, PROFILES["vLLM"])   # refcounted: once per endpoint
    await scraper.run()                 # or scraper.start() for a thread of its own
    scraper.load("198.18.0.7", 8000)    # a core.load.Load: fresh, or SATURATED when stale

Cost is bounded: one loop, at most `concurrency` scrapes in flight and never two of the
same endpoint, one kept-alive connection per endpoint on plain asyncio streams, bodies
capped at MAX_BODY and scanned with bytes.find for the few names the profile lists (no
Prometheus parser, no per-line Python work). A reading older than `stale_after` counts as
saturated, never as idle; an endpoint that fails is retried with a backoff (up to
MAX_BACKOFF) and reported to `on_failure` (passive health), never in a tight loop. A
gauge the metrics lack is a flag on the reading (`Load.missing`), not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from clusterpool.core.load import NO_SIGNAL, SATURATED, Load
from clusterpool.engines.profiles import EngineProfile, Gauge

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # a vLLM /metrics with many histograms is a few hundred KB
MAX_HEAD = 16 * 1024
MAX_BACKOFF = 2.0  # seconds between attempts at an endpoint that keeps failing
USER_AGENT = "clusterpool-load/0.1"

Key = tuple[str, int]
FailureHook = Callable[[str, int, str], None]
SuccessHook = Callable[[str, int], None]


class ScrapeError(Exception):
    """A scrape that gave no reading; the message says why, for the failure hook."""


def gauge_value(body: bytes, name: bytes) -> float | None:
    """The sum of the samples of metric `name` in Prometheus text (one per label set), or
    None when it has none. Only lines that start with the name are looked at."""
    total, found, pos = 0.0, False, 0
    while True:
        at = body.find(name, pos)
        if at < 0:
            return total if found else None
        pos = at + len(name)
        if (at > 0 and body[at - 1] != 0x0A) or pos >= len(body) or body[pos] not in b"{ ":
            continue  # inside another line (a # HELP text) or a longer name
        end = body.find(b"\n", pos)
        line = body[pos : end if end >= 0 else len(body)]
        if line[:1] == b"{":
            close = line.rfind(b"}")
            line = line[close + 1 :] if close >= 0 else b""
        fields = line.split()
        if fields:
            try:
                total += float(fields[0])
                found = True
            except ValueError:
                pass


def read_gauges(body: bytes, gauges: tuple[Gauge, ...]) -> tuple[dict[str, float], tuple[str, ...]]:
    """Each gauge's value under the first of its names present, and the gauges found under none."""
    values: dict[str, float] = {}
    missing = []
    for g in gauges:
        for name in g.names:
            v = gauge_value(body, name.encode())
            if v is not None:
                values[g.kind] = v
                break
        else:
            missing.append(g.kind)
    return values, tuple(missing)


# what a failed scrape raises (anything else is a bug, not the engine's doing)
SCRAPE_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ScrapeError)


class MetricsConnection:
    """GET one path over a kept-alive HTTP/1.1 connection (reopened when the server closed
    it), reading a Content-Length or chunked body of at most MAX_BODY bytes."""

    def __init__(self, address: str, port: int, path: str) -> None:
        authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.address, self.port = address, port
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: text/plain\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self) -> bytes:
        reused = self._conn is not None
        try:
            return await self._exchange()
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            return await self._exchange()  # the idle connection was closed meanwhile
        except BaseException:
            self.close()
            raise

    async def _exchange(self) -> bytes:
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.address, self.port, limit=MAX_HEAD)
        reader, writer = self._conn
        writer.write(self.request)
        await writer.drain()
        status = await reader.readuntil(b"\n")
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ScrapeError(f"not an HTTP/1.x answer: {status[:40]!r}")
        headers: dict[bytes, bytes] = {}
        while True:
            line = (await reader.readuntil(b"\n")).strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = await self._chunked(reader)
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            if length > MAX_BODY:
                raise ScrapeError(f"metrics body of {length} bytes, more than {MAX_BODY}")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(MAX_BODY)
            self.close()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        code = int(parts[1]) if parts[1].isdigit() else 0
        if code != 200:
            raise ScrapeError(f"HTTP {code}")
        return body

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\n")).strip():
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise ScrapeError(f"metrics body over {MAX_BODY} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].transport.abort()


@dataclass
class Watched:
    """One scraped endpoint: its profile, how many pools hold it, its connection, and the
    backoff state of an endpoint that fails."""

    profile: EngineProfile
    conn: MetricsConnection | None
    holders: int = 1
    failures: int = 0
    next_at: float = 0.0
    busy: bool = False  # a scrape is in flight


@dataclass(frozen=True)
class Reading:
    load: Load
    at: float


class ScrapeHooks:
    """Who hears of scrapes: `on_success` of each that gave a reading, and every subscribed
    failure hook of each that failed (the pool clients' breakers: passive health)."""

    def __init__(self, on_failure: FailureHook | None, on_success: SuccessHook | None) -> None:
        self.on_success = on_success
        self._on_failure: list[FailureHook] = [on_failure] if on_failure is not None else []

    def subscribe(self, on_failure: FailureHook) -> Callable[[], None]:
        self._on_failure.append(on_failure)
        return lambda: self._on_failure.remove(on_failure) if on_failure in self._on_failure else None

    def failed(self, address: str, port: int, why: str) -> None:
        for hook in list(self._on_failure):
            hook(address, port, why)

    def succeeded(self, address: str, port: int) -> None:
        if self.on_success is not None:
            self.on_success(address, port)


class ScrapeLoop:
    """Where the scraper runs: the event loop of run() (entered there), the thread start()
    made for it, and the stop signal, settable from any thread."""

    def __init__(self) -> None:
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def enter(self) -> asyncio.Event:
        """Called by run() on its loop: the event that says stop."""
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        return self._stop

    def call(self, fn: Callable[[], object]) -> None:
        """Call `fn` on the scraper's loop when it runs (from any thread), else now."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(fn)
        else:
            fn()

    def start_thread(self, main: Callable[[], Coroutine[object, object, None]]) -> bool:
        """Run `main()` in a daemon thread with its own event loop; False when one runs already."""
        if self._thread is not None:
            return False
        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="clusterpool-load")
        self._thread.start()
        return True

    def stop(self) -> None:
        """Set the stop event (from any thread) and, when start_thread made one, join its thread."""
        if self._stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class LoadScraper:
    """See the module docstring. `load()` is the LoadView the strategies read; it is safe
    to call from any thread."""

    def __init__(
        self,
        interval: float = 0.25,
        stale_after: float | None = None,
        concurrency: int = 32,
        on_failure: FailureHook | None = None,
        on_success: SuccessHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.stale_after = stale_after if stale_after is not None else 4 * interval
        self._hooks = ScrapeHooks(on_failure, on_success)
        self._clock = clock
        self._limit = concurrency
        self._watched: dict[Key, Watched] = {}
        self._readings: dict[Key, Reading] = {}
        self._busy_until: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._running = ScrapeLoop()
        self.scrapes = 0  # done (succeeded or failed), for tests and the cost figures

    @property
    def on_success(self) -> SuccessHook | None:
        return self._hooks.on_success

    @on_success.setter
    def on_success(self, hook: SuccessHook | None) -> None:
        self._hooks.on_success = hook

    # -- what to scrape ----------------------------------------------------------------------

    def watch(self, address: str, port: int, profile: EngineProfile) -> None:
        """Scrape this endpoint (once, however many pools watch it)."""
        with self._lock:
            w = self._watched.get((address, port))
            if w is not None:
                w.holders += 1
                return
            path = profile.metrics_path
            conn = MetricsConnection(address, port, path) if path is not None else None
            self._watched[(address, port)] = Watched(profile, conn)

    def unwatch(self, address: str, port: int) -> None:
        with self._lock:
            w = self._watched.get((address, port))
            if w is None:
                return
            w.holders -= 1
            if w.holders <= 0:
                del self._watched[(address, port)]
                self._readings.pop((address, port), None)
                if w.conn is not None:  # its transport belongs to the scraper's loop
                    self._running.call(w.conn.close)

    def watched(self) -> list[Key]:
        return list(self._watched)

    def subscribe(self, on_failure: FailureHook) -> Callable[[], None]:
        """Also tell `on_failure` of failed scrapes (each pool client of the process feeds its
        breakers with them); returns the call that unsubscribes it."""
        return self._hooks.subscribe(on_failure)

    def report_busy(self, address: str, port: int, seconds: float = 1.0) -> None:
        """A passive signal: the engine answered that its queue is full (Ollama's 503); it
        counts as saturated for `seconds`."""
        self._busy_until[(address, port)] = self._clock() + seconds

    # -- the view ----------------------------------------------------------------------------

    def load(self, address: str, port: int) -> Load:
        key = (address, port)
        now = self._clock()
        if self._busy_until.get(key, 0.0) > now:
            return SATURATED
        w = self._watched.get(key)
        if w is None or w.conn is None:
            return NO_SIGNAL  # not scraped (no metrics): client-side signals only
        r = self._readings.get(key)
        if r is None or now - r.at > self.stale_after:
            return SATURATED
        return r.load

    # -- scraping ----------------------------------------------------------------------------

    async def scrape(self, address: str, port: int) -> Load | None:
        """Scrape one watched endpoint now; its reading, or None when it failed."""
        w = self._watched.get((address, port))
        if w is None or w.conn is None:
            return None
        w.busy = True
        try:
            async with asyncio.timeout(self.stale_after):
                body = await w.conn.get()
        except SCRAPE_ERRORS as exc:
            w.conn.close()
            self._failed(w, address, port, _why(exc))
            return None
        finally:
            w.busy = False
            self.scrapes += 1
        values, missing = read_gauges(body, w.profile.gauges)
        load = Load(values.get("waiting"), values.get("running"), values.get("kvUsage"), missing=missing)
        if missing and (address, port) not in self._readings:
            log.info("%s:%s (%s) reports no %s: those count from client-side signals", address, port,
                     w.profile.engine, ", ".join(missing))  # fmt: skip
        self._readings[(address, port)] = Reading(load, self._clock())
        w.failures, w.next_at = 0, 0.0
        self._hooks.succeeded(address, port)
        return load

    def _failed(self, w: Watched, address: str, port: int, why: str) -> None:
        w.failures += 1
        w.next_at = self._clock() + min(MAX_BACKOFF, self.interval * 2 ** (w.failures - 1))
        self._hooks.failed(address, port, why)

    async def run(self) -> None:
        """Scrape every watched endpoint each `interval` until stop()."""
        stop = self._running.enter()
        inflight: set[asyncio.Task[Load | None]] = set()
        try:
            while not stop.is_set():
                started = self._clock()
                for (address, port), w in list(self._watched.items()):
                    if len(inflight) >= self._limit:
                        break
                    if w.conn is None or w.busy or w.next_at > started:
                        continue
                    task = asyncio.ensure_future(self.scrape(address, port))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                left = self.interval - (self._clock() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(left, 0.001))
        finally:
            for task in list(inflight):
                task.cancel()
            for w in list(self._watched.values()):
                if w.conn is not None:
                    w.conn.close()

    def stop(self) -> None:
        """End run() (from any thread) and, when start() made one, join its thread."""
        self._running.stop()

    def start(self) -> LoadScraper:
        """run() in a daemon thread with its own event loop (for a synchronous client)."""
        ready = threading.Event()

        async def main() -> None:
            task = asyncio.ensure_future(self.run())
            await asyncio.sleep(0)
            ready.set()
            await task

        if self._running.start_thread(main):
            ready.wait(5)
        return self


def failure_reason(exc: BaseException) -> tuple[str, str]:
    """A failed scrape as a reason (one CamelCase word) and a message for people."""
    if isinstance(exc, TimeoutError):
        return "MetricsTimeout", "no answer from the metrics endpoint in time"
    if isinstance(exc, ConnectionRefusedError):
        return "ConnectionRefused", "the metrics endpoint refused the connection"
    if isinstance(exc, ScrapeError):
        return "MetricsError", str(exc)
    return "MetricsFailed", f"{exc.__class__.__name__}: {exc}"


def _why(exc: BaseException) -> str:
    return "{}: {}".format(*failure_reason(exc))


class ScrapedPool:
    """What one pool client has the scraper watch: the eligible endpoints of its routing
    table while its strategy reads engine load, and its breakers told of failed scrapes."""

    def __init__(self, scraper: LoadScraper, on_failure: FailureHook) -> None:
        self.scraper = scraper
        self._watched: frozenset[Key] = frozenset()
        self._unsubscribe = scraper.subscribe(on_failure)

    def follow(self, endpoints: frozenset[Key], profile: EngineProfile | None) -> None:
        """Watch `endpoints` with `profile` (None: watch nothing), and no others."""
        want = endpoints if profile is not None else frozenset()
        for address, port in want - self._watched:
            assert profile is not None
            self.scraper.watch(address, port, profile)
        for address, port in self._watched - want:
            self.scraper.unwatch(address, port)
        self._watched = want

    def close(self) -> None:
        self.follow(frozenset(), None)
        self._unsubscribe()


_shared: LoadScraper | None = None
_shared_lock = threading.Lock()


def shared_scraper() -> LoadScraper:
    """The process's scraper (started in a thread on first use): every pool client of the
    process that opts in shares it, so an endpoint is scraped once however many pools hold it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoadScraper().start()
        return _shared
