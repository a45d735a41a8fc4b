#!/usr/bin/env python3
"""Real HTTP and TCP backends on loopback addresses (127.0.0.x) that can be started,
made to fail, stalled and killed. Used by the integration tests and by `make demo`.

    python scripts/backends.py --count 3 --port 18080    # 127.0.0.2..4:18080 until Ctrl-C

Every 127.0.0.0/8 address is on the loopback interface on Linux, so each backend gets
an address of its own and the same port, as pods would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "fail", "unavailable", "hang", "garbage", "slow", "flap"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes, as real servers' may

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        backend = self.server.backend
        backend.connections += 1
        with backend.lock:
            backend.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.backend.lock:
            self.server.backend.open_sockets.discard(self.connection)
        super().finish()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.do_GET()

    def do_OPTIONS(self) -> None:
        self.do_GET()

    def _answer(self, code: int) -> bytes:
        """JSON; an OpenAI-compatible one for /v1/chat/completions and /v1/models."""
        name = self.server.backend.name
        if code == 200 and self.path.endswith("/chat/completions"):
            return json.dumps(
                {
                    "id": f"chatcmpl-{self.server.backend.requests}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "stub",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"hello from {name}"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                }
            ).encode()
        if code == 200 and self.path.endswith("/models"):
            return json.dumps(
                {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "clusterpool"}]}
            ).encode()
        return json.dumps({"backend": name, "path": self.path, "status": code}).encode()

    def do_GET(self) -> None:
        backend = self.server.backend
        backend.requests += 1
        backend.last_method = self.command
        backend.last_headers = dict(self.headers.items())
        mode = backend.mode
        if mode == "hang":
            backend.release.wait(timeout=60)
        if mode == "slow":
            time.sleep(backend.delay)
        if mode == "garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.close_connection = True
            return
        code = {"fail": 500, "unavailable": 503}.get(mode, 200)
        if mode == "flap":  # every other request fails
            code = 500 if backend.requests % 2 == 0 else 200
        body = backend.body or self._answer(code)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    backend: HTTPBackend


class HTTPBackend:
    """An HTTP(S) server answering every request: 200 (ok), 500 (fail), 200 after `delay`
    seconds (slow), nothing (hang), a line that is not HTTP (garbage), or 200 and 500 in
    turn (flap). It records the
    last method and headers and counts connections. `stop()` closes the listener:
    connects are refused."""

    def __init__(self, host: str, port: int = 0, name: str | None = None, tls: tuple[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.name = name or f"{host}:{port}"
        self.tls = tls  # (certificate file, key file)
        self.mode: Mode = "ok"
        self.delay = 0.5
        self.body: bytes | None = None
        self.requests = 0
        self.connections = 0
        self.last_method: str | None = None
        self.last_headers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.open_sockets: set[socket.socket] = set()
        self.release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HTTPBackend:
        if self._server is not None:
            return self
        self.release.clear()
        server = _Server((self.host, self.port), _Handler)
        server.backend = self
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.release.set()
        server.shutdown()
        server.server_close()
        # A killed process takes its connections with it: keep-alive ones too.
        with self.lock:
            sockets, self.open_sockets = list(self.open_sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None


class TCPBackend:
    """A TCP listener that accepts and closes connections; `stop()` closes it."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> TCPBackend:
        if self._server is not None:
            return self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--first", type=int, default=2, help="first address is 127.0.0.<first>")
    args = p.parse_args()
    backends = [
        HTTPBackend(f"127.0.0.{args.first + i}", args.port, name=f"demo-{i}").start() for i in range(args.count)
    ]
    for b in backends:
        print(f"backend {b.name} on http://{b.host}:{b.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    for b in backends:
        b.stop()
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
