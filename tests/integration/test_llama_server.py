"""The llama.cpp profile against the real llama-server (built from source by
scripts/llama.py, cached), serving the tiny model the project writes: its health path
probed, its load gauges scraped, and its own prompt-cache reuse visible in /metrics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llama
from backends import free_port
from clusterpool import api
from clusterpool.client.load import LoadScraper, gauge_value
from clusterpool.core.health import Endpoint
from clusterpool.core.load import Load
from clusterpool.engines import PROFILES
from clusterpool.health.probes import prober_for
from conftest import wait_for

HOST = "127.0.0.61"


class LlamaServer:
    def __init__(self, binary: Path, model: Path, log: Path, slots: int = 2) -> None:
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", HOST, "--port", str(self.port), "--metrics", "--slots",
             "-np", str(slots), "-c", "8192", "-t", "1", "--no-webui"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def complete(self, prompt: str, max_tokens: int = 2) -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
        req = urllib.request.Request(self.url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return dict(json.loads(r.read()))

    def metric(self, name: str) -> float | None:
        return gauge_value(self.get("/metrics")[1], name.encode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    if not llama.server_path().exists():  # a cold build takes minutes, more than a test's timeout
        pytest.fail(f"no llama-server at {llama.server_path()}: run `make llama` first (a prerequisite of `make test`)")
    binary, model = llama.build(), llama.model()
    s = LlamaServer(binary, model, tmp_path_factory.mktemp("llama") / "server.log")
    try:
        wait_for(lambda: s.get("/health")[0] == 200, 120, "llama-server to load the model",
                 describe=lambda: s.proc.poll())  # fmt: skip
        yield s
    finally:
        s.stop()


def test_the_llamacpp_health_path_is_probed_when_the_check_names_none(server):
    spec = api.parse_spec(
        {"engine": "LlamaCpp", "healthCheck": {"http": {"bodyContains": "ok"}},
         "discovery": {"static": {"endpoints": [{"name": "l", "address": HOST, "port": server.port}]}}}
    )  # fmt: skip
    result = asyncio.run(prober_for(spec.health_check, spec.engine)(Endpoint("l", HOST, server.port)))
    assert result.ok and "GET /health" in result.message, result.message
    status, body = server.get(PROFILES["LlamaCpp"].deep_probe_path or "")
    assert status == 200 and len(json.loads(body)) == 2  # /slots: one entry per slot


def test_its_gauges_are_scraped_with_nothing_missing_and_follow_its_slots(server):
    s = LoadScraper(interval=0.05, stale_after=1.0).start()
    try:
        s.watch(HOST, server.port, PROFILES["LlamaCpp"])
        idle = wait_for(lambda: (lambda x: None if x.saturated else x)(s.load(HOST, server.port)), 10, "a reading")
        assert idle.missing == () and idle.running == 0 and idle.waiting == 0
        prompt = "The quick brown fox jumps over the lazy dog. " * 40
        threads = [threading.Thread(target=server.complete, args=(f"{i} {prompt}", 24), daemon=True) for i in range(3)]
        for t in threads:
            t.start()

        def full() -> Load | None:
            x = s.load(HOST, server.port)
            return x if (x.running or 0) == 2 and (x.waiting or 0) >= 1 else None

        busy = wait_for(full, 60, "two slots busy and one request deferred", interval=0.02,
                        describe=lambda: s.load(HOST, server.port))  # fmt: skip
        assert busy.missing == ()
        for t in threads:
            t.join(120)
        wait_for(lambda: s.load(HOST, server.port).running == 0, 30, "the slots idle again")
    finally:
        s.stop()


def test_its_prompt_cache_reuse_shows_in_its_metrics_and_its_prefill_time(server):
    shared = "System: you are the ledger assistant of tenant seven; answer briefly. " * 60  # about 1,000 tokens
    cached_before = server.metric("llamacpp:prompt_tokens_cached_total") or 0.0
    start = time.perf_counter()
    first = server.complete(shared + "Question: what is due in March?")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = server.complete(shared + "Question: who paid in May?")
    warm = time.perf_counter() - start
    reused = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first["usage"]["prompt_tokens"] > 900
    assert reused > 0.9 * first["usage"]["prompt_tokens"], second["usage"]
    cached_after = server.metric("llamacpp:prompt_tokens_cached_total") or 0.0
    assert cached_after - cached_before >= reused
    assert warm < cold / 3, (cold, warm)  # the prefix reuse is what a router can win
    print(f"llama-server, {first['usage']['prompt_tokens']} prompt tokens: cold {cold:.3f}s, "
          f"with {reused} reused {warm:.3f}s")  # fmt: skip


def test_the_operator_shows_its_queue_and_batch_in_the_pools_status(server, pools, engines):
    """The operator reads the real server's gauges under the LlamaCpp profile: nothing
    missing; the reading reaches the status with a write made for another reason (a spare
    endpoint turned unhealthy)."""
    spare = engines("llamacpp")
    eps = [{"name": "llama", "address": HOST, "port": server.port},
           {"name": "spare", "address": spare.host, "port": spare.port}]  # fmt: skip
    check = {"intervalSeconds": 2, "timeoutSeconds": 1, "healthyThreshold": 1, "unhealthyThreshold": 1, "http": {}}
    pools.create("llama", {"engine": "LlamaCpp", "healthCheck": check, "discovery": {"static": {"endpoints": eps}}})
    pools.wait_ready("llama", healthy=2)

    def llama_load() -> dict[str, Any] | None:
        spare.faults(healthy=False)
        wait_for(lambda: pools.endpoint("llama", "spare").get("health") == "Unhealthy", 15, "spare Unhealthy")
        load = pools.endpoint("llama", "llama").get("load")
        spare.faults(healthy=True)
        wait_for(lambda: pools.endpoint("llama", "spare").get("health") == "Healthy", 15, "spare Healthy")
        return load  # type: ignore[no-any-return]

    load = wait_for(llama_load, 40, "llama-server's reading in the status", interval=1)
    assert (load["waiting"], load["running"]) == (0, 0) and "reason" not in load, load
