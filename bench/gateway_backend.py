"""The loopback backend of bench/gateway_bench.py: a minimal HTTP/1.1 server (asyncio
protocol, uvloop when installed) answering every POST with a fixed OpenAI chat completion of
about 290 bytes, or with 100 SSE chunks when the body asks for `"stream": true`.

    python bench/gateway_backend.py --port 18001 [--hold]

With --hold a stream sends its first chunk and then holds the connection open (up to
HOLD_SECONDS) until the client leaves: the open streams of the RSS measurement. It trusts
its client (the benchmark's proxies): no limits, no error handling beyond closing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

STREAM_CHUNKS = 100
HOLD_SECONDS = 300
COMPLETION_BYTES = 290


def completion_body(size: int = COMPLETION_BYTES) -> bytes:
    """The fixed non-streamed completion, its content padded so the body is `size` bytes."""
    doc: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
    }
    bare = len(json.dumps(doc, separators=(",", ":")))
    doc["choices"][0]["message"]["content"] = "x" * max(0, size - bare)
    return json.dumps(doc, separators=(",", ":")).encode()


def sse_chunk(index: int, last: bool) -> bytes:
    """One chat.completion.chunk event, framed as one HTTP chunk."""
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": "stop" if last else None},
        ],
    }
    event = b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


COMPLETION = completion_body()
COMPLETION_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(COMPLETION),
    COMPLETION,
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_BODY = [sse_chunk(i, i == STREAM_CHUNKS - 1) for i in range(STREAM_CHUNKS)]
DONE_EVENT = b"data: [DONE]\n\n"
STREAM_END = b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE_EVENT), DONE_EVENT)
MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]}).encode()


def small_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class BenchBackend(asyncio.Protocol):
    """One client connection: parses pipelined requests (Content-Length or chunked bodies)."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.held: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if self.held is not None:
            self.held.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            request = self.take_request()
            if request is None:
                return
            self.answer(*request)

    def take_request(self) -> tuple[bytes, bytes, bytes] | None:
        """(method, path, body) of the first complete request in the buffer, removed from it."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end].lower()
        method, path = self.buffer[:end].split(b" ", 2)[:2]
        start = end + 4
        if b"\r\ntransfer-encoding: chunked" in head:
            body = b""
            pos = start
            while True:
                eol = self.buffer.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(self.buffer[pos:eol].split(b";")[0], 16)
                if len(self.buffer) < eol + 2 + size + 2:
                    return None
                if size == 0:
                    trailer_end = self.buffer.find(b"\r\n\r\n", eol)
                    if trailer_end < 0:
                        return None
                    self.buffer = self.buffer[trailer_end + 4 :]
                    return method, path, body
                body += self.buffer[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
        length = 0
        marker = head.find(b"\r\ncontent-length:")
        if marker >= 0:
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < start + length:
            return None
        body = self.buffer[start : start + length]
        self.buffer = self.buffer[start + length :]
        return method, path, body

    def answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"GET":
            self.transport.write(small_response(MODELS if path.endswith(b"/models") else b"{}"))
        elif b'"stream":true' in body.replace(b" ", b""):
            self.transport.write(STREAM_HEAD)
            if self.hold:
                self.transport.write(STREAM_BODY[0])
                self.held = asyncio.get_running_loop().create_task(self.finish_later())
                return
            for chunk in STREAM_BODY:
                self.transport.write(chunk)
            self.transport.write(STREAM_END)
        else:
            self.transport.write(COMPLETION_RESPONSE)

    async def finish_later(self) -> None:
        await asyncio.sleep(HOLD_SECONDS)
        if self.transport is not None and not self.transport.is_closing():
            for chunk in STREAM_BODY[1:]:
                self.transport.write(chunk)
            self.transport.write(STREAM_END)


async def serve(port: int, hold: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BenchBackend(hold), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", action="store_true", help="streams send one chunk, then stay open")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.hold))
    except ImportError:
        asyncio.run(serve(args.port, args.hold))


if __name__ == "__main__":
    main()
