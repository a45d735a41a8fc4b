"""`python -m clusterpool.gateway` as a subprocess for the gateway's tests, with routing-table
files it follows and real OpenAI-compatible backends on loopback (scripts/openai_backend.py)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends import free_port
from conftest import wait_for
from openai_backend import OpenAIBackend

ROOT = Path(__file__).resolve().parents[2]
_hosts = itertools.count(20)


def next_host() -> str:
    n = next(_hosts)
    return f"127.0.{n // 250 + 8}.{n % 250 + 2}"


def backends(n: int, **attrs: Any) -> list[OpenAIBackend]:
    port = free_port()
    out = []
    for i in range(n):
        b = OpenAIBackend(next_host(), port, name=f"ep-{i}")
        for k, v in attrs.items():
            setattr(b, k, v)
        out.append(b.start())
    return out


def routing_table(
    bs: list[OpenAIBackend],
    namespace: str = "team",
    pool: str = "chat",
    models: tuple[str, ...] = ("llama",),
    strategy: str = "RoundRobin",
    revision: str = "r1",
) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "revision": revision,
        "pool": {"namespace": namespace, "name": pool},
        "models": list(models),
        "strategy": strategy,
        "panic": False,
        "circuitBreaker": {"failureThreshold": 3, "openSeconds": 30},
        "endpoints": [
            {"name": b.name, "address": b.host, "port": b.port, "eligible": True, "effectiveWeight": 1} for b in bs
        ],
        "cache": None,
    }


def write_table(path: Path, table: dict[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)
    return path


class GatewayProcess:
    def __init__(self, log_dir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.out = log_dir / f"gateway-{self.port}.out"
        self.err = log_dir / f"gateway-{self.port}.err"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clusterpool.gateway",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--tick",
                "0.05",
                *args,
            ],
            env=full_env,
            stdout=self.out.open("wb"),
            stderr=self.err.open("wb"),
            stdin=subprocess.DEVNULL,
        )
        wait_for(self.ready, 60, f"the gateway ready ({self.err})", interval=0.1)

    def _get(self, path: str) -> tuple[int, str]:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited ({self.proc.returncode}): {self.err.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        status, text = self._get("/metrics")
        assert status == 200, status
        return [
            (s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(v for lab, v in self.samples(name) if all(lab.get(k) == w for k, w in labels.items()))

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def openai_backends() -> Iterator[Callable[..., list[OpenAIBackend]]]:
    started: list[OpenAIBackend] = []

    def make(n: int, **attrs: Any) -> list[OpenAIBackend]:
        bs = backends(n, **attrs)
        started.extend(bs)
        return bs

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(bs: list[OpenAIBackend], *args: str, table: dict[str, Any] | None = None) -> GatewayProcess:
        path = write_table(tmp_path / f"routing-{len(started)}.json", table or routing_table(bs))
        gw = GatewayProcess(tmp_path, ["--routing-file", str(path), *args])
        gw.table_path = path  # type: ignore[attr-defined]
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
