"""An OpenAI-compatible backend pod for the gateway's node test (run in the backend image,
with scripts/openai_backend.py mounted beside it):

    python openai_pod.py

serves chat completions on :8080 (scripts/openai_backend.py, named after the pod) and a
control port :8081 where `POST /mode/<mode>` switches its answers at run time (`ok`,
`unavailable` for 503, ...). Every answer names the pod in X-Backend."""

import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai_backend import OpenAIBackend

MODES = ("ok", "fail", "unavailable", "overloaded", "reset")


def control(backend: OpenAIBackend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            mode = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/mode/") or mode not in MODES:
                self.send_response(404)
            else:
                backend.mode = mode
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def main() -> None:
    name = os.environ.get("POD_NAME") or socket.gethostname()
    backend = OpenAIBackend("0.0.0.0", 8080, name=name).start()
    server = ThreadingHTTPServer(("0.0.0.0", 8081), control(backend))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"{name} serving on :8080, control on :8081", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
