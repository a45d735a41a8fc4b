"""Prometheus series follow the rendered status; a pool's and an endpoint's series go with them."""

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from backends import free_port
from clusterpool.metrics import Metrics, serve


def sample_value(metrics, name, labels):
    """A sample of the text a scrape returns (parsed as Prometheus would), or None."""
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


STATUS = {
    "total": 2,
    "healthy": 1,
    "eligible": 1,
    "ejected": 1,
    "activeTier": 0,
    "panic": False,
    "endpoints": [
        {"name": "a", "health": "Healthy", "eligible": True, "breaker": "Closed", "lastProbeLatencyMilliseconds": 12},
        {"name": "b", "health": "Unhealthy", "eligible": False, "breaker": "Open"},
    ],
    "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiscoveryDegraded", "status": "True"}],
    "cache": {"type": "Redis", "version": 1, "reachable": True, "latencyMicroseconds": 250, "keys": 7},
}


def test_series_follow_the_status_and_go_with_the_pool():
    reg = CollectorRegistry()
    m = Metrics(reg)
    p = m.pool("ns", "chat")

    def v(name, **labels):
        return sample_value(m, name, {"namespace": "ns", "pool": "chat", **labels})

    p.status(STATUS)
    p.event("Warning", "EndpointEjected")
    p.event("Warning", "EndpointEjected")
    p.round(0.02)
    assert v("clusterpool_pool_ready") == 1 and v("clusterpool_pool_endpoints", state="ejected") == 1
    assert v("clusterpool_pool_discovery_degraded") == 1
    assert (
        v("clusterpool_endpoint_healthy", endpoint="b") == 0
        and v("clusterpool_endpoint_breaker_open", endpoint="b") == 1
    )
    assert v("clusterpool_endpoint_probe_latency_seconds", endpoint="a") == 0.012
    assert v("clusterpool_cache_reachable") == 1 and v("clusterpool_cache_keys") == 7
    assert v("clusterpool_cache_latency_seconds") == 0.00025
    assert v("clusterpool_events_total", type="Warning", reason="EndpointEjected") == 2
    assert v("clusterpool_round_duration_seconds_count") == 1
    assert v("clusterpool_round_duration_seconds_bucket", le="0.025") == 1
    assert v("clusterpool_round_duration_seconds_bucket", le="0.01") == 0
    assert v("clusterpool_round_duration_seconds_sum") == 0.02

    # b leaves the pool, the cache goes: their series go
    p.status({**STATUS, "endpoints": STATUS["endpoints"][:1], "cache": None})
    assert v("clusterpool_endpoint_healthy", endpoint="b") is None
    assert v("clusterpool_cache_reachable") is None
    p.status({**STATUS, "conditions": [{"type": "DiscoveryDegraded", "status": "False"}]})
    assert v("clusterpool_pool_discovery_degraded") == 0 and v("clusterpool_pool_ready") == 0

    p.forget()
    assert v("clusterpool_pool_ready") is None and v("clusterpool_endpoint_healthy", endpoint="a") is None
    assert v("clusterpool_pool_discovery_degraded") is None
    assert v("clusterpool_events_total", type="Warning", reason="EndpointEjected") is None
    assert v("clusterpool_round_duration_seconds_count") is None


def test_a_scrape_renders_what_moved_and_escapes_endpoint_names():
    reg = CollectorRegistry()
    m = Metrics(reg)
    p = m.pool("ns", "chat")
    odd = {**STATUS["endpoints"][0], "name": 'a"b\\c'}
    p.status({**STATUS, "endpoints": [odd]})
    labels = {"namespace": "ns", "pool": "chat", "endpoint": 'a"b\\c'}
    assert sample_value(m, "clusterpool_endpoint_probe_latency_seconds", labels) == 0.012
    p.status({**STATUS, "endpoints": [{**odd, "lastProbeLatencyMilliseconds": 30}]})
    assert sample_value(m, "clusterpool_endpoint_probe_latency_seconds", labels) == 0.03
    p.status({**STATUS, "endpoints": [{**odd, "health": "Unhealthy", "lastProbeLatencyMilliseconds": 30}]})
    assert sample_value(m, "clusterpool_endpoint_healthy", labels) == 0

    port = free_port()
    serve(f"http://127.0.0.1:{port}/metrics", m)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert r.read() == m.exposition()


def test_the_api_check_sets_the_api_gauge():
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert reg.get_sample_value("clusterpool_kubernetes_api_reachable") == 1
    m.api_down(OSError("refused"))
    assert reg.get_sample_value("clusterpool_kubernetes_api_reachable") == 0
    m.api_up()
    assert reg.get_sample_value("clusterpool_kubernetes_api_reachable") == 1


def test_shard_membership_changes_are_counted():
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.shards_changed(("a",))
    m.shards_changed(("a", "b", "c"))
    m.shards_changed(("a", "c"))
    assert reg.get_sample_value("clusterpool_shard_members") == 2
    assert reg.get_sample_value("clusterpool_shard_membership_changes_total") == 3


def test_garbage_collections_are_timed_until_unwatched():
    import gc

    reg = CollectorRegistry()
    m = Metrics(reg)
    unwatch = m.watch_gc()
    gc.collect()
    gc.collect(0)
    full = reg.get_sample_value("clusterpool_gc_pause_seconds_count", {"generation": "2"})
    young = reg.get_sample_value("clusterpool_gc_pause_seconds_count", {"generation": "0"})
    assert full is not None and full >= 1 and young is not None and young >= 1
    unwatch()
    gc.collect()
    assert reg.get_sample_value("clusterpool_gc_pause_seconds_count", {"generation": "2"}) == full
