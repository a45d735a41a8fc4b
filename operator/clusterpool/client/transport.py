"""httpx transports that route every request of a client to the pool.

    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    http = httpx.Client(transport=PoolTransport(pool))               # sync
    ahttp = httpx.AsyncClient(transport=AsyncPoolTransport(pool))    # async
    openai.OpenAI(base_url="http://pool/v1", api_key="...", http_client=http)

The host of the request URL is replaced by the chosen endpoint's address and port. A
request that could not connect is retried on another endpoint whatever its method
(nothing reached the server); an idempotent one (GET, HEAD, OPTIONS, PUT, DELETE) is also
retried after a read error or a 502/503/504. Retries are bounded by `PoolClient.retries`
and its RetryBudget. The endpoint counts as in flight until the response is closed, so
LeastConnections and Adaptive see streaming answers for as long as they stream. The
header `X-ClusterPool-Key` (or the `key` function) feeds ConsistentHash. The header
`X-ClusterPool-Selector: model=llama-3-8b,zone=a` (or the `selector` function) keeps the
request on the endpoints with those labels; when all of them are at capacity the request
waits up to the PoolClient's `capacity_wait`, then raises CapacityError. Both headers are
removed before the request leaves.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import httpx

from clusterpool.balancer import Target
from clusterpool.client.pool import PoolClient
from clusterpool.core.labels import Selector, as_selector

KEY_HEADER = "x-clusterpool-key"
SELECTOR_HEADER = "x-clusterpool-selector"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)

KeyFn = Callable[[httpx.Request], str | None]
SelectorFn = Callable[[httpx.Request], Mapping[str, str] | None]


def _key(request: httpx.Request, fn: KeyFn | None) -> str | None:
    return fn(request) if fn is not None else request.headers.get(KEY_HEADER)


def _selector(request: httpx.Request, fn: SelectorFn | None) -> Selector:
    return as_selector(fn(request) if fn is not None else request.headers.get(SELECTOR_HEADER))


def _to(request: httpx.Request, target: Target, scheme: str) -> httpx.Request:
    url = request.url.copy_with(scheme=scheme, host=target.address, port=target.port)
    headers = httpx.Headers(request.headers)
    headers["host"] = url.netloc.decode("ascii")
    headers.pop(KEY_HEADER, None)
    headers.pop(SELECTOR_HEADER, None)
    return httpx.Request(request.method, url, headers=headers, stream=request.stream, extensions=request.extensions)


class _Done:
    """Call the pool's `finished` once, when the response is closed."""

    def __init__(self, pool: PoolClient, target: Target, latency: float, ok: bool) -> None:
        self.pool, self.target, self.latency, self.ok = pool, target, latency, ok
        self.called = False

    def __call__(self) -> None:
        if not self.called:
            self.called = True
            self.pool.finished(self.target, self.latency, self.ok)


class _TrackedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, done: _Done) -> None:
        self.inner, self.done = inner, done

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.done()


class _AsyncTrackedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, done: _Done) -> None:
        self.inner, self.done = inner, done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.done()


class _Attempts:
    """The retry decisions, shared by the sync and async transports."""

    def __init__(self, pool: PoolClient, request: httpx.Request, selector: Selector) -> None:
        self.pool = pool
        self.selector = selector
        self.idempotent = request.method in IDEMPOTENT
        self.tried: set[str] = set()
        self.retries = 0
        pool.budget.deposit()

    def may_retry(self, connect_failed: bool) -> bool:
        if not (connect_failed or self.idempotent):
            return False
        if self.retries >= self.pool.retries or len(self.tried) >= self.pool.matching(self.selector):
            return False
        if not self.pool.budget.withdraw():
            return False
        self.retries += 1
        return True


class PoolTransport(httpx.BaseTransport):
    def __init__(
        self,
        pool: PoolClient,
        transport: httpx.BaseTransport | None = None,
        *,
        scheme: str = "http",
        key: KeyFn | None = None,
        selector: SelectorFn | None = None,
    ) -> None:
        self.pool = pool
        self.inner = transport or httpx.HTTPTransport()
        self.scheme = scheme
        self.key = key
        self.selector = selector

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        selector = _selector(request, self.selector)
        attempts = _Attempts(self.pool, request, selector)
        key = _key(request, self.key)
        while True:
            target = self.pool.acquire(key, attempts.tried, selector)
            attempts.tried.add(target.name)
            start = time.perf_counter()
            try:
                response = self.inner.handle_request(_to(request, target, self.scheme))
            except httpx.TransportError as exc:
                self.pool.finished(target, time.perf_counter() - start, False)
                if attempts.may_retry(isinstance(exc, CONNECT_ERRORS)):
                    continue
                raise
            latency = time.perf_counter() - start
            if response.status_code in RETRY_STATUSES and attempts.may_retry(False):
                response.close()
                self.pool.finished(target, latency, False)
                continue
            done = _Done(self.pool, target, latency, response.status_code < 500)
            assert isinstance(response.stream, httpx.SyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_TrackedStream(response.stream, done),
                extensions=response.extensions,
            )

    def close(self) -> None:
        self.inner.close()


class AsyncPoolTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        pool: PoolClient,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        scheme: str = "http",
        key: KeyFn | None = None,
        selector: SelectorFn | None = None,
    ) -> None:
        self.pool = pool
        self.inner = transport or httpx.AsyncHTTPTransport()
        self.scheme = scheme
        self.key = key
        self.selector = selector

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        selector = _selector(request, self.selector)
        attempts = _Attempts(self.pool, request, selector)
        key = _key(request, self.key)
        while True:
            target = await self.pool.acquire_async(key, attempts.tried, selector)
            attempts.tried.add(target.name)
            start = time.perf_counter()
            try:
                response = await self.inner.handle_async_request(_to(request, target, self.scheme))
            except httpx.TransportError as exc:
                self.pool.finished(target, time.perf_counter() - start, False)
                if attempts.may_retry(isinstance(exc, CONNECT_ERRORS)):
                    continue
                raise
            latency = time.perf_counter() - start
            if response.status_code in RETRY_STATUSES and attempts.may_retry(False):
                await response.aclose()
                self.pool.finished(target, latency, False)
                continue
            done = _Done(self.pool, target, latency, response.status_code < 500)
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_AsyncTrackedStream(response.stream, done),
                extensions=response.extensions,
            )

    async def aclose(self) -> None:
        await self.inner.aclose()
