"""One JSON line per request on stdout: who, what, which pool and endpoint, how it went.
No request body (prompts) unless --log-bodies; no query string; never the API key."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING

from clusterpool.gateway.http1 import Request

if TYPE_CHECKING:
    from clusterpool.gateway.proxy import Outcome


class AccessLog:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        # loop.time() is monotonic: the wall clock of a request is derived from this offset
        self._offset = time.time() - time.monotonic()

    def write(self, req: Request, peer: str, out: Outcome, start: float, end: float, bodies: bool) -> None:
        route = out.route
        line = {
            "time": round(self._offset + start, 6),
            "client": peer,
            "method": req.method.decode("latin-1"),
            "path": req.target.split(b"?", 1)[0].decode("latin-1"),
            "status": out.status,
            "pool": f"{route.namespace}/{route.name}" if route is not None else None,
            "endpoint": out.endpoint or None,
            "attempts": out.attempts,
            "ttfb_ms": round(out.ttfb * 1000, 3) if out.ttfb is not None else None,
            "duration_ms": round((end - start) * 1000, 3),
            "request_bytes": len(req.body),
            "reason": out.reason or None,
        }
        if bodies:
            line["body"] = req.body.decode("utf-8", "replace")
        self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.stream.flush()
