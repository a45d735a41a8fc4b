"""The client SDK: route each request to the pool the operator publishes.

    from clusterpool.client import FileTable, PoolClient, PoolTransport
    pool = PoolClient(FileTable("/etc/clusterpool/routing.json"))
    http = httpx.Client(transport=PoolTransport(pool))

See docs/sdk.md. Imports no kopf; the Kubernetes client only for ConfigMapTable.
"""

from clusterpool.client.cache import PoolCache, secret_from_api
from clusterpool.client.pool import CapacityError, PoolClient, RetryBudget
from clusterpool.client.routing import (
    ConfigMapTable,
    FileTable,
    RoutingTable,
    RoutingTableError,
    StaticTable,
    TableSource,
)
from clusterpool.client.transport import AsyncPoolTransport, PoolTransport

__all__ = [
    "AsyncPoolTransport",
    "CapacityError",
    "ConfigMapTable",
    "FileTable",
    "PoolCache",
    "PoolClient",
    "PoolTransport",
    "RetryBudget",
    "RoutingTable",
    "RoutingTableError",
    "StaticTable",
    "TableSource",
    "secret_from_api",
]
