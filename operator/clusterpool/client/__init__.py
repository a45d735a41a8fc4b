"""The client SDK: route each request to the pool the operator publishes.

    from clusterpool.client import httpx_client
    with httpx_client("/etc/clusterpool/routing.json") as http:   # or async_httpx_client
        http.post("/v1/chat/completions", json=...)

or piece by piece:

    from clusterpool.client import FileTable, PoolClient, PoolTransport
    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    http = httpx.Client(transport=PoolTransport(pool))

Errors: every one derives from ClusterPoolError; those raised inside a transport
(NoEndpointError, CapacityError) are httpx.TransportErrors too (client/errors.py).

See docs/sdk.md. Imports no kopf; the Kubernetes client only for ConfigMapTable, and redis
only when PoolCache is first used (it needs the [redis] extra of clusterpool-client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clusterpool.client.clients import async_httpx_client, httpx_client
from clusterpool.client.errors import (
    CapacityError,
    ClusterPoolError,
    NoEndpointError,
    PoolTransportError,
    RoutingTableError,
)
from clusterpool.client.pool import PoolClient, RetryBudget
from clusterpool.client.routing import (
    ConfigMapTable,
    FileTable,
    RoutingTable,
    StaticTable,
    TableSource,
)
from clusterpool.client.transport import ENDPOINT_EXTENSION, ENDPOINT_HEADER, AsyncPoolTransport, PoolTransport

__all__ = [
    "ENDPOINT_EXTENSION",
    "ENDPOINT_HEADER",
    "AsyncPoolTransport",
    "CapacityError",
    "ClusterPoolError",
    "ConfigMapTable",
    "FileTable",
    "NoEndpointError",
    "PoolCache",
    "PoolClient",
    "PoolTransport",
    "PoolTransportError",
    "RetryBudget",
    "RoutingTable",
    "RoutingTableError",
    "StaticTable",
    "TableSource",
    "async_httpx_client",
    "httpx_client",
    "secret_from_api",
]

if TYPE_CHECKING:
    from clusterpool.client.cache import PoolCache, secret_from_api

_LAZY = {"PoolCache", "secret_from_api"}  # in clusterpool.client.cache, which imports redis


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            from clusterpool.client import cache
        except ModuleNotFoundError as exc:
            if exc.name != "redis":
                raise
            raise ModuleNotFoundError(
                f"clusterpool.client.{name} needs the redis package: pip install 'clusterpool-client[redis]'",
                name="redis",
            ) from exc
        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
