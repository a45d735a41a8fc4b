"""A backend for the node tests: GET / and GET /health answer 200 with the pod's name until
POST /fail, after which both answer 503 (the process keeps serving, as a sick backend does);
POST /recover undoes it. GET /stats counts the requests served."""

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("POD_NAME") or socket.gethostname()
state = {"failed": False, "served": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with lock:
            state["served"] = int(state["served"]) + 1
            failed = bool(state["failed"])
        if self.path == "/stats":
            self._send(200, {"name": NAME, **state})
        else:
            self._send(503 if failed else 200, {"name": NAME, "ok": not failed})

    def do_POST(self) -> None:
        with lock:
            if self.path == "/fail":
                state["failed"] = True
            elif self.path == "/recover":
                state["failed"] = False
        self._send(200, {"name": NAME, **state})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
