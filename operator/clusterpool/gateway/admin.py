"""The gateway's admin listener: /metrics, /healthz (alive) and /readyz (tables loaded, not
shutting down), one request per connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from clusterpool.gateway.http1 import response_head
from clusterpool.gateway.metrics import GatewayMetrics

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class AdminListener:
    def __init__(self, metrics: GatewayMetrics, ready: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.ready = ready
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)

    def answer(self, path: bytes) -> tuple[int, bytes, bytes]:
        """(status, body, content type) for a path."""
        if path == b"/metrics":
            return 200, self.metrics.exposition(), METRICS_TYPE
        if path == b"/healthz":
            return 200, b"ok\n", b"text/plain"
        if path == b"/readyz":
            return (200, b"ready\n", b"text/plain") if self.ready() else (503, b"not ready\n", b"text/plain")
        return 404, b"not found: /metrics, /healthz, /readyz\n", b"text/plain"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = line.split()
            status, body, ctype = self.answer(parts[1].split(b"?", 1)[0] if len(parts) > 1 else b"")
            headers = [
                (b"Content-Type", ctype),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"),
            ]
            writer.write(response_head(status, headers) + body)
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
