"""Engine profiles, spec.engine, and reading load gauges out of Prometheus text."""

import pytest
from pydantic import ValidationError

from clusterpool import api
from clusterpool.client.load import LoadScraper, gauge_value, read_gauges
from clusterpool.core.load import NO_SIGNAL, SATURATED, Load, LoadWeights, load_score
from clusterpool.engines import ENGINES, PROFILES, find_profile, profile_for
from clusterpool.health.probes import HTTPProber

VLLM_TEXT = b"""# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 3.0
vllm:num_requests_waiting{engine="1",model_name="a"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
vllm:num_requests_running{model_name="a"} 7
"""


def test_a_gauge_is_the_sum_of_its_series_and_only_whole_names_match():
    assert gauge_value(VLLM_TEXT, b"vllm:num_requests_waiting") == 5.0
    assert gauge_value(VLLM_TEXT, b"vllm:num_requests_running") == 7.0
    assert gauge_value(VLLM_TEXT, b"vllm:num_requests") is None
    assert gauge_value(b"tgi_queue_size 4\ntgi_batch_current_size 2 1700000000\n", b"tgi_batch_current_size") == 2.0


def test_an_older_name_is_read_when_the_newer_is_absent_and_missing_gauges_are_named():
    values, missing = read_gauges(VLLM_TEXT, PROFILES["vLLM"].gauges)
    assert values == {"waiting": 5.0, "running": 7.0, "kvUsage": 0.25}
    assert missing == ()
    values, missing = read_gauges(b"vllm:num_requests_waiting 1\n", PROFILES["vLLM"].gauges)
    assert values == {"waiting": 1.0} and missing == ("running", "kvUsage")


def test_every_engine_has_a_profile_with_a_health_path():
    assert set(PROFILES) == set(ENGINES)
    for name, p in PROFILES.items():
        assert p.engine == name and p.health_path.startswith("/")
    assert PROFILES["Ollama"].metrics_path is None and PROFILES["Ollama"].busy_status == 503
    assert find_profile("SomethingNew") is None
    with pytest.raises(ValueError, match="unknown engine 'Nope'; expected one of vLLM"):
        profile_for("Nope")


def spec(**extra):
    return {"discovery": {"static": {"endpoints": [{"name": "a", "address": "198.18.0.1", "port": 8000}]}}, **extra}


def test_spec_engine_and_the_new_strategies_are_accepted_and_bad_ones_named():
    s = api.parse_spec(spec(engine="SGLang", strategy="PrefixAffinity"))
    assert s.engine == "SGLang" and s.strategy == "PrefixAffinity"
    with pytest.raises(ValidationError) as exc:
        api.parse_spec(spec(engine="vllm"))
    assert "spec.engine" in api.spec_errors(exc.value) and "'vLLM'" in api.spec_errors(exc.value)


def test_an_http_probe_without_a_path_requests_the_engines_health_path():
    check = api.parse_spec(spec(engine="Ollama", healthCheck={"http": {}})).health_check
    assert check.http is not None and check.http.path is None
    assert HTTPProber(check.http, 1.0, "Ollama").path == "/"
    assert HTTPProber(check.http, 1.0, "OpenAI").path == "/v1/models"
    assert HTTPProber(check.http, 1.0).path == "/health"
    explicit = api.HTTPCheck(path="/ready")
    assert HTTPProber(explicit, 1.0, "Ollama").path == "/ready"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_reading_never_made_or_gone_stale_counts_as_saturated():
    clock = Clock()
    scraper = LoadScraper(interval=0.25, stale_after=1.0, clock=clock)
    scraper.watch("198.18.0.1", 8000, PROFILES["vLLM"])
    assert scraper.load("198.18.0.1", 8000) == SATURATED
    scraper.watch("198.18.0.2", 8000, PROFILES["Ollama"])  # no metrics: client-side signals
    assert scraper.load("198.18.0.2", 8000) == NO_SIGNAL
    scraper.report_busy("198.18.0.2", 8000, seconds=2.0)  # its 503: saturated for a while
    assert scraper.load("198.18.0.2", 8000) == SATURATED
    clock.now += 2.1
    assert scraper.load("198.18.0.2", 8000) == NO_SIGNAL


def test_an_endpoint_is_watched_once_however_many_pools_hold_it():
    scraper = LoadScraper()
    scraper.watch("198.18.0.1", 8000, PROFILES["vLLM"])
    scraper.watch("198.18.0.1", 8000, PROFILES["vLLM"])
    assert scraper.watched() == [("198.18.0.1", 8000)]
    scraper.unwatch("198.18.0.1", 8000)
    assert scraper.watched() == [("198.18.0.1", 8000)]
    scraper.unwatch("198.18.0.1", 8000)
    assert scraper.watched() == []


def test_saturated_scores_above_any_reading_and_in_flight_orders_the_saturated():
    w = LoadWeights()
    busiest = load_score(Load(waiting=10_000, running=512, kv_usage=1.0), 100, w)
    assert load_score(SATURATED, 0, w) > busiest
    assert load_score(SATURATED, 1, w) > load_score(SATURATED, 0, w)
