"""The engines' load in the status: what is shown (serving endpoints, integers, the reason a
gauge is absent), and that a change of it alone is never written, only carried along."""

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from clusterpool import api
from clusterpool.core.failover import BreakerConfig, FailoverConfig
from clusterpool.core.health import Endpoint, ProbeResult, Thresholds
from clusterpool.core.load import EngineReading, Load
from clusterpool.core.pool import PoolState, step
from clusterpool.core.status import render_status
from clusterpool.engines import PROFILES
from clusterpool.health.load import LOAD_READ_EVERY, load_reader_for
from clusterpool.pool_spec import SpecTracker
from clusterpool.pool_status import HeldEvents, InformationalPace, PoolStatus
from clusterpool.stages import Fence

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CFG = FailoverConfig(breaker=BreakerConfig(failure_threshold=1, open_seconds=30, success_threshold=1))
OK = ProbeResult(True, "ProbeSucceeded", "HTTP 200", 0.004)
BAD = ProbeResult(False, "ConnectionRefused", "connection refused")
EPS = (Endpoint("a", "198.18.0.2", 80), Endpoint("b", "198.18.0.3", 80), Endpoint("c", "198.18.0.4", 80))


def probed(results):
    state, _ = step(PoolState().with_members(EPS), results, Thresholds(1, 1), CFG, T0)
    return state


def render(state, load):
    return render_status(state, source="Static", generation=1, prev_conditions=[], now=T0, load=load)


def reading(waiting=None, running=None, kv=None, at=T0, **kw):
    return EngineReading(Load(waiting, running, kv), at, **kw)


def test_each_serving_endpoint_shows_its_reading_and_the_pool_the_sum():
    state = probed({"a": OK, "b": OK, "c": BAD})
    load = {
        "a": reading(3.0, 8.0, 0.426, at=T0 + timedelta(seconds=2)),
        "b": reading(2.0, 1.0, None),
        "c": reading(50.0, 8.0, 1.0),  # read before c failed its probe: not shown, not counted
    }
    s = render(state, load)
    a, b, c = s["endpoints"]
    assert a["load"] == {"waiting": 3, "running": 8, "kvCacheUsagePercent": 43, "readAt": "2026-01-01T00:00:02Z"}
    assert b["load"] == {"waiting": 2, "running": 1, "readAt": "2026-01-01T00:00:00Z"}
    assert "load" not in c
    assert s["load"] == {"waiting": 5, "running": 9, "reporting": 2, "readAt": "2026-01-01T00:00:00Z"}


def test_a_missing_gauge_is_absent_with_its_reason_and_no_engine_means_no_load_fields():
    state = probed({"a": OK, "b": OK, "c": OK})
    missing = PROFILES["vLLM"].describe_missing(("waiting",))
    load = {
        "a": EngineReading(Load(None, 4.0, 0.1, missing=("waiting",)), T0, "GaugesMissing", missing),
        "b": EngineReading(None, T0, "MetricsTimeout", "GET /metrics: no answer from the metrics endpoint in time"),
    }
    s = render(state, load)
    a, b, c = s["endpoints"]
    assert a["load"]["reason"] == "GaugesMissing" and "waiting" not in a["load"] and a["load"]["running"] == 4
    assert "vllm:num_requests_waiting" in a["load"]["message"] and "spec.engine" in a["load"]["message"]
    assert b["load"] == {"readAt": "2026-01-01T00:00:00Z", "reason": "MetricsTimeout", "message": load["b"].message}
    assert "load" not in c
    assert s["load"] == {"waiting": 0, "running": 0, "reporting": 0}
    plain = render(state, None)
    assert "load" not in plain and all("load" not in e for e in plain["endpoints"])


def test_odd_gauge_values_render_as_valid_fields():
    state = probed({"a": OK, "b": OK, "c": OK})
    s = render(state, {"a": reading(float("nan"), -1.0, 1.7), "b": reading(float("inf"), 2.4, -0.2)})
    a, b, _ = s["endpoints"]
    assert a["load"] == {"running": 0, "kvCacheUsagePercent": 100, "readAt": "2026-01-01T00:00:00Z"}
    assert b["load"] == {"running": 2, "kvCacheUsagePercent": 0, "readAt": "2026-01-01T00:00:00Z"}


class Writes:
    def __init__(self):
        self.sent = []

    async def __call__(self, status, stored, version):
        self.sent.append(status)
        return True


def writer(pace_every=3600.0):
    writes = Writes()
    events = HeldEvents(lambda *e: None, lambda: True)
    pace = InformationalPace(lambda: True, every=pace_every)
    return PoolStatus({"metadata": {}, "status": {}}, writes, Fence(), events, pace, None), writes


async def test_a_change_of_the_load_alone_is_never_written():
    status, writes = writer(pace_every=0.0)  # informational writes always due: load is not one of them
    state = probed({"a": OK, "b": OK, "c": OK})
    await status.write(render(state, {"a": reading(1.0)}))
    assert len(writes.sent) == 1
    for waiting in (5.0, 9.0, 0.0, 30.0):
        await status.write(render(state, {"a": reading(waiting, at=T0 + timedelta(seconds=waiting))}))
    await status.write(render(state, {"a": reading(2.0), "b": reading(7.0)}))  # a new reading, too
    assert len(writes.sent) == 1


async def test_a_health_change_carries_the_latest_load():
    status, writes = writer()
    await status.write(render(probed({"a": OK, "b": OK, "c": OK}), {"a": reading(1.0)}))
    await status.write(render(probed({"a": OK, "b": OK, "c": OK}), {"a": reading(6.0)}))
    assert len(writes.sent) == 1
    await status.write(render(probed({"a": OK, "b": OK, "c": BAD}), {"a": reading(4.0)}))
    assert len(writes.sent) == 2
    assert writes.sent[-1]["endpoints"][0]["load"]["waiting"] == 4 and writes.sent[-1]["load"]["waiting"] == 4


async def test_a_paced_informational_write_carries_the_latest_load():
    status, writes = writer(pace_every=0.0)
    state = probed({"a": OK, "b": OK, "c": OK})
    await status.write(render(state, {"a": reading(1.0)}))
    slower, _ = step(state, {"a": ProbeResult(True, "ProbeSucceeded", "HTTP 200", 0.2)}, Thresholds(1, 1), CFG, T0)
    await status.write(render(slower, {"a": reading(8.0)}))  # the latency moved: an informational write
    assert len(writes.sent) == 2 and writes.sent[-1]["load"]["waiting"] == 8


def spec_with(**fields):
    eps = [{"name": "a", "address": "198.18.0.2", "port": 80}]
    return api.parse_spec({"discovery": {"static": {"endpoints": eps}}, **fields})


def test_the_operator_reads_load_only_for_engines_with_metrics_and_at_most_every_few_seconds():
    assert load_reader_for(spec_with()) is None
    assert load_reader_for(spec_with(engine="Ollama")) is None
    assert load_reader_for(spec_with(engine="OpenAI")) is None
    every = {
        interval: load_reader_for(
            spec_with(engine="vLLM", healthCheck={"intervalSeconds": interval, "timeoutSeconds": 1, "tcp": {}})
        ).every
        for interval in (2, 3, 5, 10, 60)
    }
    assert every == {2: 3, 3: 2, 5: 1, 10: 1, 60: 1}  # rounds between reads: at most one per LOAD_READ_EVERY (5 s)
    assert LOAD_READ_EVERY == 5.0


class StoredView(Mapping):
    """A mapping that is not a dict, as kopf hands out the stored status."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def test_the_rendered_status_is_plain_as_stored_so_it_compares_with_what_was_written():
    body = {
        "metadata": {"name": "pool", "namespace": "ns", "generation": 1},
        "spec": {
            "discovery": {
                "static": {
                    "endpoints": [{"name": n, "address": f"198.18.0.{i + 2}", "port": 80} for i, n in enumerate("abc")]
                }
            },
            "models": ["m1", "m2"],
        },
    }
    specs = SpecTracker(body, lambda *e: None, logging.getLogger("test"))
    specs.spec = specs.refresh()
    specs.refresh_models()
    status, _ = writer()
    cache = StoredView({"type": "Memory", "version": StoredView({"n": (1, 2)})})  # restored after a restart
    rendered = status.render(probed({"a": OK, "b": OK, "c": OK}), specs, [], cache, {"a": reading(1.0)})
    assert json.loads(json.dumps(rendered)) == rendered  # no view, no tuple: == is how it is compared
    assert rendered["models"] == ["m1", "m2"] and rendered["cache"]["version"] == {"n": [1, 2]}
