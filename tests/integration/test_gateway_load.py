"""The load-aware strategies through the gateway, against fake engines on 127.0.0.x: PrefixAffinity
keeps a prompt prefix on one engine (the same one in every gateway process), LeastLoaded
routes away from the engine whose metrics report a queue, and from the engine that answers
slowly without any queue to show for it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from fake_engines import Engine, in_background
from gateway_process import GatewayProcess

from conftest import wait_for


def engine_table(strategy: str, fleet: list[Engine]) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "revision": "r1",
        "pool": {"namespace": "team", "name": "chat"},
        "models": ["fake-model"],
        "strategy": strategy,
        "engine": "vLLM",
        "panic": False,
        "circuitBreaker": {"failureThreshold": 3, "openSeconds": 30},
        "endpoints": [
            {"name": f"e{i}", "address": e.host, "port": e.port, "eligible": True, "effectiveWeight": 1}
            for i, e in enumerate(fleet)
        ],
        "cache": None,
    }


def endpoint_of(gw: GatewayProcess, body: dict[str, Any] | None = None, **headers: str) -> str:
    """The endpoint the gateway sent the request to: a completion, or the engine's health path
    (answered at once, however deep the engine's queue)."""
    data = json.dumps(body).encode() if body is not None else None
    path = "/v1/chat/completions" if body is not None else "/pools/team/chat/health"
    req = urllib.request.Request(gw.url + path, data, {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        assert r.status == 200
        return str(r.headers["X-ClusterPool-Endpoint"])


def status_of(gw: GatewayProcess, body: bytes) -> int:
    req = urllib.request.Request(gw.url + "/v1/chat/completions", body, {"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def chat(system: str, user: str) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "max_tokens": 2,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


def test_prefix_affinity_keeps_a_prefix_on_one_engine_in_every_gateway(engines, gateway):
    fleet = [engines("vllm") for _ in range(4)]
    table = engine_table("PrefixAffinity", fleet)
    first, second = gateway([], table=table), gateway([], table=table)
    shared = "You are the ledger assistant of the accounts team; answer in short sentences. " * 8
    assert len({endpoint_of(first, chat(shared, f"question {i}")) for i in range(8)}) == 1

    prefixes = [f"Tenant {t} system prompt: answer about ledger {t}. " * 8 for t in range(8)]
    chosen = [endpoint_of(first, chat(p, "hello")) for p in prefixes]
    assert len(set(chosen)) >= 2, chosen  # different prefixes spread over the engines
    assert [endpoint_of(second, chat(p, "another question")) for p in prefixes] == chosen  # no shared state

    # a session id keys the request instead of its prompt; a body that is not JSON gets no key
    sessions = {endpoint_of(first, chat(p, "hi"), **{"X-Session-Id": "s-42"}) for p in prefixes}
    assert len(sessions) == 1
    assert status_of(first, b"not json") < 500  # the engine's own answer, not a gateway failure
    assert first.proc.poll() is None


def test_least_loaded_avoids_the_engine_whose_metrics_report_a_queue(engines, gateway):
    busy = engines("vllm", "--max-running", "1", "--tokens-per-second", "2")
    idle = engines("vllm")
    in_background(busy, 4, {"prompt": "x", "max_tokens": 20})  # another client's load: 1 running, 3 waiting
    wait_for(lambda: busy.stats()["waiting"] >= 3, 10, "a queue on the busy engine", describe=busy.stats)
    gw = gateway([], table=engine_table("LeastLoaded", [busy, idle]))
    wait_for(lambda: endpoint_of(gw) == "e1", 10, "the gateway reading the engines' load")
    assert {endpoint_of(gw, chat("sys", f"q {i}")) for i in range(12)} == {"e1"}
    assert busy.stats()["waiting"] >= 1  # the queue was still there while the requests went by


def test_least_loaded_avoids_the_engine_that_answers_slowly_without_a_queue(engines, gateway):
    fleet = [engines("vllm") for _ in range(3)]
    fleet[0].faults(slow_factor=20.0)  # every duration 20x: nothing in its metrics says so
    gw = gateway([], table=engine_table("LeastLoaded", fleet))
    wait_for(lambda: endpoint_of(gw, chat("sys", "warm")) == "e0", 10, "a first answer from the slow engine")
    for i in range(3):  # one answer from each fast engine too: the fleet's median
        endpoint_of(gw, chat("sys", f"fast {i}"))
    # one request at a time: nothing queues, every engine has nothing in flight when the
    # gateway picks; only the latencies it saw tell the slow engine apart
    picks = [endpoint_of(gw, chat("sys", f"q {i}")) for i in range(12)]
    assert "e0" not in picks, picks
    assert set(picks) == {"e1", "e2"}
    assert fleet[0].stats()["waiting"] == 0

    # the pool's weights (spec.leastLoaded, in the routing table) without the latency term:
    # this gateway sends the slow engine its turn
    blind = gateway([], table={**engine_table("LeastLoaded", fleet), "leastLoaded": {"latency": 0}})
    assert "e0" in {endpoint_of(blind, chat("sys", f"b {i}")) for i in range(6)}
