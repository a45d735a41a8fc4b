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
MAX_QUOTED = 4096  # strings remembered escaped; beyond, the memory starts over
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
        self._quoted: dict[object, str] = {}  # a peer, path, pool or endpoint -> its JSON string

    def write(self, req: Request, peer: str, out: Outcome, start: float, end: float, bodies: bool) -> None:
        # Formatted by hand (the JSON that json.dumps would write, in a fraction of its
        # time): what a client controls is escaped by the json module's own encoder; the
        # method is one httptools accepted (letters and dashes); the rest are numbers and
        # names the gateway made. Strings that repeat from request to request (the client's
        # address, the path, the pool, the endpoint) are escaped once and remembered.
        route = out.route
        ttfb = out.ttfb
        quoted = self._quoted
        if len(quoted) >= MAX_QUOTED:
            quoted.clear()
        client = quoted.get(peer) or quoted.setdefault(peer, _string(peer))
        target = req.target
        path = quoted.get(target) or quoted.setdefault(target, _string(target.split(b"?", 1)[0].decode("latin-1")))
        pool = "null"
        if route is not None:
            key = (route.namespace, route.name)
            pool = quoted.get(key) or quoted.setdefault(key, _string(f"{route.namespace}/{route.name}"))
        endpoint = out.endpoint
        self._pending.append(
            LINE
            % (
                self._offset + start,
                client,
                req.method.decode("latin-1"),
                path,
                out.status,
                pool,
                (quoted.get(endpoint) or quoted.setdefault(endpoint, _string(endpoint))) if endpoint else "null",
                out.attempts,
                "%.3f" % (ttfb * 1000) if ttfb is not None else "null",
                (end - start) * 1000,
                len(req.body),
                _string(out.reason) if out.reason else "null",
                ',"body":' + _string(req.body.decode("utf-8", "replace")) if bodies else "",
            )
        )
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines (the gateway calls this every tick and at shutdown)."""
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
        self.stream.flush()
