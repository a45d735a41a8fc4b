"""The routing table's schemaVersion as clients read it (docs/upgrading.md): every minor of a
major the client knows, older or newer, and a clear refusal of a newer major or of a value
that is not a version."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clusterpool.client.routing import RoutingTable, RoutingTableError


def table(version: Any, **extra: Any) -> str:
    return json.dumps(
        {
            "schemaVersion": version,
            "revision": "r1",
            "pool": {"namespace": "ns", "name": "llm"},
            "strategy": "RoundRobin",
            "endpoints": [{"name": "a", "address": "127.0.0.2", "port": 8000, "eligible": True}],
            **extra,
        }
    )


@pytest.mark.parametrize("version", [1, "1", "1.0", "1.7", "1.12"])
def test_every_minor_of_the_known_major_is_read(version: Any) -> None:
    parsed = RoutingTable.parse(table(version))
    assert [t.name for t in parsed.targets] == ["a"] and parsed.pool == "llm"


def test_a_newer_minor_with_fields_this_client_does_not_know_is_read() -> None:
    parsed = RoutingTable.parse(table("1.9", someFutureField={"x": 1}))
    assert parsed.strategy == "RoundRobin"


@pytest.mark.parametrize("version", [2, "2.0", "3.1"])
def test_a_newer_major_is_refused_naming_the_version_and_the_fix(version: Any) -> None:
    with pytest.raises(RoutingTableError) as err:
        RoutingTable.parse(table(version))
    message = str(err.value)
    assert repr(version) in message and "majors 1 to 1" in message and "upgrade the clusterpool-client" in message


@pytest.mark.parametrize("version", [0, "0.9"])
def test_a_major_older_than_the_oldest_supported_is_refused(version: Any) -> None:
    with pytest.raises(RoutingTableError, match="is not supported"):
        RoutingTable.parse(table(version))


@pytest.mark.parametrize("version", [None, True, -1, 1.5, "", "1.", "v1", "1.x", "1.2.3"])
def test_a_value_that_is_not_a_version_is_refused_as_such(version: Any) -> None:
    with pytest.raises(RoutingTableError, match="is not a version"):
        RoutingTable.parse(table(version))
