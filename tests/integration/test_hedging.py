"""Hedged requests (spec.hedging, the routing table's `hedging`) in the gateway and in the
SDK's AsyncPoolTransport, against real backends on loopback: a request whose first byte is
late goes to another endpoint too, the first head wins, the loser's connection is closed
(the backend sees it go), nothing is hedged after the first byte, the retry budget bounds
hedges and retries together, and the gateway and the SDK hedge to the same endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from gateway_process import GatewayProcess, routing_table

from clusterpool.client import AsyncPoolTransport, PoolClient
from clusterpool.client.pool import RetryBudget
from clusterpool.client.routing import RoutingTable, StaticTable
from conftest import wait_for
from openai_backend import OpenAIBackend

CHAT = "/v1/chat/completions"
BODY = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
HEDGE = {"afterMilliseconds": 200, "maxHedges": 1}


def hedged_table(bs: list[OpenAIBackend], strategy: str = "RoundRobin", **hedging: Any) -> dict[str, Any]:
    return {**routing_table(bs, strategy=strategy), "hedging": {**HEDGE, **hedging}}


def post(gw: GatewayProcess, body: dict[str, Any] = BODY, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + CHAT, json=body, timeout=10, **kw)


def sdk_pool(table: dict[str, Any], budget: RetryBudget | None = None) -> PoolClient:
    return PoolClient(StaticTable(RoutingTable.parse(json.dumps(table))), budget=budget)


def until_one_hangs(slow: OpenAIBackend, ask: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Requests one at a time until one went to the hanging endpoint (RoundRobin: the first
    or the second)."""
    answers = [ask()]
    if not slow.requests:
        answers.append(ask())
    assert slow.requests == 1
    return answers


def owner_of(bs: list[OpenAIBackend], key: str) -> str:
    """Which endpoint the table's strategy gives `key` first (the SDK's own choice)."""
    pool = sdk_pool(hedged_table(bs, "ConsistentHash"))
    return pool.choose(key).name


# -- the gateway ------------------------------------------------------------------------------


def test_gateway_hedges_a_late_first_byte_and_closes_the_losers_connection(openai_backends, gateway):
    slow, fast = openai_backends(2)
    slow.mode = "hang"
    gw = gateway([slow, fast], table=hedged_table([slow, fast]))
    answers = until_one_hangs(slow, lambda: post(gw))
    assert all(r.status_code == 200 and r.headers["x-clusterpool-endpoint"] == "ep-1" for r in answers)
    wait_for(lambda: slow.hung_up == 1, 5, "the hanging endpoint sees its connection closed")
    assert gw.value("clusterpool_gateway_hedges_total") == 1
    assert gw.value("clusterpool_gateway_hedges_won_total") == 1
    wait_for(lambda: gw.value("clusterpool_gateway_in_flight") == 0, 5, "nothing in flight")
    wait_for(lambda: len(gw.access_log()) == len(answers), 5, "an access-log line per request")
    hedged = [line for line in gw.access_log() if line["attempts"] == 2]
    assert len(hedged) == 1 and hedged[0]["endpoint"] == "ep-1" and hedged[0]["status"] == 200


def test_gateway_sends_up_to_max_hedges_one_deadline_apart(openai_backends, gateway):
    bs = openai_backends(3)
    bs[0].mode = bs[1].mode = "hang"
    gw = gateway(bs, table=hedged_table(bs, "ConsistentHash", maxHedges=2))
    key = next(f"k{i}" for i in range(100) if owner_of(bs, f"k{i}") == "ep-0")  # tried first: ep-0
    started = time.monotonic()
    r = post(gw, headers={"x-clusterpool-key": key})
    took = time.monotonic() - started
    assert r.status_code == 200 and r.headers["x-clusterpool-endpoint"] == "ep-2"
    assert took >= 0.4  # two deadlines of 200 ms went by before the second hedge
    assert gw.value("clusterpool_gateway_hedges_total") == 2
    assert gw.value("clusterpool_gateway_hedges_won_total") == 1
    wait_for(lambda: bs[0].hung_up == bs[1].hung_up == 1, 5, "both losers' connections closed")


def test_gateway_does_not_hedge_after_the_first_byte(openai_backends, gateway):
    bs = openai_backends(2, chunks=4, chunk_delay=0.15)  # the head at once, the stream over 0.6 s
    gw = gateway(bs, table=hedged_table(bs))
    r = post(gw, {**BODY, "stream": True})
    assert r.status_code == 200 and r.text.count("data: ") == 5
    assert gw.value("clusterpool_gateway_hedges_total") == 0
    assert sum(b.requests for b in bs) == 1


def test_gateway_hedge_budget_is_the_retry_budget(openai_backends, gateway):
    slow, fast = openai_backends(2)
    slow.mode = "hang"
    gw = gateway(
        [slow, fast],
        "--retry-budget-burst", "1", "--retry-budget-ratio", "0", "--first-byte-timeout", "1",
        table=hedged_table([slow, fast]),
    )  # fmt: skip
    codes = [post(gw).status_code for _ in range(4)]  # RoundRobin: two or three start on the hanging one
    # the first hedge spends the only token, so the next hung requests are neither hedged nor retried
    assert codes.count(504) == slow.requests - 1 >= 1, codes
    assert gw.value("clusterpool_gateway_hedges_total") == 1
    assert gw.value("clusterpool_gateway_retries_total") == 0


# -- the SDK ----------------------------------------------------------------------------------


async def _ask(transport: AsyncPoolTransport, n: int, timeout: float = 10, **headers: str) -> list[httpx.Response]:
    """`n` requests one after the other; a timeout reads as a 504."""
    async with httpx.AsyncClient(transport=transport, base_url="http://pool", timeout=timeout) as http:
        out = []
        for _ in range(n):
            try:
                out.append(await http.post(CHAT, json=BODY, headers=headers))
            except httpx.TimeoutException:
                out.append(httpx.Response(504))
        return out


def test_sdk_async_transport_hedges_and_closes_the_losers_connection(openai_backends):
    slow, fast = openai_backends(2)
    slow.mode = "hang"
    transport = AsyncPoolTransport(sdk_pool(hedged_table([slow, fast])))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://pool", timeout=30) as http:
            answers = [await http.post(CHAT, json=BODY)]
            if not slow.requests:  # RoundRobin: the first or the second goes to the hanging endpoint
                answers.append(await http.post(CHAT, json=BODY))
            # while the client is still open (closing it would close every connection anyway)
            await asyncio.to_thread(wait_for, lambda: slow.hung_up == 1, 5, "the loser's connection closed")
            return answers

    answers = asyncio.run(run())
    assert all(r.status_code == 200 and r.headers["x-clusterpool-endpoint"] == "ep-1" for r in answers)
    assert slow.requests == 1
    assert (transport.hedges.sent, transport.hedges.won) == (1, 1)


def test_sdk_does_not_hedge_after_the_first_byte(openai_backends):
    bs = openai_backends(2, chunks=4, chunk_delay=0.15)  # the head at once, the stream over 0.6 s
    transport = AsyncPoolTransport(sdk_pool(hedged_table(bs)))

    async def run() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://pool", timeout=10) as http:
            r = await http.post(CHAT, json={**BODY, "stream": True})
            return r.text

    assert asyncio.run(run()).count("data: ") == 5
    assert transport.hedges.sent == 0
    assert sum(b.requests for b in bs) == 1


def test_sdk_hedge_budget_is_the_retry_budget(openai_backends):
    slow, fast = openai_backends(2)
    slow.mode = "hang"
    transport = AsyncPoolTransport(sdk_pool(hedged_table([slow, fast]), RetryBudget(ratio=0, burst=1)))
    codes = [r.status_code for r in asyncio.run(_ask(transport, 4, timeout=1.5))]
    assert codes.count(504) == slow.requests - 1 >= 1, codes
    assert transport.hedges.sent == 1


def test_gateway_and_sdk_hedge_to_the_same_endpoint(openai_backends, gateway):
    bs = openai_backends(4)
    table = hedged_table(bs, strategy="PrefixAffinity")
    key = {"x-clusterpool-key": "tenant-7"}
    gw = gateway(bs, table=table)
    owner = post(gw, headers=key).headers["x-clusterpool-endpoint"]
    hung = next(b for b in bs if b.name == owner)
    hung.mode = "hang"
    via_gateway = post(gw, headers=key)
    transport = AsyncPoolTransport(sdk_pool(table))
    (via_sdk,) = asyncio.run(_ask(transport, 1, **key))
    assert via_gateway.status_code == via_sdk.status_code == 200
    chosen = via_gateway.headers["x-clusterpool-endpoint"]
    assert chosen != owner and via_sdk.headers["x-clusterpool-endpoint"] == chosen
    wait_for(lambda: hung.hung_up == 2, 5, "both hedged requests' first attempts closed")
