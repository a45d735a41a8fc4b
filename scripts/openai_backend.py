#!/usr/bin/env python3
"""A real OpenAI-compatible HTTP/1.1 backend on loopback for the gateway's tests: chat and
text completions (JSON, or SSE chunk by chunk with `"stream": true`), embeddings, /v1/models,
and failure modes switched at run time. It runs its own asyncio loop in a thread.

    b = OpenAIBackend("127.0.0.5", name="ep-0").start()
    b.mode = "unavailable"          # 503; "overloaded" 429 + Retry-After; "reset"; "hang"; ...
    python scripts/openai_backend.py --host 127.0.0.5 --port 18000   # until Ctrl-C

Modes: ok, fail (500), unavailable (503, Retry-After when `retry_after` is set), overloaded
(429 + Retry-After), reset (closes the connection without answering), hang (answers
nothing until `release()`), break_stream (a stream that stops after `break_after`
chunks without its end). `chunks` and `chunk_delay` shape streams. It counts requests,
streams in progress, streams the client abandoned (`abandoned`) and requests whose client
closed the connection while they hung (`hung_up`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from typing import Any, Literal

Mode = Literal["ok", "fail", "unavailable", "overloaded", "reset", "hang", "break_stream"]


class OpenAIBackend:
    def __init__(self, host: str, port: int = 0, name: str | None = None) -> None:
        self.host, self.port = host, port
        self.name = name or host
        self.mode: Mode = "ok"
        self.retry_after: int | None = None
        self.chunks = 5
        self.chunk_delay = 0.0
        self.break_after = 2
        self.requests = 0
        self.streaming = 0  # streams in progress
        self.abandoned = 0  # streams whose client went away before the end
        self.completed = 0  # streams sent to their end
        self.hung_up = 0  # hanging requests whose client closed the connection
        self.last_headers: dict[str, str] = {}
        self.last_body: bytes = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._release: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def open_connections(self) -> int:
        """Client connections open now (the gateway's kept-alive ones among them)."""
        return len(self._writers)

    # -- control ------------------------------------------------------------------------------

    def start(self) -> OpenAIBackend:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                self._release = asyncio.Event()
                self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"openai-backend-{self.name}")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"backend {self.name} did not start")
        return self

    def _call(self, fn: Any) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)

    def release(self) -> None:
        async def go() -> None:
            assert self._release is not None
            self._release.set()

        self._call(go)

    def stop(self) -> None:
        """As a killed process: the listener and every open connection close."""

        async def go() -> None:
            if self._server is not None:
                self._server.close()
            if self._release is not None:
                self._release.set()
            for w in list(self._writers):
                w.transport.abort()

        if self._loop is None:
            return
        self._call(go)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    # -- serving ------------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        return method, path, headers, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                req = await self._read(reader)
                if req is None:
                    return
                if not await self._answer(reader, writer, *req):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _json(self, writer: asyncio.StreamWriter, status: int, doc: Any, extra: str = "") -> None:
        body = json.dumps(doc).encode()
        reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Backend: {self.name}\r\n{extra}\r\n".encode()
            + body
        )

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> bool:
        self.requests += 1
        self.last_headers, self.last_body = headers, body
        mode = self.mode
        if mode == "reset":
            return False
        if mode == "hang":
            assert self._release is not None
            released = asyncio.ensure_future(self._release.wait())
            closed = asyncio.ensure_future(reader.read(1))  # b"": the client closed the connection
            await asyncio.wait((released, closed), return_when=asyncio.FIRST_COMPLETED)
            released.cancel()
            if closed.done() and not closed.exception() and closed.result() == b"":
                self.hung_up += 1
            closed.cancel()
            return False
        if mode == "fail":
            self._json(writer, 500, {"error": {"message": f"{self.name} failed", "type": "server_error"}})
            return True
        if mode == "unavailable":
            extra = f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else ""
            self._json(writer, 503, {"error": {"message": f"{self.name} unavailable", "type": "server_error"}}, extra)
            return True
        if mode == "overloaded":
            self._json(
                writer,
                429,
                {"error": {"message": "slow down", "type": "rate_limit"}},
                f"Retry-After: {self.retry_after or 5}\r\n",
            )
            return True
        doc = json.loads(body) if body else {}
        model = doc.get("model", "stub")
        if path.endswith("/models"):
            self._json(
                writer,
                200,
                {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "x"}]},
            )
            return True
        if path.endswith("/embeddings"):
            self._json(
                writer,
                200,
                {
                    "object": "list",
                    "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )
            return True
        if doc.get("stream"):
            return await self._stream(writer, model)
        self._json(writer, 200, self._completion(model, f"hello from {self.name}"))
        return True

    def _completion(self, model: str, text: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }

    async def _stream(self, writer: asyncio.StreamWriter, model: str) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + f"X-Backend: {self.name}\r\n\r\n".encode()
        )
        self.streaming += 1
        try:
            for i in range(self.chunks):
                if self.mode == "break_stream" and i == self.break_after:
                    writer.transport.abort()
                    return False
                delta = (
                    {"role": "assistant", "content": f"{self.name}-{i} "}
                    if i == 0
                    else {"content": f"{self.name}-{i} "}
                )
                event = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
                data = f"data: {json.dumps(event)}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if writer.transport.is_closing():
                    raise ConnectionResetError
            end = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
            await writer.drain()
            self.completed += 1
            return True
        except (ConnectionError, OSError):
            self.abandoned += 1
            return False
        finally:
            self.streaming -= 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--name")
    a = p.parse_args()
    b = OpenAIBackend(a.host, a.port, a.name).start()
    print(f"serving on {b.host}:{b.port}")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()
