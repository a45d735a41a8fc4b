"""spec.leastLoaded and spec.prefixAffinity: validated with errors naming the field,
published in the routing table only when set, read back by clients, whose LeastLoaded and
PrefixAffinity then score and bound with them."""

import json

import pytest
from pydantic import ValidationError

from clusterpool import api
from clusterpool.client.errors import RoutingTableError
from clusterpool.client.pool import PoolClient
from clusterpool.client.routing import RoutingTable
from clusterpool.core.load import LoadBound, LoadWeights
from clusterpool.core.pool import PoolState
from clusterpool.core.publish import build_routing_table
from samples import VALID

POOL = {"metadata": {"name": "llm", "namespace": "ns", "uid": "u-1", "generation": 3}}
TUNED = {
    "leastLoaded": {"weightsPercent": {"waiting": 200, "latency": 300}},
    "prefixAffinity": {"loadBound": {"waiting": 2, "kvUsagePercent": 80, "inFlightPercentOfMean": 150}},
}


class Fixed:
    """A TableSource that always has the same table."""

    def __init__(self, table):
        self.table = RoutingTable.parse(json.dumps(table))

    def current(self):
        return self.table

    def close(self):
        pass


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"leastLoaded": {"weightsPercent": {"latency": -1}}}, "spec.leastLoaded.weightsPercent.latency",
         "greater than or equal to 0"),
        ({"leastLoaded": {"weightsPercent": {"queue": 1}}}, "spec.leastLoaded.weightsPercent.queue", "not permitted"),
        ({"prefixAffinity": {"loadBound": {"inFlightPercentOfMean": 90}}},
         "spec.prefixAffinity.loadBound.inFlightPercentOfMean", "greater than or equal to 100"),
        ({"prefixAffinity": {"loadBound": {"kvUsagePercent": 101}}}, "spec.prefixAffinity.loadBound.kvUsagePercent",
         "less than or equal to 100"),
    ],
)  # fmt: skip
def test_bad_load_tuning_is_refused_naming_the_field(extra, field, says):
    with pytest.raises(ValidationError) as exc:
        api.parse_spec({**VALID["minimal"], **extra})
    msg = api.spec_errors(exc.value)
    assert field in msg and says in msg, msg


def test_the_routing_table_carries_the_tuning_only_when_set_and_clients_build_with_it():
    state = PoolState()
    plain = build_routing_table(POOL, api.parse_spec(VALID["minimal"]), state)
    assert "leastLoaded" not in plain and "prefixAffinity" not in plain  # other pools keep their revision
    parsed = RoutingTable.parse(json.dumps(plain))
    assert parsed.load_weights is None and parsed.load_bound is None

    tuned = build_routing_table(POOL, api.parse_spec({**VALID["minimal"], **TUNED}), state)
    assert tuned["revision"] != plain["revision"]
    weights = LoadWeights(waiting=2.0, running=0.1, kv_usage=2.0, inflight=1.0, latency=3.0)
    bound = LoadBound(waiting=2.0, kv_usage=0.8, inflight_factor=1.5)
    parsed = RoutingTable.parse(json.dumps(tuned))
    assert (parsed.load_weights, parsed.load_bound) == (weights, bound)

    for strategy in ("LeastLoaded", "PrefixAffinity"):
        client = PoolClient(Fixed({**tuned, "strategy": strategy}))
        balancer = client.balancer
        assert balancer.weights == weights if strategy == "LeastLoaded" else balancer.bound == bound


def test_a_table_with_bad_tuning_is_refused_naming_it():
    table = build_routing_table(POOL, api.parse_spec(VALID["minimal"]), PoolState())
    for key, raw in (("leastLoaded", {"latency": -1}), ("prefixAffinity", {"waitingRequests": 3})):
        with pytest.raises(RoutingTableError, match=key):
            RoutingTable.parse(json.dumps({**table, key: raw}))
