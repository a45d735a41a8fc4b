"""The readiness endpoint (`--readiness`): 200 once this replica drives its share of the pools, 503 before.

kopf's liveness endpoint says the process runs; it cannot say whether the replica is of
use yet. A replica is only useful once it holds its shard Lease and the hand-over wait of
its hold period is over (k8s/shards.py): then it drives the pools the ring gives it. A
rolling update that waits for this (the chart's readinessProbe and minReadySeconds) stops
an old replica only once the new one has taken its share, so no pool waits for a driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an http:// readiness URL; a clear error otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.port is None:
        raise ValueError(f"--readiness must be http://HOST:PORT/PATH, e.g. http://0.0.0.0:8081/readyz (got {url!r})")
    return parts.hostname or "0.0.0.0", parts.port, parts.path or "/"


async def serve_readiness(url: str, ready: Callable[[], bool]) -> None:
    """Answer GET on the URL's path with 200 while `ready()` is true, 503 otherwise; until cancelled."""
    host, port, path = parse_url(url)

    async def answer(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: this replica does not drive its share of the pools yet\n")

    app = web.Application()
    app.add_routes([web.get(path, answer)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
