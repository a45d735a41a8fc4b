"""The operator's Prometheus endpoint, scraped while a pool runs, loses a backend and goes."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import endpoints_of, wait_for


def scrape(operator, namespace):
    with urllib.request.urlopen(operator.metrics, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("namespace") in (namespace, None):
                key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "namespace")))
                out[key] = s.value
    return out


def test_metrics_follow_the_pool(pools, http_backends, operator):
    backends = http_backends(2)
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
        "failover": {"maxEjectionPercent": 100, "panicThresholdPercent": 0},
    }
    pools.create("mx", spec)
    pools.wait_ready("mx", 2)
    pool = (("pool", "mx"),)

    def value(name, **labels):
        return scrape(operator, pools.namespace).get((name, tuple(sorted({**dict(pool), **labels}.items()))))

    wait_for(lambda: value("clusterpool_pool_endpoints", state="healthy") == 2, 10, "2 healthy in the metrics")
    assert value("clusterpool_pool_ready") == 1
    assert value("clusterpool_endpoint_healthy", endpoint="ep-1") == 1
    assert value("clusterpool_round_duration_seconds_count") >= 1
    assert scrape(operator, pools.namespace)[("clusterpool_kubernetes_api_reachable", ())] == 1

    backends[1].stop()
    wait_for(lambda: value("clusterpool_endpoint_healthy", endpoint="ep-1") == 0, 15, "ep-1 down in the metrics")
    assert value("clusterpool_endpoint_breaker_open", endpoint="ep-1") == 1
    assert value("clusterpool_pool_endpoints", state="ejected") == 1
    wait_for(
        lambda: (value("clusterpool_events_total", type="Warning", reason="EndpointEjected") or 0) >= 1,
        10,
        "the ejection Event counted",
    )

    pools.delete("mx")
    wait_for(lambda: value("clusterpool_pool_ready") is None, 30, "the pool's series to go with it")
    assert value("clusterpool_endpoint_healthy", endpoint="ep-0") is None
