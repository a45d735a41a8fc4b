"""HTTP/1.1 framing for the gateway: reading client requests within limits (httptools),
refusing the shapes that smuggle requests, and writing heads and chunks.

llhttp (inside httptools) already refuses Content-Length with Transfer-Encoding, duplicate
Content-Length, obs-fold, bad chunk sizes and bare LF; this module adds: a Transfer-Encoding
other than exactly `chunked`, Transfer-Encoding on HTTP/1.0, Upgrade/CONNECT, and the size
limits. Every refusal is a RequestError with the status to answer; the connection closes.
"""

from __future__ import annotations

import json
from collections import deque

import httptools

from clusterpool.gateway.settings import Limits

# Hop-by-hop headers (RFC 9110 7.6.1) and those the gateway sets itself; lowercase.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()) for status, reason in REASONS.items()}


class RequestError(Exception):
    """A request the gateway refuses before routing it: answer `status`, then close."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason  # reason: the rejected_total label


class Request:
    """One client request as read: the head as sent (names and values), each name in
    lowercase in order, the first value of each name, and the whole body."""

    __slots__ = ("body", "first", "headers", "keep_alive", "method", "names", "target", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        names: list[bytes],
        keep_alive: bool = True,
        first: dict[bytes, bytes] | None = None,
    ) -> None:
        self.method, self.target, self.version = method, target, version
        self.headers, self.names, self.keep_alive = headers, names, keep_alive
        self.body = bytearray()
        self.first = first_values(headers, names) if first is None else first

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lowercase)."""
        return self.first.get(name)


class HeadParts:
    """The parts of one request head as httptools hands them over."""

    __slots__ = ("first", "headers", "names", "size", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []  # in lowercase, in the order of headers
        self.first: dict[bytes, bytes] = {}  # the first value of each name
        self.size = 0  # bytes of the header lines


class RequestReader:
    """Feeds a connection's bytes to httptools; finished requests queue up in `ready`.
    `head_started` tells the connection a request's head is arriving (its deadline runs),
    `in_body` that the head is in and the body is arriving."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ready: deque[Request] = deque()
        self.head_started = False
        self.in_body = False
        self.wants_continue = False  # the head asked for `100 Continue` before its body
        self._parser = httptools.HttpRequestParser(self)
        self._head = HeadParts()
        self._current: Request | None = None
        self._error: RequestError | None = None

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise RequestError(501, "upgrade", "Upgrade and CONNECT are not supported") from exc
        except httptools.HttpParserError as exc:
            if self._error is not None:
                raise self._error from exc
            raise RequestError(400, "bad_request", f"malformed request: {exc}") from exc

    def _fail(self, status: int, reason: str, message: str) -> None:
        self._error = RequestError(status, reason, message)
        raise self._error

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_started = True
        self.wants_continue = False
        self._head = HeadParts()

    def on_url(self, url: bytes) -> None:
        head = self._head
        head.url += url
        if len(head.url) > self.limits.max_request_line:
            self._fail(414, "too_large", f"the request target is longer than {self.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        head.size += len(name) + len(value) + 4
        if len(head.headers) >= self.limits.max_headers or head.size > self.limits.max_header_bytes:
            self._fail(
                431,
                "too_large",
                f"more than {self.limits.max_headers} headers or {self.limits.max_header_bytes} bytes of them",
            )
        head.headers.append((name, value))
        lower = name.lower()
        head.names.append(lower)
        head.first.setdefault(lower, value)

    def on_headers_complete(self) -> None:
        p, head = self._parser, self._head
        version = p.get_http_version()
        req = Request(p.get_method(), head.url, version, head.headers, head.names, p.should_keep_alive(), head.first)
        first = req.first
        te, cl = first.get(b"transfer-encoding"), first.get(b"content-length")
        expect = (first.get(b"expect") or b"").lower() == b"100-continue"
        if te is not None and (te.strip().lower() != b"chunked" or version == "1.0"):
            self._fail(400, "bad_request", "Transfer-Encoding other than a single `chunked` on HTTP/1.1 is refused")
        if cl is not None and int(cl) > self.limits.max_body_bytes:
            self._fail(413, "too_large", f"the body is larger than {self.limits.max_body_bytes} bytes")
        self._current = req
        self.in_body = True
        self.wants_continue = expect

    def on_body(self, chunk: bytes) -> None:
        r = self._current
        assert r is not None
        r.body += chunk
        if len(r.body) > self.limits.max_body_bytes:
            self._fail(413, "too_large", f"the body is larger than {self.limits.max_body_bytes} bytes")

    def on_message_complete(self) -> None:
        r = self._current
        assert r is not None
        self.ready.append(r)
        self._current = None
        self.head_started = self.in_body = False


def first_values(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> dict[bytes, bytes]:
    """The first value of each header name (names in lowercase, in the order of headers)."""
    first: dict[bytes, bytes] = {}
    for name, (_, value) in zip(names, headers, strict=True):
        first.setdefault(name, value)
    return first


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def response_head(status: int, headers: list[tuple[bytes, bytes]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1") if reason else status_line(status)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection (hop-by-hop too, RFC 9110 7.6.1)."""
    out: set[bytes] = set()
    for n, v in headers:
        if n.lower() == b"connection":
            out.update(t.strip().lower() for t in v.split(b","))
    return frozenset(out)


def model_of(body: bytes | bytearray) -> str | None:
    """The top-level `model` of a JSON request body, None without one.

    Fast path: the token `"model"` appears once, is a key, and its value is a plain string
    (no escapes); a quote inside a JSON string is always escaped, so an unescaped `"model"`
    is a real token. Anything else (two occurrences, an escape, a non-string) is decided by
    a full JSON parse."""
    i = body.find(b'"model"')
    if i < 0:
        return None
    if body.find(b'"model"', i + 7) < 0 and (i == 0 or body[i - 1] != 0x5C):
        j = i + 7
        n = len(body)
        while j < n and body[j] in b" \t\r\n":
            j += 1
        if j < n and body[j] == 0x3A:  # ':'
            j += 1
            while j < n and body[j] in b" \t\r\n":
                j += 1
            if j < n and body[j] == 0x22:  # '"'
                end = body.find(b'"', j + 1)
                value = body[j + 1 : end] if end > 0 else b""
                if end > 0 and value.find(b"\\") < 0:  # find: `in` costs a failed int conversion first
                    try:
                        return value.decode()
                    except UnicodeDecodeError:
                        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None
