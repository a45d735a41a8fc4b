"""Hedged requests in the gateway (the table's `hedging`, spec.hedging): attempts raced
over endpoints until the first response head, the losers cancelled.

An attempt whose head has not come by `after` gets a hedge to an endpoint not tried yet,
chosen by the pool's strategy (PoolRoute.acquire, as retries choose), at most `maxHedges`
of them; the first head wins and is relayed; every other attempt is cancelled and its
upstream connection closed, never kept for another request. A failed attempt, or an
answer that would be retried (a 502/503/504, a 429), drops out of the race; once none is
left it is retried as without hedging. Hedges and retries draw from the pool's one
RetryBudget. Only requests safe to resend before output starts are hedged (the proxy
decides, as for retries).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, NamedTuple

from clusterpool.balancer import NoEndpointError, Target
from clusterpool.client.outlier import GATEWAY_FAILURE
from clusterpool.client.pool import CapacityError
from clusterpool.core.hedging import HedgePolicy
from clusterpool.core.labels import Selector
from clusterpool.gateway.http1 import Request
from clusterpool.gateway.routes import RETRY_STATUSES, PoolRoute
from clusterpool.gateway.upstream import EndpointPool, Head, UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from clusterpool.gateway.proxy import ClientSide, Outcome, Proxy


class Outgoing(NamedTuple):
    """The request as it goes to any endpoint: its line up to Host, all after the Host line."""

    line: bytes
    rest: bytes
    request_by: float
    head_only: bool


class Runner:
    """One attempt in the race: where it went, its connection once it has one, its task."""

    __slots__ = ("endpoint", "hedge", "t0", "target", "upstream")

    def __init__(self, target: Target, endpoint: EndpointPool, hedge: bool) -> None:
        self.target, self.endpoint, self.hedge = target, endpoint, hedge
        self.upstream: UpstreamConnection | None = None
        self.t0 = monotonic()

    def send(self, req: Outgoing) -> asyncio.Future[Head]:
        """The response head to come: on a kept-alive connection the exchange's own future,
        else a task that connects first."""
        upstream = self.endpoint.take_idle()
        if upstream is None:
            return asyncio.ensure_future(self._connect_and_send(req))
        self.upstream = upstream
        return upstream.send(req.line + self.endpoint.host + req.rest, req.request_by, req.head_only)

    async def _connect_and_send(self, req: Outgoing) -> Head:
        upstream = self.upstream = await self.endpoint.connect()
        return await upstream.send(req.line + self.endpoint.host + req.rest, req.request_by, req.head_only)

    def cancel(self, task: asyncio.Future[Head]) -> None:
        """Stop it: its connection closed (the endpoint sees it go), not returned to the pool."""
        task.cancel()
        if self.upstream is not None:
            self.upstream.close()


class Race:
    def __init__(
        self,
        proxy: Proxy,
        route: PoolRoute,
        policy: HedgePolicy,
        pick: tuple[str | None, Selector | None],  # the request's key and selector
        outgoing: Outgoing,
        out: Outcome,
    ) -> None:
        self.proxy, self.route, self.policy, self.pick, self.outgoing = proxy, route, policy, pick, outgoing
        self.out = out
        self.running: dict[asyncio.Future[Head], Runner] = {}
        self.tried: set[str] = set()
        self.hedges = self.retries = 0
        self.hedging = True  # false once the budget or the endpoints ran out
        self.stale_retry_used = False

    # -- starting attempts --------------------------------------------------------------------

    def _start(self, hedge: bool) -> None:
        """Another attempt, at an endpoint not tried yet; raises NoEndpointError, CapacityError."""
        target = self.route.acquire(self.pick[0], self.tried, self.pick[1])
        self.tried.add(target.name)
        self.out.attempts += 1
        runner = Runner(target, self.proxy.upstreams.pool(target.address, target.port), hedge)
        self.running[runner.send(self.outgoing)] = runner

    def _may_hedge(self) -> bool:
        matching = self.route.client.matching(self.pick[1])
        return self.hedging and self.policy.allows(self.hedges, len(self.tried), matching)

    def _hedge(self) -> None:
        route = self.route
        if not route.client.budget.withdraw():
            self.hedging = False
            return
        try:
            self._start(hedge=True)
        except (NoEndpointError, CapacityError):
            self.hedging = False
            return
        self.hedges += 1
        self.proxy.metrics.hedged(route.namespace, route.name)

    def _retry(self, reason: str) -> bool:
        """With no attempt left racing: whether a retry went out."""
        route = self.route
        if not self.proxy._may_retry(route, True, self.tried, self.pick[1], self.retries):
            return False
        self.retries += 1
        self.proxy.metrics.retried(route.namespace, route.name, reason)
        self._start(hedge=False)
        return True

    # -- the race -----------------------------------------------------------------------------

    async def answer(self, client: ClientSide, req: Request, keep: bool, start: float) -> bool:
        """Race the attempts, then relay the winner's answer or say why there is none."""
        proxy, route = self.proxy, self.route
        try:
            self._start(hedge=False)
        except CapacityError:
            return proxy._at_capacity(client, self.out, keep, route)
        except NoEndpointError as exc:
            return proxy._no_endpoint(client, self.out, keep, route, None, exc)
        last: tuple[Target, UpstreamError] | None = None
        try:
            while True:
                timeout = self.policy.after if self._may_hedge() else None
                done, _ = await asyncio.wait(self.running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    self._hedge()
                    continue
                for task in done:
                    runner = self.running.pop(task)
                    try:
                        head = task.result()
                    except UpstreamError as exc:
                        last = (runner.target, exc)
                        if self._failed(runner, exc):
                            continue
                        return proxy._upstream_failed(client, self.out, keep, runner.target, exc)
                    if self._dropped(runner, head):
                        continue
                    upstream = runner.upstream
                    assert upstream is not None
                    self._cancel_rest()
                    if runner.hedge:
                        proxy.metrics.hedge_won(route.namespace, route.name)
                    client.upstream = upstream
                    return await proxy._relay(
                        client, req, route, runner.target, runner.endpoint, upstream, head, self.out, keep, start,
                        runner.t0,
                    )  # fmt: skip
        except CapacityError:
            return proxy._at_capacity(client, self.out, keep, route)
        except NoEndpointError as exc:
            return proxy._no_endpoint(client, self.out, keep, route, last[1] if last else None, exc)
        finally:
            self._cancel_rest()

    def _failed(self, runner: Runner, exc: UpstreamError) -> bool:
        """An attempt failed: whether the race goes on (others racing, or a retry went out)."""
        route, up = self.route, runner.upstream
        stale = up is not None and up.reused and exc.reason == "reset" and not up.received
        route.client.finished(runner.target, monotonic() - runner.t0, stale)
        if stale and not self.stale_retry_used:  # a kept-alive connection the endpoint had closed
            self.stale_retry_used = True
            self.tried.discard(runner.target.name)
            if not self.running:
                self._start(hedge=False)
            return True
        self.proxy._record(route, runner.target, GATEWAY_FAILURE)
        return bool(self.running) or self._retry(exc.reason)

    def _dropped(self, runner: Runner, head: Head) -> bool:
        """An answer came: whether it drops out of the race (one that would be retried)."""
        status = head.status
        if status == 200:
            return False
        route = self.route
        overloaded = self.proxy._note_status(route, runner.target, head)
        if status not in RETRY_STATUSES:
            return False
        if not self.running and not self._retry("overloaded" if overloaded else f"status_{status}"):
            return False  # the last one standing, and no retry left: relayed as it is
        assert runner.upstream is not None
        runner.upstream.close()
        route.client.finished(runner.target, monotonic() - runner.t0, overloaded)
        if not overloaded:
            self.proxy._record(route, runner.target, GATEWAY_FAILURE)
        return True

    def _cancel_rest(self) -> None:
        running, self.running = self.running, {}
        for task, runner in running.items():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a loser's failure is no news
            runner.cancel(task)
            self.route.client.finished(runner.target, monotonic() - runner.t0, True)  # not the endpoint's fault
