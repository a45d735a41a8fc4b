"""spec.hedging: validated with errors naming the field, published in the routing table only
when set, read back by clients, and the rule that bounds hedges per request."""

import json

import pytest
from pydantic import ValidationError

from clusterpool import api
from clusterpool.client.routing import RoutingTable
from clusterpool.core.hedging import HedgePolicy
from clusterpool.core.pool import PoolState
from clusterpool.core.publish import build_routing_table
from samples import INVALID, VALID

POOL = {"metadata": {"name": "llm", "namespace": "ns", "uid": "u-1", "generation": 3}}


def test_hedging_is_off_by_default_and_max_hedges_defaults_to_one():
    assert api.parse_spec(VALID["minimal"]).hedging is None
    spec = api.parse_spec(VALID["hedging"])
    assert spec.hedging is not None and spec.hedging.max_hedges == 1


@pytest.mark.parametrize(
    ("sample", "field", "says"),
    [
        ("hedging-without-after", "spec.hedging.afterMilliseconds", "required"),
        ("hedging-after-zero", "spec.hedging.afterMilliseconds", "greater than or equal to 1"),
        ("hedging-too-many", "spec.hedging.maxHedges", "less than or equal to 4"),
    ],
)
def test_bad_hedging_is_refused_naming_the_field(sample, field, says):
    with pytest.raises(ValidationError) as exc:
        api.parse_spec(INVALID[sample])
    msg = api.spec_errors(exc.value)
    assert field in msg and says in msg, msg


def test_the_routing_table_carries_hedging_only_when_set_and_clients_read_it():
    state = PoolState()
    plain = build_routing_table(POOL, api.parse_spec(VALID["minimal"]), state)
    assert "hedging" not in plain  # tables of pools without it keep their revision
    assert RoutingTable.parse(json.dumps(plain)).hedging is None
    spec = api.parse_spec({**VALID["minimal"], "hedging": {"afterMilliseconds": 750, "maxHedges": 2}})
    hedged = build_routing_table(POOL, spec, state)
    assert hedged["hedging"] == {"afterMilliseconds": 750, "maxHedges": 2}
    assert hedged["revision"] != plain["revision"]
    assert RoutingTable.parse(json.dumps(hedged)).hedging == HedgePolicy(0.75, 2)


def test_a_hedge_needs_one_left_and_an_endpoint_not_tried():
    policy = HedgePolicy(0.2, max_hedges=2)
    assert policy.allows(hedges=0, tried=1, matching=3)
    assert policy.allows(hedges=1, tried=2, matching=3)
    assert not policy.allows(hedges=2, tried=2, matching=5)  # maxHedges reached
    assert not policy.allows(hedges=0, tried=2, matching=2)  # every endpoint tried already
