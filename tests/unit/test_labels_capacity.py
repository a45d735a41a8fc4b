"""Endpoint labels and capacity: the label rules, what each source maps to labels, the
routing table's new fields (read by old and new clients), selectors and capacity in the
SDK, and how LeastConnections and Adaptive weigh in-flight requests against capacity."""

import asyncio
import json
import threading
import time
from datetime import UTC, datetime

import pytest

from clusterpool import api
from clusterpool.balancer import Adaptive, LeastConnections, NoEndpointError, Target
from clusterpool.client import CapacityError, PoolClient, RoutingTable, StaticTable
from clusterpool.core.failover import FailoverConfig
from clusterpool.core.health import Thresholds
from clusterpool.core.labels import as_selector, label_errors, matches, parse_capacity, valid_labels
from clusterpool.core.pool import PoolState, step
from clusterpool.core.publish import build_routing_table
from clusterpool.core.status import render_status
from clusterpool.discovery.consul import members_from_consul
from clusterpool.discovery.kubernetes import members_from_slices
from clusterpool.discovery.source import members_from_status
from clusterpool.discovery.static import static_members

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_label_rules_follow_kubernetes():
    assert label_errors({"model": "llama-3-8b", "example.com/zone": "a", "role": ""}) == []
    assert label_errors({f"{'p' * 253}/{'n' * 63}": "v" * 63}) == []
    for bad_key in ("", "my model", "a/b/c", "Example.com/zone", "n" * 64, f"{'p' * 254}/zone", "-x", "/x"):
        assert label_errors({bad_key: "v"}), bad_key
    for bad_value in ("v" * 64, "llama/3", "-x", "x-", "a b"):
        assert label_errors({"k": bad_value}), bad_value
    assert label_errors({f"k{i}": "" for i in range(17)}) == ["at most 16 labels per endpoint (got 17)"]


def test_sources_keep_the_valid_labels_and_drop_the_rest():
    labels, dropped = valid_labels({"model": "x", "bad key": "y", "zone": "no/slash"})
    assert labels == (("model", "x"),)
    assert sorted(dropped) == ["bad key", "zone"]
    assert parse_capacity("8") == 8 and parse_capacity(" 3 ") == 3
    assert parse_capacity("0") is None and parse_capacity("lots") is None and parse_capacity("1000001") is None


def test_a_static_endpoint_error_names_the_endpoint_and_the_rule():
    spec = {
        "discovery": {"static": {"endpoints": [{"name": "gpu-1", "address": "a", "port": 1, "labels": {"a b": ""}}]}}
    }
    with pytest.raises(ValueError) as exc:
        api.parse_spec(spec)
    assert "labels of endpoint gpu-1: a label key is" in api.spec_errors(exc.value)  # type: ignore[arg-type]


def test_static_labels_and_capacity_reach_status_and_the_routing_table_and_survive_a_restart():
    spec = api.parse_spec(
        {
            "discovery": {
                "static": {
                    "endpoints": [
                        {"name": "a", "address": "198.18.1.1", "port": 80, "labels": {"model": "m1"}, "capacity": 4},
                        {"name": "b", "address": "198.18.1.2", "port": 80},
                    ]
                }
            }
        }
    )
    assert spec.discovery.static is not None
    members = static_members(spec.discovery.static)
    state, _ = step(
        PoolState().with_members(members),
        {},
        Thresholds(1, 1),
        FailoverConfig(),
        NOW,
    )
    status = render_status(state, source="Static", generation=1, prev_conditions=[], now=NOW)
    a, b = status["endpoints"]
    assert a["labels"] == {"model": "m1"} and a["capacity"] == 4
    assert "labels" not in b and "capacity" not in b
    api.ClusterPoolStatus.model_validate(status)  # what the CRD's status schema declares
    pool = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1}}
    table = build_routing_table(pool, spec, state)
    assert table["endpoints"][0]["labels"] == {"model": "m1"} and table["endpoints"][0]["capacity"] == 4
    assert table["endpoints"][1]["labels"] == {} and table["endpoints"][1]["capacity"] is None
    assert members_from_status(status) == members  # after a restart with the source away


def test_endpointslice_labels_zone_node_and_capacity():
    slices = [
        {
            "metadata": {
                "name": "vllm-x",
                "labels": {
                    "kubernetes.io/service-name": "vllm",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "service.kubernetes.io/headless": "",
                    "app.kubernetes.io/name": "vllm",
                    "model": "llama-3-8b",
                    "clusterpool.dev/capacity": "16",
                },
            },
            "ports": [{"port": 8000}],
            "endpoints": [
                {
                    "addresses": ["198.18.2.1"],
                    "conditions": {"ready": True},
                    "zone": "eu-1a",
                    "nodeName": "node-1",
                    "hostname": "vllm-0",
                    "targetRef": {"kind": "Pod", "name": "vllm-0"},
                },
                {"addresses": ["198.18.2.2"], "conditions": {"ready": True}},
            ],
        }
    ]
    [second, first] = members_from_slices(api.KubernetesDiscovery(service="vllm"), slices)
    assert dict(first.labels) == {
        "app.kubernetes.io/name": "vllm",
        "model": "llama-3-8b",
        "topology.kubernetes.io/zone": "eu-1a",
        "clusterpool.dev/node": "node-1",
        "clusterpool.dev/hostname": "vllm-0",
    }
    assert first.capacity == 16 and second.capacity == 16
    assert dict(second.labels) == {"app.kubernetes.io/name": "vllm", "model": "llama-3-8b"}


def test_consul_meta_and_key_value_tags_become_labels_and_capacity():
    entries = [
        {
            "Service": {
                "ID": "vllm-1",
                "Address": "198.18.3.1",
                "Port": 8000,
                "Meta": {"model": "llama-3-8b", "capacity": "12", "note": "not a label value!"},
                "Tags": ["zone=b", "model=overridden-by-meta", "primary"],
            },
            "Checks": [{"Status": "passing"}],
        },
        {"Service": {"ID": "vllm-2", "Address": "198.18.3.2", "Port": 8000, "Meta": {"capacity": "none"}}},
    ]
    one, two = members_from_consul(entries, only_passing=False)
    assert dict(one.labels) == {"model": "llama-3-8b", "zone": "b"}
    assert one.capacity == 12
    assert two.labels == () and two.capacity is None


def table_text(endpoints, strategy="RoundRobin"):
    return json.dumps(
        {
            "schemaVersion": 1,
            "revision": "r",
            "strategy": strategy,
            "circuitBreaker": {},
            "endpoints": [
                {"name": n, "address": f"10.0.0.{i}", "port": 80, "eligible": True, "effectiveWeight": 1, **extra}
                for i, (n, extra) in enumerate(endpoints)
            ],
        }
    )


def test_the_new_client_reads_tables_without_labels_and_the_fields_are_additive():
    old = RoutingTable.parse(table_text([("a", {}), ("b", {})]))  # as an older operator writes it
    assert [(t.labels, t.capacity) for t in old.targets] == [((), None), ((), None)]
    new = RoutingTable.parse(table_text([("a", {"labels": {"model": "x"}, "capacity": 2, "futureField": 1})]))
    assert new.targets[0].labels == (("model", "x"),) and new.targets[0].capacity == 2


def client(endpoints, strategy="RoundRobin", **kw):
    return PoolClient(StaticTable(RoutingTable.parse(table_text(endpoints, strategy))), **kw)


MODELS = [
    ("a1", {"labels": {"model": "a", "zone": "z1"}}),
    ("a2", {"labels": {"model": "a", "zone": "z2"}}),
    ("b1", {"labels": {"model": "b", "zone": "z1"}}),
]


@pytest.mark.parametrize("strategy", ["RoundRobin", "LeastConnections", "Weighted", "ConsistentHash", "Adaptive"])
def test_a_selector_keeps_every_strategy_on_the_matching_endpoints(strategy):
    pool = client(MODELS, strategy)
    picked = set()
    for i in range(200):
        with pool.request(key=f"k{i}", selector={"model": "a"}) as t:
            picked.add(t.name)
    assert picked == {"a1", "a2"}
    with pool.request(selector="model=a,zone=z2") as t:
        assert t.name == "a2"
    fresh = client(MODELS, strategy)  # (Adaptive here would keep off the one it saw slowest)
    assert {fresh.choose(f"k{i}").name for i in range(200)} == {"a1", "a2", "b1"}  # no selector: all
    with pytest.raises(NoEndpointError, match="no eligible endpoint matching model=c"):
        pool.choose(selector={"model": "c"})


def test_selector_text_is_checked():
    assert as_selector("model=a, zone = z1") == frozenset({("model", "a"), ("zone", "z1")})
    assert matches((("model", "a"), ("zone", "z1")), as_selector({"model": "a"}))
    with pytest.raises(ValueError, match="key=value"):
        as_selector("model")


def test_in_flight_counts_are_shared_across_selectors():
    pool = client(MODELS, "LeastConnections")
    by_model = pool.balancer_for({"model": "a"})  # a selector seen before the request
    t = pool.acquire(selector={"model": "a", "zone": "z1"})
    assert t.name == "a1"
    assert pool.balancer.inflight("a1") == 1 and by_model.inflight("a1") == 1
    assert pool.balancer_for({"zone": "z1"}).inflight("a1") == 1  # a selector seen after it
    assert pool.acquire(selector={"model": "a"}).name == "a2"  # LeastConnections saw a1 busy
    pool.finished(t, 0.01, True)
    assert pool.balancer.inflight("a1") == 0 and by_model.inflight("a1") == 0
    assert pool.balancer_for({"zone": "z1"}).inflight("a1") == 0


def test_capacity_fails_fast_with_a_clear_error():
    pool = client([("a", {"capacity": 1, "labels": {"model": "x"}}), ("b", {"capacity": 2})])
    held = [pool.acquire() for _ in range(3)]
    assert sorted(t.name for t in held) == ["a", "b", "b"]
    with pytest.raises(CapacityError, match="every eligible endpoint is at its capacity"):
        pool.acquire()
    with pytest.raises(CapacityError, match="matching model=x is at its capacity"):
        pool.choose(selector={"model": "x"})
    pool.finished(held[0], 0.01, True)
    assert pool.acquire(selector={"model": "x"}).name == "a"


def test_capacity_waits_for_room_up_to_the_bound():
    pool = client([("a", {"capacity": 1})], capacity_wait=30.0)
    first = pool.acquire()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire().name))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # waiting, not refused
    pool.finished(first, 0.01, True)
    waiter.join(10)
    assert got == ["a"]
    with pytest.raises(CapacityError, match=r"after waiting 0\.05s"):
        pool.acquire(wait=0.05)  # the caller's bound wins over the client's default


def test_capacity_waits_without_blocking_the_event_loop():
    pool = client([("a", {"capacity": 1})])

    async def scenario() -> str:
        first = await pool.acquire_async()
        waiting = asyncio.create_task(pool.acquire_async(wait=30.0))
        await asyncio.sleep(0.05)  # the loop runs while the request waits
        assert not waiting.done()
        pool.finished(first, 0.01, True)
        return (await waiting).name

    assert asyncio.run(scenario()) == "a"


def test_capacity_is_never_exceeded_across_threads():
    pool = client([("a", {"capacity": 2}), ("b", {"capacity": 3})], "LeastConnections", capacity_wait=30.0)
    peak = {"a": 0, "b": 0}
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            with pool.request() as t:
                with lock:
                    peak[t.name] = max(peak[t.name], pool.balancer.inflight(t.name))
                time.sleep(0.0005)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert peak["a"] <= 2 and peak["b"] <= 3
    assert peak == {"a": 2, "b": 3}  # and both were filled (8 threads for 5 places)


def test_least_connections_weighs_in_flight_against_capacity():
    b = LeastConnections()
    b.update([Target("small", "h", 1, capacity=2), Target("big", "h", 2, capacity=8)])
    picks = []
    for _ in range(10):
        t = b.pick()
        b.started(t)
        picks.append(t.name)
    # each goes where it brings the fullest share lowest: 8 of 10 to the big one
    assert picks.count("big") == 8 and picks.count("small") == 2


def test_least_connections_without_capacity_compares_counts():
    b = LeastConnections()
    b.update([Target("x", "h", 1), Target("y", "h", 2)])
    b.started(b.targets[0])
    assert b.pick().name == "y"


def test_an_endpoint_without_capacity_counts_as_the_mean_of_the_declared_ones():
    b = LeastConnections()
    b.update([Target("two", "h", 1, capacity=2), Target("six", "h", 2, capacity=6), Target("unset", "h", 3)])
    for _ in range(12):
        b.started(b.pick())
    assert [b.inflight(n) for n in ("two", "six", "unset")] == [2, 6, 4]  # unset counts as 4


def test_adaptive_weighs_in_flight_against_capacity():
    clock = [0.0]
    b = Adaptive(clock=lambda: clock[0])
    b.update([Target("small", "h", 1, capacity=1), Target("big", "h", 2, capacity=10)])
    for t in b.targets:  # the same latency for both
        b.started(t)
        b.finished(t, 0.1)
    for _ in range(5):
        b.started(b.targets[1])  # big: 5 in flight of 10 -> cost 0.1 x 6/10
    b.started(b.targets[0])  # small: 1 of 1 -> cost 0.1 x 2/1
    assert {b.pick().name for _ in range(50)} == {"big"}
