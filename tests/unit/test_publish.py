import json
from datetime import UTC, datetime

from clusterpool import api
from clusterpool.core.failover import FailoverConfig
from clusterpool.core.health import Endpoint, ProbeResult, Thresholds
from clusterpool.core.pool import PoolState, step
from clusterpool.core.publish import (
    address_type,
    build_endpoint_slices,
    build_routing_configmap,
    build_routing_table,
    build_service,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POOL = {"metadata": {"name": "llm", "namespace": "ns", "uid": "u-1", "generation": 3}}
OK = ProbeResult(True, "ProbeSucceeded", "ok")
BAD = ProbeResult(False, "Timeout", "no answer")
EPS = (
    Endpoint("a", "198.18.1.1", 8000),
    Endpoint("b", "198.18.1.2", 8000),
    Endpoint("c", "fd00::3", 8000),
    Endpoint("d", "llm-d.example.com", 9000),
    Endpoint("e", "127.0.0.5", 8000),
)
SPEC = api.parse_spec(
    {"discovery": {"static": {"endpoints": [{"name": e.name, "address": e.address, "port": e.port} for e in EPS]}}}
)


def state(results):
    s = PoolState().with_members(EPS)
    s, _ = step(s, results, Thresholds(1, 1), FailoverConfig(max_ejection_percent=100, panic_threshold_percent=0), T0)
    return s


def test_address_types():
    assert [
        address_type(a) for a in ("198.18.0.1", "fd00::1", "a.example", "127.0.0.1", "::1", "169.254.1.1", "0.0.0.0")
    ] == ["IPv4", "IPv6", "FQDN", None, None, None, None]


def test_slices_hold_only_eligible_endpoints_grouped_by_type_and_port():
    s = state({"a": OK, "b": BAD, "c": OK, "d": OK, "e": OK})
    slices, refused = build_endpoint_slices(POOL, s)
    got = {
        sl["metadata"]["name"]: (
            sl["addressType"],
            sl["ports"][0]["port"],
            [e["addresses"][0] for e in sl["endpoints"]],
        )
        for sl in slices
    }
    assert got == {
        "llm-ipv4-8000": ("IPv4", 8000, ["198.18.1.1"]),
        "llm-ipv6-8000": ("IPv6", 8000, ["fd00::3"]),
        "llm-fqdn-9000": ("FQDN", 9000, ["llm-d.example.com"]),
    }
    assert refused == ["e"]
    assert build_endpoint_slices(POOL, state({"a": OK, "e": BAD}))[1] == ["e"]  # named whatever its health
    meta = slices[0]["metadata"]
    assert meta["labels"]["kubernetes.io/service-name"] == "llm"
    assert meta["labels"]["endpointslice.kubernetes.io/managed-by"] == "clusterpool.dev"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "clusterpool.dev/v1alpha1",
            "kind": "ClusterPool",
            "name": "llm",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


def test_service_is_selectorless_on_the_most_common_port():
    svc = build_service(POOL, state({}))
    assert "selector" not in svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "backend", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]


def test_routing_table_is_versioned_and_its_revision_follows_content():
    s = state({"a": OK, "b": BAD, "c": OK, "d": OK, "e": OK})
    table = build_routing_table(POOL, SPEC, s)
    assert table["schemaVersion"] == 1 and table["pool"] == {"namespace": "ns", "name": "llm"}
    assert table["circuitBreaker"]["failureThreshold"] == SPEC.health_check.unhealthy_threshold
    b = next(e for e in table["endpoints"] if e["name"] == "b")
    assert (b["eligible"], b["health"], b["breaker"], b["effectiveWeight"]) == (False, "Unhealthy", "Closed", 0)
    assert build_routing_table(POOL, SPEC, s)["revision"] == table["revision"]
    other = build_routing_table(POOL, SPEC, state({"a": OK, "b": OK, "c": OK, "d": OK, "e": OK}))
    assert other["revision"] != table["revision"]
    cm = build_routing_configmap(POOL, table)
    assert cm["metadata"]["name"] == "llm-routing" and json.loads(cm["data"]["routing.json"]) == table


def test_the_routing_table_lists_the_models_the_pool_serves_and_they_move_its_revision():
    s = state({"a": OK, "b": OK, "c": OK, "d": OK, "e": OK})
    without = build_routing_table(POOL, SPEC, s)
    assert without["models"] == []  # a pool without spec.models (clients read an absent list alike)
    served = build_routing_table(POOL, SPEC, s, models=("llama-3-8b", "qwen2.5:7b"))
    assert served["models"] == ["llama-3-8b", "qwen2.5:7b"]
    assert served["revision"] != without["revision"]
