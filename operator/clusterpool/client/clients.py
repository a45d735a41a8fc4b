"""One-line httpx clients routed through a pool: the table source, the PoolClient and the
transport built together, and closed together with the client.

    with httpx_client("/etc/clusterpool/routing.json") as http:         # a mounted ConfigMap
        http.post("/v1/chat/completions", json=...)
    async with async_httpx_client(ConfigMapTable("team-a", "llm")) as http:
        await http.get("/v1/models")
    openai.OpenAI(base_url="http://pool/v1", api_key="...", http_client=httpx_client(path))
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from clusterpool.client.pool import PoolClient
from clusterpool.client.routing import FileTable, TableSource
from clusterpool.client.transport import AsyncPoolTransport, KeyFn, PoolTransport, SelectorFn

Pool = str | os.PathLike[str] | TableSource | PoolClient


def pool_client(pool: Pool, *, retries: int = 2, capacity_wait: float = 0.0) -> tuple[PoolClient, bool]:
    """The PoolClient for `pool` (a routing.json path, a TableSource or a PoolClient), and
    whether it was made here (then whoever made it closes it)."""
    if isinstance(pool, PoolClient):
        return pool, False
    source = pool if isinstance(pool, TableSource) else FileTable(pool)
    return PoolClient(source, retries=retries, capacity_wait=capacity_wait), True


def httpx_client(
    pool: Pool,
    *,
    base_url: str = "http://pool",
    retries: int = 2,
    capacity_wait: float = 0.0,
    scheme: str = "http",
    key: KeyFn | None = None,
    selector: SelectorFn | None = None,
    transport: httpx.BaseTransport | None = None,
    **client_options: Any,
) -> httpx.Client:
    """An httpx.Client whose every request goes to the pool. `pool`: the path of a mounted
    routing.json, a TableSource (ConfigMapTable, StaticTable) or a PoolClient to share
    (which the client then does not close). `transport` is the one that sends to the
    endpoints (default httpx.HTTPTransport()); the other options go to httpx.Client
    (timeout, headers, ...). Closing the client closes what was made here."""
    client, owned = pool_client(pool, retries=retries, capacity_wait=capacity_wait)
    routed = PoolTransport(client, transport, scheme=scheme, key=key, selector=selector, owns_pool=owned)
    return httpx.Client(base_url=base_url, transport=routed, **client_options)


def async_httpx_client(
    pool: Pool,
    *,
    base_url: str = "http://pool",
    retries: int = 2,
    capacity_wait: float = 0.0,
    scheme: str = "http",
    key: KeyFn | None = None,
    selector: SelectorFn | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **client_options: Any,
) -> httpx.AsyncClient:
    """httpx_client for asyncio: an httpx.AsyncClient."""
    client, owned = pool_client(pool, retries=retries, capacity_wait=capacity_wait)
    routed = AsyncPoolTransport(client, transport, scheme=scheme, key=key, selector=selector, owns_pool=owned)
    return httpx.AsyncClient(base_url=base_url, transport=routed, **client_options)
