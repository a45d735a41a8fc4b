#!/usr/bin/env python3
"""Misbehaving backends for the probe's hostile-backend tests: each mode answers every
connection in one bad way, on an asyncio loop in a thread of its own (or as a process of
its own with `python scripts/hostile.py MODE HOST PORT`, so its allocations stay out of
the measuring process).

    slowloris        a valid answer, one byte every `drip` seconds
    endless-headers  a status line, then short header lines forever
    oversized-header a status line, then one header line that never ends
    huge-body        200 with Content-Length: 1 GiB, and the body, as fast as it is read
    endless-body     200 with no length (the body ends at the close), never closing
    endless-chunked  200, chunked, one chunk after another forever
    garbage          a line that is not HTTP, sent on connect
    endless-garbage  bytes without a line end, forever, from the connect on
    reset-headers    a status line and part of a header, then a TCP reset
    reset-body       headers announcing 1000 bytes, 100 of them, then a TCP reset
    silent           accepts, reads, never answers
    close            accepts and closes at once (before any TLS handshake, too)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys
import threading

MODES = (
    "slowloris",
    "endless-headers",
    "oversized-header",
    "huge-body",
    "endless-body",
    "endless-chunked",
    "garbage",
    "endless-garbage",
    "reset-headers",
    "reset-body",
    "silent",
    "close",
)
_CHUNK = b"x" * 65536
_SLOW_ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"status":"ready"}'


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _forever(writer: asyncio.StreamWriter, data: bytes) -> None:
    while not writer.is_closing():
        writer.write(data)
        await writer.drain()


class HostileServer:
    """One misbehaving listener; `connections` counts accepted connections."""

    def __init__(self, mode: str, host: str = "127.0.0.1", port: int = 0, drip: float = 0.2) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.mode, self.host, self.port, self.drip = mode, host, port, drip
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.mode == "close":
                writer.transport.abort()
                return
            if not self.mode.endswith("garbage"):  # garbage goes out at once (also into a TLS handshake)
                with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    await reader.readuntil(b"\r\n\r\n")  # the request
            await self._answer(writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.transport.abort()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "slowloris":
            for i in range(len(_SLOW_ANSWER)):
                writer.write(_SLOW_ANSWER[i : i + 1])
                await asyncio.sleep(self.drip)
            await asyncio.sleep(3600)
        elif mode == "endless-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            await _forever(writer, b"X-Padding: " + b"p" * 20 + b"\r\n")
        elif mode == "oversized-header":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
            await _forever(writer, _CHUNK)
        elif mode == "huge-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1073741824\r\n\r\n")
            for _ in range(1073741824 // len(_CHUNK)):
                writer.write(_CHUNK)
                await writer.drain()
            await asyncio.sleep(3600)
        elif mode == "endless-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            await _forever(writer, _CHUNK)
        elif mode == "endless-chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await _forever(writer, b"%x\r\n" % len(_CHUNK) + _CHUNK + b"\r\n")
        elif mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
        elif mode == "endless-garbage":
            await _forever(writer, b"\x00\x16garbage" * 4096)
        elif mode == "reset-headers":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
            await writer.drain()
            await asyncio.sleep(0.05)
            _reset(writer)
        elif mode == "reset-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"r" * 100)
            await writer.drain()
            await asyncio.sleep(0.05)
            _reset(writer)
        elif mode == "silent":
            await asyncio.sleep(3600)

    def start(self, tls: ssl.SSLContext | None = None) -> HostileServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, ssl=tls, reuse_address=True)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"hostile-{self.mode}")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shut() -> None:
            server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.sleep(0)
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shut()))
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = self._server = None


def main() -> int:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = HostileServer(mode, host, port).start()
    print(server.port, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
