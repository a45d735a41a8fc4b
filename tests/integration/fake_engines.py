"""Fake engines (scripts/fake_engine.py) as processes of their own on 127.0.0.x for the
integration tests: started, told what to get wrong, loaded from other threads, killed."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Engine:
    """A fake engine process: started, told what to get wrong, killed."""

    def __init__(self, mode: str, host: str, *args: str) -> None:
        self.mode, self.host = mode, host
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "fake_engine.py"), "--mode", mode, "--host", host, "--port", "0",
             *args],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on"), line
        self.port = int(line.rsplit(":", 1)[1])
        self.url = f"http://{host}:{self.port}"

    def post(self, path: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def faults(self, **faults: Any) -> None:
        status, body = self.post("/admin/faults", faults)
        assert status == 200, body

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/admin/stats", timeout=5) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    started: list[Engine] = []
    counter = iter(range(40, 250))

    def start(mode: str, *args: str) -> Engine:
        e = Engine(mode, f"127.0.0.{next(counter)}", *args)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def in_background(engine: Engine, n: int, body: dict[str, Any]) -> list[threading.Thread]:
    """n requests at once from other threads (another client's load); a test that ends
    first kills the engine under them, which they take quietly."""

    def post() -> None:
        with contextlib.suppress(OSError):
            engine.post("/v1/completions", body)

    threads = [threading.Thread(target=post, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads
