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


_string = json.encoder.encode_basestring_ascii  # a JSON string literal, as json.dumps writes it
MAX_PENDING = 512  # lines held between flushes at most (about 128 KiB)
LINE = (
    '{"time":%.6f,"client":%s,"method":"%s","path":%s,"status":%d,"pool":%s,"endpoint":%s,"attempts":%d,'
    '"ttfb_ms":%s,"duration_ms":%.3f,"request_bytes":%d,"reason":%s%s}\n'
)


class AccessLog:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        # loop.time() is monotonic: the wall clock of a request is derived from this offset
        self._offset = time.time() - time.monotonic()
        # Lines wait here for the next flush (the gateway's tick): one write for many lines,
        # where a write per line costs a system call per request with PYTHONUNBUFFERED (the image).
        self._pending: list[str] = []

    def write(self, req: Request, peer: str, out: Outcome, start: float, end: float, bodies: bool) -> None:
        # Formatted by hand (the JSON that json.dumps would write, in a fraction of its
        # time): what a client controls is escaped by the json module's own encoder; the
        # method is one httptools accepted (letters and dashes); the rest are numbers and
        # names the gateway made.
        route = out.route
        ttfb = out.ttfb
        pending = self._pending
        pending.append(
            LINE
            % (
                self._offset + start,
                _string(peer),
                req.method.decode("latin-1"),
                _string(req.target.split(b"?", 1)[0].decode("latin-1")),
                out.status,
                _string(f"{route.namespace}/{route.name}") if route is not None else "null",
                _string(out.endpoint) if out.endpoint else "null",
                out.attempts,
                "%.3f" % (ttfb * 1000) if ttfb is not None else "null",
                (end - start) * 1000,
                len(req.body),
                _string(out.reason) if out.reason else "null",
                ',"body":' + _string(req.body.decode("utf-8", "replace")) if bodies else "",
            )
        )
        if len(pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines (the gateway calls this every tick and at shutdown)."""
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
        self.stream.flush()
