"""httpx transports that route every request of a client to the pool.

    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    http = httpx.Client(transport=PoolTransport(pool))               # sync
    ahttp = httpx.AsyncClient(transport=AsyncPoolTransport(pool))    # async
    openai.OpenAI(base_url="http://pool/v1", api_key="...", http_client=http)

(`clusterpool.client.httpx_client(path)` builds the three in one line.)

The host of the request URL is replaced by the chosen endpoint's address and port. Until
the response's first byte, a failed attempt moves the request to another eligible
endpoint, never one already tried, within `PoolClient.retries` and its RetryBudget:
- a connect error (or a pool timeout): whatever the method, since nothing reached a server;
- a reset, a timeout, a protocol error or a 502/503/504: for idempotent methods (GET, HEAD,
  OPTIONS, PUT, DELETE) and for POSTs to the inference paths (/v1/chat/completions,
  /v1/completions, /v1/embeddings, /v1/responses, under any prefix), which are safe to
  resend until output starts; their body must be replayable (httpx's `content=`/`json=`).
Once the response has begun, nothing is retried. With the table's `hedging` (spec.hedging),
AsyncPoolTransport also races such a request over endpoints: see _HedgedRequest. The endpoint counts as in flight until
the response is closed, so LeastConnections and Adaptive see streaming answers for as long
as they stream. Every response names the endpoint that served it in the header
`X-ClusterPool-Endpoint` and in `response.extensions["clusterpool_endpoint"]`.

The header `X-ClusterPool-Key` (or the `key` function) feeds ConsistentHash. The header
`X-ClusterPool-Selector: model=llama-3-8b,zone=a` (or the `selector` function) keeps the
request on the endpoints with those labels; when all of them are at capacity the request
waits up to the PoolClient's `capacity_wait`, then raises CapacityError. Both headers are
removed before the request leaves.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import httpx

from clusterpool.balancer import Target
from clusterpool.client.errors import CapacityError, NoEndpointError
from clusterpool.client.pool import PoolClient
from clusterpool.core.hedging import HedgePolicy
from clusterpool.core.labels import Selector, as_selector

KEY_HEADER = "x-clusterpool-key"
SELECTOR_HEADER = "x-clusterpool-selector"
ENDPOINT_HEADER = "X-ClusterPool-Endpoint"  # the gateway names the serving endpoint the same way
ENDPOINT_EXTENSION = "clusterpool_endpoint"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
RETRY_STATUSES = frozenset({502, 503, 504})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # nothing reached a server
CONNECT_ERRORS = NOT_SENT  # the old name
URL_CACHE = 1024  # rewritten URLs kept (per transport), by endpoint and request URL

_ROUTING = frozenset({KEY_HEADER.encode(), SELECTOR_HEADER.encode()})
_NAME = operator.itemgetter(0)

KeyFn = Callable[[httpx.Request], str | None]
SelectorFn = Callable[[httpx.Request], Mapping[str, str] | None]


def resendable(request: httpx.Request) -> bool:
    """Whether the request may be sent again after it reached a server, until the response
    begins: an idempotent method, or a POST to an inference path with a replayable body."""
    if request.method in IDEMPOTENT:
        return True
    return (
        request.method == "POST"
        and request.url.path.endswith(INFERENCE_PATHS)
        and isinstance(request.stream, httpx.ByteStream)
    )


class _Attempt:
    """One request's way through the pool: its key and selector, the headers it leaves
    with, the endpoints tried, and whether a failure may move it to another."""

    __slots__ = ("headers", "key", "request", "retries", "selector", "tried")

    def __init__(self, router: _Router, request: httpx.Request) -> None:
        key: str | None = None
        selector_text: str | None = None
        headers = request.headers
        if not _ROUTING.isdisjoint(map(bytes.lower, map(_NAME, headers.raw))):  # rare: drop them from a copy
            key, selector_text = headers.get(KEY_HEADER), headers.get(SELECTOR_HEADER)
            headers = httpx.Headers(headers)
            headers.pop(KEY_HEADER, None)
            headers.pop(SELECTOR_HEADER, None)
        self.headers = headers
        self.key = router.key(request) if router.key is not None else key
        chosen = router.selector(request) if router.selector is not None else selector_text
        self.selector: Selector = as_selector(chosen)
        self.request = request
        self.tried: set[str] = set()
        self.retries = 0


class _Router:
    """What the sync and async transports share: the request rewritten for an endpoint,
    the retry decisions and the response marked with the endpoint that served it."""

    def __init__(self, pool: PoolClient, scheme: str, key: KeyFn | None, selector: SelectorFn | None) -> None:
        self.pool, self.scheme, self.key, self.selector = pool, scheme, key, selector
        self._urls: dict[tuple[str, int, bytes], tuple[httpx.URL, str]] = {}

    def start(self, request: httpx.Request) -> _Attempt:
        self.pool.budget.deposit()
        return _Attempt(self, request)

    def to(self, request: httpx.Request, attempt: _Attempt, target: Target) -> httpx.Request:
        """The request as it leaves for `target`: its URL's scheme, host and port replaced
        (no user info: httpx turned it into a header already), Host set to match, the
        routing headers removed."""
        attempt.tried.add(target.name)
        cache_key = (target.address, target.port, request.url.raw_path)
        cached = self._urls.get(cache_key)
        if cached is None:
            url = request.url.copy_with(scheme=self.scheme, host=target.address, port=target.port, userinfo=b"")
            cached = (url, url.netloc.decode("ascii"))
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()
            self._urls[cache_key] = cached
        out = httpx.Request(
            request.method, cached[0], headers=attempt.headers, stream=request.stream, extensions=request.extensions
        )
        out.headers["Host"] = cached[1]
        return out

    def may_retry(self, attempt: _Attempt, error: Exception | None) -> bool:
        """After a transport error (`error`) or a 502/503/504 (None), before the response
        began: whether the request moves to another endpoint. Spends a retry and a token
        of the budget when it does."""
        if not (isinstance(error, NOT_SENT) or resendable(attempt.request)):
            return False
        pool = self.pool
        if attempt.retries >= pool.retries or len(attempt.tried) >= pool.matching(attempt.selector):
            return False
        if not pool.budget.withdraw():
            return False
        attempt.retries += 1
        return True

    def served(
        self,
        response: httpx.Response,
        target: Target,
        latency: float,
        tracked: type[_TrackedStream] | type[_AsyncTrackedStream],
    ) -> httpx.Response:
        """The response as the caller gets it: naming the endpoint, and telling the pool the
        request finished when it is closed (at once, if the inner transport read it whole)."""
        ok = response.status_code < 500
        if response.is_closed:
            self.pool.finished(target, latency, ok)
        else:
            response.stream = tracked(response.stream, self.pool, target, latency, ok)
        response.headers[ENDPOINT_HEADER] = target.name
        response.extensions[ENDPOINT_EXTENSION] = target.name
        return response


class _Tracked:
    """A response body whose closing tells the pool the request finished (once)."""

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        pool: PoolClient | None,
        target: Target,
        latency: float,
        ok: bool,
    ) -> None:
        self.inner, self.pool, self.target, self.latency, self.ok = inner, pool, target, latency, ok

    def _finished(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.finished(self.target, self.latency, self.ok)


class _TrackedStream(_Tracked, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self.inner, httpx.SyncByteStream)
        return iter(self.inner)

    def close(self) -> None:
        assert isinstance(self.inner, httpx.SyncByteStream)
        try:
            self.inner.close()
        finally:
            self._finished()


class _AsyncTrackedStream(_Tracked, httpx.AsyncByteStream):
    def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self.inner, httpx.AsyncByteStream)
        return self.inner.__aiter__()

    async def aclose(self) -> None:
        assert isinstance(self.inner, httpx.AsyncByteStream)
        try:
            await self.inner.aclose()
        finally:
            self._finished()


@dataclass
class HedgeCounts:
    sent: int = 0  # hedges sent
    won: int = 0  # hedges whose response head came first, and so served the request


class _HedgedRequest:
    """One request raced over endpoints (AsyncPoolTransport with the table's `hedging`): an
    attempt whose response head has not come by `policy.after` gets a hedge to an endpoint
    not tried yet, chosen by the pool's strategy; the first head wins and the other attempts
    are cancelled (their connections closed, not kept). A failed attempt is retried only once
    no other is still racing. Hedges and retries draw from the pool's one RetryBudget."""

    def __init__(
        self,
        router: _Router,
        attempt: _Attempt,
        policy: HedgePolicy,
        inner: httpx.AsyncBaseTransport,
        counts: HedgeCounts,
    ) -> None:
        self.router, self.attempt, self.policy, self.inner, self.counts = router, attempt, policy, inner, counts
        self.racing: dict[asyncio.Task[httpx.Response], tuple[Target, float]] = {}
        self.hedge_tasks: set[asyncio.Task[httpx.Response]] = set()
        self.hedges = 0
        self.hedging = True  # false once the budget or the endpoints ran out

    async def _launch(self) -> asyncio.Task[httpx.Response]:
        pool, attempt = self.router.pool, self.attempt
        target = await pool.acquire_async(attempt.key, attempt.tried, attempt.selector)
        out = self.router.to(attempt.request, attempt, target)
        task = asyncio.ensure_future(self.inner.handle_async_request(out))
        self.racing[task] = (target, time.perf_counter())
        return task

    async def _hedge(self) -> None:
        if not self.router.pool.budget.withdraw():
            self.hedging = False
            return
        try:
            task = await self._launch()
        except (CapacityError, NoEndpointError):
            self.hedging = False
            return
        self.hedge_tasks.add(task)
        self.hedges += 1
        self.counts.sent += 1

    def _may_hedge(self) -> bool:
        pool, attempt = self.router.pool, self.attempt
        return self.hedging and self.policy.allows(self.hedges, len(attempt.tried), pool.matching(attempt.selector))

    async def run(self) -> httpx.Response:
        try:
            await self._launch()
            while True:
                timeout = self.policy.after if self._may_hedge() else None
                done, _ = await asyncio.wait(self.racing, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    await self._hedge()
                    continue
                for task in done:
                    response = await self._settle(task)
                    if response is not None:
                        return response
        finally:
            await self._cancel_rest()

    async def _settle(self, task: asyncio.Task[httpx.Response]) -> httpx.Response | None:
        """An attempt that ended: its response when it wins, None when the race goes on (a
        failure while others still race, or one retried); raises when nothing is left."""
        router, pool, attempt = self.router, self.router.pool, self.attempt
        target, start = self.racing.pop(task)
        latency = time.perf_counter() - start
        try:
            response = task.result()
        except httpx.TransportError as exc:
            pool.finished(target, latency, False)
            if not self.racing:
                if not router.may_retry(attempt, exc):
                    raise
                await self._launch()
            return None
        if response.status_code in RETRY_STATUSES and (self.racing or router.may_retry(attempt, None)):
            await response.aclose()
            pool.finished(target, latency, False)
            if not self.racing:
                await self._launch()
            return None
        if task in self.hedge_tasks:
            self.counts.won += 1
        return router.served(response, target, latency, _AsyncTrackedStream)

    async def _cancel_rest(self) -> None:
        """Cancel the attempts still racing: an unfinished one is cancelled (httpx closes its
        connection), a finished one's response is closed unread (its connection too)."""
        racing, self.racing = self.racing, {}
        if not racing:
            return
        for task in racing:
            task.cancel()
        try:
            ended = await asyncio.gather(*racing, return_exceptions=True)
            for response in ended:
                if isinstance(response, httpx.Response):
                    await response.aclose()
        finally:
            for target, start in racing.values():
                self.router.pool.finished(target, time.perf_counter() - start, True)  # not the endpoint's fault


class PoolTransport(httpx.BaseTransport):
    def __init__(
        self,
        pool: PoolClient,
        transport: httpx.BaseTransport | None = None,
        *,
        scheme: str = "http",
        key: KeyFn | None = None,
        selector: SelectorFn | None = None,
        owns_pool: bool = False,
    ) -> None:
        """`owns_pool`: closing the transport closes the PoolClient (and its table source) too."""
        self.pool = pool
        self.inner = transport or httpx.HTTPTransport()
        self.scheme, self.key, self.selector = scheme, key, selector
        self.owns_pool = owns_pool
        self._router = _Router(pool, scheme, key, selector)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        router, pool = self._router, self.pool
        attempt = router.start(request)
        while True:
            target = pool.acquire(attempt.key, attempt.tried, attempt.selector)
            start = time.perf_counter()
            try:
                response = self.inner.handle_request(router.to(request, attempt, target))
            except httpx.TransportError as exc:
                pool.finished(target, time.perf_counter() - start, False)
                if router.may_retry(attempt, exc):
                    continue
                raise
            latency = time.perf_counter() - start
            if response.status_code in RETRY_STATUSES and router.may_retry(attempt, None):
                response.close()
                pool.finished(target, latency, False)
                continue
            return router.served(response, target, latency, _TrackedStream)

    def close(self) -> None:
        self.inner.close()
        if self.owns_pool:
            self.pool.close()


class AsyncPoolTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        pool: PoolClient,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        scheme: str = "http",
        key: KeyFn | None = None,
        selector: SelectorFn | None = None,
        owns_pool: bool = False,
    ) -> None:
        """`owns_pool`: closing the transport closes the PoolClient (and its table source) too."""
        self.pool = pool
        self.inner = transport or httpx.AsyncHTTPTransport()
        self.scheme, self.key, self.selector = scheme, key, selector
        self.owns_pool = owns_pool
        self._router = _Router(pool, scheme, key, selector)
        self._hedges = HedgeCounts()

    @property
    def hedges(self) -> HedgeCounts:
        """Hedges this transport sent, and how many of them won (their head came first)."""
        return self._hedges

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        router, pool = self._router, self.pool
        attempt = router.start(request)
        policy = pool.table.hedging
        if policy is not None and resendable(request):
            return await _HedgedRequest(router, attempt, policy, self.inner, self._hedges).run()
        while True:
            target = await pool.acquire_async(attempt.key, attempt.tried, attempt.selector)
            start = time.perf_counter()
            try:
                response = await self.inner.handle_async_request(router.to(request, attempt, target))
            except httpx.TransportError as exc:
                pool.finished(target, time.perf_counter() - start, False)
                if router.may_retry(attempt, exc):
                    continue
                raise
            latency = time.perf_counter() - start
            if response.status_code in RETRY_STATUSES and router.may_retry(attempt, None):
                await response.aclose()
                pool.finished(target, latency, False)
                continue
            return router.served(response, target, latency, _AsyncTrackedStream)

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self.owns_pool:
            self.pool.close()
