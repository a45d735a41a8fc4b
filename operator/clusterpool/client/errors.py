"""The errors the client SDK raises, rooted in one base.

    ClusterPoolError                      every error of the SDK
    ├── RoutingTableError (ValueError)    a routing table that cannot be read or used
    └── PoolTransportError                no request could be sent; also an httpx.TransportError,
        │                                 so httpx-based code (openai, LangChain) handles it
        │                                 as it handles a refused connection
        └── NoEndpointError               no eligible endpoint (matching the selector), or every
            │                             one was tried; also clusterpool.balancer.NoEndpointError
            └── CapacityError             every matching endpoint is at its capacity

Inside an httpx client, httpx attaches the request (`exc.request`). Outside one
(`PoolClient.request()`), `exc.request` is not set, as for any httpx error raised alone.
"""

from __future__ import annotations

import httpx

from clusterpool import balancer


class ClusterPoolError(Exception):
    """Every error the client SDK raises on its own account."""


class RoutingTableError(ClusterPoolError, ValueError):
    """The routing table is not JSON, has a schema version this client does not read, or is
    malformed; or no usable table was found where one was expected."""


class PoolTransportError(ClusterPoolError, httpx.TransportError):
    """The pool could not send the request anywhere."""


class NoEndpointError(PoolTransportError, balancer.NoEndpointError):
    """The pool has no eligible endpoint (matching the request's selector), or every one of
    them was tried for this request."""


class CapacityError(NoEndpointError):
    """Every endpoint that matches the request is at its capacity, and the wait (if any)
    ran out."""
