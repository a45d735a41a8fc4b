"""Engine profiles against the fake engine in each engine's mode, as a process of its own on
127.0.0.x: health paths probed, load gauges scraped, stale metrics counted as saturated,
failures reported, and the load-aware strategies routing on what the engines report."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from fake_engines import Engine, in_background

from clusterpool import api
from clusterpool.balancer import affinity_key
from clusterpool.client import PoolClient, RoutingTable, StaticTable
from clusterpool.client.load import LoadScraper
from clusterpool.core.failover import BreakerConfig
from clusterpool.core.health import Endpoint
from clusterpool.core.load import NO_SIGNAL, SATURATED
from clusterpool.engines import PROFILES
from clusterpool.health.probes import prober_for
from conftest import wait_for

MODE_ENGINE = {"vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI", "llamacpp": "LlamaCpp", "ollama": "Ollama",
               "openai": "OpenAI"}  # fmt: skip
SCRAPED = ("vllm", "sglang", "tgi", "llamacpp")


@pytest.fixture
def scraper() -> Iterator[tuple[LoadScraper, list[tuple[str, int, str]]]]:
    failures: list[tuple[str, int, str]] = []
    s = LoadScraper(interval=0.05, stale_after=0.5, on_failure=lambda a, p, why: failures.append((a, p, why)))
    s.start()
    yield s, failures
    s.stop()


@pytest.mark.parametrize("mode", list(MODE_ENGINE))
def test_each_engines_health_path_is_probed_when_the_check_names_none(engines, mode):
    engine = engines(mode)
    check = api.parse_spec(
        {"engine": MODE_ENGINE[mode], "healthCheck": {"http": {}},
         "discovery": {"static": {"endpoints": [{"name": "e", "address": engine.host, "port": engine.port}]}}}
    )  # fmt: skip
    ep = Endpoint("e", engine.host, engine.port)
    result = asyncio.run(prober_for(check.health_check, check.engine)(ep))
    assert result.ok, result.message
    assert PROFILES[MODE_ENGINE[mode]].health_path in result.message
    engine.faults(healthy=False)
    result = asyncio.run(prober_for(check.health_check, check.engine)(ep))
    assert not result.ok and "HTTP 503" in result.message


@pytest.mark.parametrize("mode", SCRAPED)
def test_each_engines_queue_and_batch_are_scraped_under_its_own_names(engines, scraper, mode):
    s, failures = scraper
    engine = engines(mode, "--max-running", "2", "--tokens-per-second", "5")
    s.watch(engine.host, engine.port, PROFILES[MODE_ENGINE[mode]])
    threads = in_background(engine, 5, {"prompt": "hello " * 50, "max_tokens": 10})
    load = wait_for(
        lambda: (lambda x: x if x.waiting == 3 and x.running == 2 else None)(s.load(engine.host, engine.port)),
        10, f"{mode}: 2 running and 3 waiting", interval=0.02, describe=lambda: s.load(engine.host, engine.port),
    )  # fmt: skip
    assert not load.saturated and load.missing == ()
    if mode in ("vllm", "sglang"):
        assert load.kv_usage is not None and load.kv_usage > 0
    for t in threads:
        t.join(15)
    wait_for(lambda: s.load(engine.host, engine.port).waiting == 0, 10, "the queue drained")
    assert failures == []


def test_vllm_older_kv_gauge_name_is_read(engines, scraper):
    s, _ = scraper
    engine = engines("vllm", "--legacy-metrics", "--tokens-per-second", "5")
    s.watch(engine.host, engine.port, PROFILES["vLLM"])
    threads = in_background(engine, 1, {"prompt": "x " * 400, "max_tokens": 5})
    wait_for(lambda: (s.load(engine.host, engine.port).kv_usage or 0) > 0, 10, "KV use from gpu_cache_usage_perc")
    for t in threads:
        t.join(15)


def test_frozen_metrics_count_as_saturated_and_are_reported(engines, scraper):
    s, failures = scraper
    engine = engines("vllm")
    s.watch(engine.host, engine.port, PROFILES["vLLM"])
    wait_for(lambda: s.load(engine.host, engine.port).waiting == 0, 10, "a first reading")
    engine.faults(metrics="hang")
    wait_for(lambda: s.load(engine.host, engine.port) == SATURATED, 5, "the stale reading to count as saturated")
    wait_for(lambda: any("MetricsTimeout" in why for _, _, why in failures), 5, "the timeout reported")
    engine.faults(metrics="live")
    wait_for(lambda: not s.load(engine.host, engine.port).saturated, 10, "a fresh reading again")


def test_a_killed_engine_is_saturated_and_its_refusals_reported_with_a_backoff(engines, scraper):
    s, failures = scraper
    engine = engines("sglang")
    s.watch(engine.host, engine.port, PROFILES["SGLang"])
    wait_for(lambda: not s.load(engine.host, engine.port).saturated, 10, "a first reading")
    engine.stop()
    wait_for(lambda: s.load(engine.host, engine.port) == SATURATED, 5, "saturated once the reading is stale")
    wait_for(lambda: len(failures) >= 3, 10, "refusals reported")
    # the kept-alive connection may be reset as the engine stops; every new one is refused
    assert all("ConnectionRefused" in why or "ConnectionReset" in why for _, _, why in failures), failures
    assert "ConnectionRefused" in failures[-1][2], failures
    count = len(failures)
    time.sleep(2.0)
    # every 50 ms without the backoff (40 in 2 s); with it at most one per 2 s after a few
    assert len(failures) - count <= 4, failures


def test_a_missing_gauge_is_a_flag_not_an_error_loop(engines, scraper):
    s, failures = scraper
    engine = engines("tgi")  # TGI's metrics, read with vLLM's profile: every gauge missing
    s.watch(engine.host, engine.port, PROFILES["vLLM"])
    load = wait_for(lambda: s.load(engine.host, engine.port).missing, 10, "a reading")
    assert set(load) == {"waiting", "running", "kvUsage"}
    before = s.scrapes
    time.sleep(1.0)
    assert s.scrapes - before <= 25  # the normal rate (one per 50 ms), not a retry loop
    assert failures == []


def test_ollama_answers_503_when_its_queue_is_full_and_has_no_metrics(engines, scraper):
    s, _ = scraper
    engine = engines("ollama", "--max-running", "1", "--max-waiting", "1", "--tokens-per-second", "5")
    s.watch(engine.host, engine.port, PROFILES["Ollama"])
    assert s.load(engine.host, engine.port) == NO_SIGNAL
    threads = in_background(engine, 2, {"prompt": "hi", "max_tokens": 10})
    wait_for(lambda: engine.stats()["waiting"] == 1, 10, "one running, one waiting")
    status, body = engine.post("/v1/completions", {"prompt": "hi", "max_tokens": 1})
    assert status == PROFILES["Ollama"].busy_status and b"maximum pending requests exceeded" in body
    for t in threads:
        t.join(15)


def test_streaming_chat_follows_the_openai_format_and_faults_cut_it(engines):
    engine = engines("vllm", "--tokens-per-second", "200")
    req = urllib.request.Request(
        engine.url + "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        events = [line for line in r.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and len(events) == 6
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "tok "
    engine.faults(reset_after_tokens=2)
    # the connection drops mid-body: http.client finds the chunked body cut short
    with pytest.raises((OSError, http.client.HTTPException, ValueError)), urllib.request.urlopen(req, timeout=10) as r:
        r.read()
    engine.faults(reset_after_tokens=-1, error_rate=1.0)
    assert engine.post("/v1/chat/completions", {"messages": []})[0] == 500


def test_reset_empties_the_prefix_cache_and_clears_faults(engines):
    engine = engines("vllm", "--tokens-per-second", "1000")
    body = {"prompt": "a shared system prompt. " * 40, "max_tokens": 1}

    def cached() -> int:
        status, raw = engine.post("/v1/completions", body)
        assert status == 200
        return int(json.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached() == 0
    assert cached() > 200  # the second time, its blocks are in the cache
    engine.faults(error_rate=1.0)
    assert engine.post("/admin/reset", {})[0] == 200
    assert engine.stats()["faults"]["error_rate"] == 0.0
    assert cached() == 0  # a cold cache again


def table(strategy: str, engine: str, endpoints: list[Engine]) -> RoutingTable:
    from clusterpool.balancer import Target

    targets = tuple(Target(f"e{i}", e.host, e.port) for i, e in enumerate(endpoints))
    return RoutingTable("r1", strategy, targets, BreakerConfig(), engine=engine)


def test_least_loaded_routes_away_from_the_engine_with_a_queue(engines):
    busy = engines("vllm", "--max-running", "1", "--tokens-per-second", "2")
    idle = engines("vllm")
    s = LoadScraper(interval=0.05).start()
    pool = PoolClient(StaticTable(table("LeastLoaded", "vLLM", [busy, idle])), load=s)
    try:
        in_background(busy, 4, {"prompt": "x", "max_tokens": 20})  # another client loads it
        wait_for(lambda: (s.load(busy.host, busy.port).waiting or 0) >= 3, 10, "a queue on the busy engine")
        assert {pool.choose().name for _ in range(20)} == {"e1"}
    finally:
        pool.close()
        s.stop()
    assert s.watched() == []


def test_prefix_affinity_makes_the_engines_prefix_caches_hit(engines):
    fleet = [engines("vllm", "--cache-blocks", "40") for _ in range(4)]
    order = random.Random(7).choices(range(8), k=64)  # tenants in no pattern round robin could align with
    s = LoadScraper(interval=0.05).start()
    tenants = [f"Tenant {t} system prompt: answer about ledger {t}. " * 12 for t in range(8)]

    def hit_rate(strategy: str) -> float:
        pool = PoolClient(StaticTable(table(strategy, "vLLM", fleet)), load=s)
        for e in fleet:
            wait_for(lambda e=e: not s.load(e.host, e.port).saturated, 10, "fresh readings")
        before = [e.stats() for e in fleet]
        for i in range(64):
            body = {"prompt": tenants[order[i]] + f"question {i}", "max_tokens": 1}
            with pool.request(key=affinity_key(body)) as t:
                status, _ = next(e for e in fleet if e.port == t.port and e.host == t.address).post(
                    "/v1/completions", body
                )
                assert status == 200
        pool.close()
        after = [e.stats() for e in fleet]
        hits = sum(a["cached_prompt_tokens"] - b["cached_prompt_tokens"] for a, b in zip(after, before, strict=True))
        total = sum(a["prompt_tokens"] - b["prompt_tokens"] for a, b in zip(after, before, strict=True))
        return hits / total

    try:
        round_robin = hit_rate("RoundRobin")
        # fresh caches for the second run: the same prompts, other tenants' numbers
        tenants[:] = [t.replace("ledger", "account") for t in tenants]
        affinity = hit_rate("PrefixAffinity")
    finally:
        s.stop()
    # a tenant's prompt is 9 blocks, each engine's cache holds 40: round robin brings all 8
    # tenants to every engine and they evict each other; affinity gives each engine its own
    assert affinity > 0.8, (affinity, round_robin)
    assert affinity > round_robin + 0.3, (affinity, round_robin)


def test_failed_scrapes_open_the_clients_breaker_for_that_endpoint(engines):
    dead, alive = engines("vllm"), engines("vllm")
    s = LoadScraper(interval=0.05).start()
    pool = PoolClient(StaticTable(table("LeastLoaded", "vLLM", [dead, alive])), load=s)
    try:
        wait_for(lambda: not s.load(dead.host, dead.port).saturated, 10, "a first reading")
        assert pool.breaker_state("e0") == "Closed"
        dead.stop()
        wait_for(lambda: pool.breaker_state("e0") == "Open", 10, "the breaker opened by failed scrapes")
        assert pool.breaker_state("e1") == "Closed"
        assert {pool.choose().name for _ in range(10)} == {"e1"}
    finally:
        pool.close()
        s.stop()
