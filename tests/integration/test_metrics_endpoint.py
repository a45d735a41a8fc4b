"""The operator's Prometheus endpoint, scraped while a pool runs, loses a backend and goes."""

import contextlib
import json
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import endpoints_of, helm_rendered, wait_for


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


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr):
    """The metric names a PromQL expression reads: what is left once strings, label
    matchers, ranges, grouping clauses and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in PROMQL_WORDS}


def test_metric_names_are_found_in_promql():
    expr = 'histogram_quantile(0.95, sum by (le) (rate(a_bucket{pool=~"$pool"}[$__rate_interval]))) / b and on(x) c'
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names('label_values(clusterpool_pool_ready{namespace=~"$namespace"}, pool)') == {
        "clusterpool_pool_ready",
        "pool",  # a label_values() label argument: the caller drops it
    }


def dashboard_queries(board):
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            # label_values(<series>, <label>): the series' names only
            yield f"${var['name']}", var["definition"].removeprefix("label_values(").rsplit(",", 1)[0]


def test_every_dashboard_query_reads_a_metric_the_operator_exports(
    helm_bin, pools, http_backends, redis_server, operator
):
    objs = helm_rendered(helm_bin, "--set", "grafanaDashboard.enabled=true")
    board = json.loads(objs[("ConfigMap", "rel-clusterpool-operator-dashboard")]["data"]["clusterpool.json"])
    used = {(title, name) for title, expr in dashboard_queries(board) for name in metric_names(expr)}
    assert len({title for title, _ in used}) >= 15  # the panels were read

    # a pool that makes every kind of series: HTTP probes, a Redis cache, Events
    server = redis_server()
    spec = {
        "discovery": {"static": {"endpoints": endpoints_of(http_backends(2))}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "http": {}},
        "cache": {"type": "Redis", "redis": {"address": server.address}},
    }
    pools.create("board", spec)
    pools.wait_ready("board", 2)
    pool = (("pool", "board"),)
    wait_for(lambda: ("clusterpool_cache_keys", pool) in scrape(operator, pools.namespace), 20, "the cache's series")

    def missing() -> list[str]:
        with urllib.request.urlopen(operator.metrics, timeout=5) as r:
            exported = {s.name for family in text_string_to_metric_families(r.read().decode()) for s in family.samples}
        return sorted(f"{name} (panel {title})" for title, name in used if name not in exported)

    # a series appears once its first sample is taken (the round duration when a round
    # ends, which can come after the cache's first check): give them a few rounds
    with contextlib.suppress(AssertionError):  # the assertion below names what is missing
        wait_for(lambda: not missing(), 20, "every series the dashboard reads")
    absent = missing()
    assert not absent, f"the dashboard reads series the operator does not export: {absent}"
