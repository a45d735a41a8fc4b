"""The SDK's public surface: one error hierarchy (httpx transport errors where raised in a
transport, the old names still working), the rule for which requests may be resent, and
the one-line httpx clients (routing through the pool, naming the endpoint, closing what
they made)."""

import json

import httpx
import pytest

import clusterpool.balancer
import clusterpool.client.pool
import clusterpool.client.routing
from clusterpool.client import (
    ENDPOINT_EXTENSION,
    ENDPOINT_HEADER,
    CapacityError,
    ClusterPoolError,
    NoEndpointError,
    PoolClient,
    PoolTransportError,
    RoutingTable,
    RoutingTableError,
    StaticTable,
    TableSource,
    async_httpx_client,
    httpx_client,
)
from clusterpool.client.transport import resendable


def routing(eligible: bool = True) -> RoutingTable:
    return RoutingTable.parse(
        json.dumps(
            {
                "schemaVersion": 1,
                "revision": "r1",
                "strategy": "RoundRobin",
                "endpoints": [
                    {"name": "llm-a", "address": "198.18.0.7", "port": 8000, "effectiveWeight": 1, "eligible": eligible}
                ],
            }
        )
    )


class ClosingTable(TableSource):
    """A table source that says whether it was closed."""

    def __init__(self, table: RoutingTable) -> None:
        self.table, self.closed = table, False

    def current(self) -> RoutingTable:
        return self.table

    def close(self) -> None:
        self.closed = True


def test_every_sdk_error_has_one_base_and_transport_errors_are_httpx_transport_errors():
    for cls in (RoutingTableError, PoolTransportError, NoEndpointError, CapacityError):
        assert issubclass(cls, ClusterPoolError)
    for cls in (PoolTransportError, NoEndpointError, CapacityError):
        assert issubclass(cls, httpx.TransportError)
    assert issubclass(RoutingTableError, ValueError) and not issubclass(RoutingTableError, httpx.HTTPError)


def test_the_old_names_of_the_errors_still_catch_them():
    assert clusterpool.client.pool.CapacityError is CapacityError
    assert clusterpool.client.routing.RoutingTableError is RoutingTableError
    pool = PoolClient(StaticTable(routing(eligible=False)))
    with pytest.raises(clusterpool.balancer.NoEndpointError, match="no eligible endpoint"):
        pool.choose()
    with pytest.raises(LookupError):
        pool.acquire()


def test_a_routing_table_error_says_what_to_do():
    with pytest.raises(ClusterPoolError, match="upgrade the clusterpool-client package"):
        RoutingTable.parse(json.dumps({"schemaVersion": 99}))


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/v1/models", None, True),
        ("DELETE", "/v1/files/1", None, True),
        ("POST", "/v1/chat/completions", b"{}", True),
        ("POST", "/openai/v1/completions", b"{}", True),  # behind a prefix
        ("POST", "/v1/embeddings", b"{}", True),
        ("POST", "/v1/responses", b"{}", True),
        ("POST", "/v1/responses/r1/cancel", b"{}", False),
        ("POST", "/v1/files", b"{}", False),
        ("PATCH", "/v1/chat/completions", b"{}", False),
    ],
)
def test_which_requests_may_be_resent_before_the_answer_begins(method, path, body, expected):
    assert resendable(httpx.Request(method, f"http://pool{path}", content=body)) is expected


def test_an_inference_post_with_a_body_that_cannot_be_replayed_is_not_resent():
    request = httpx.Request("POST", "http://pool/v1/chat/completions", content=iter([b"{}"]))
    assert resendable(request) is False


def test_the_one_line_client_routes_to_the_endpoint_and_names_it():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    source = ClosingTable(routing())
    with httpx_client(source, transport=httpx.MockTransport(answer)) as http:
        r = http.post("/v1/chat/completions", json={}, headers={"X-ClusterPool-Key": "conversation-7"})
    assert r.headers[ENDPOINT_HEADER] == "llm-a" and r.extensions[ENDPOINT_EXTENSION] == "llm-a"
    assert str(seen[0].url) == "http://198.18.0.7:8000/v1/chat/completions"
    assert seen[0].headers["host"] == "198.18.0.7:8000" and "x-clusterpool-key" not in seen[0].headers
    assert r.request.url.host == "pool"  # the caller's request is left as it was
    assert source.closed  # the client made the PoolClient, so closing it closed the table source


async def test_the_async_one_line_client_routes_and_leaves_a_shared_pool_open():
    source = ClosingTable(routing())
    pool = PoolClient(source)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=str(request.url)))
    async with async_httpx_client(pool, transport=transport, base_url="http://pool/v1") as http:
        r = await http.get("/models")
    assert r.text == "http://198.18.0.7:8000/v1/models" and r.headers[ENDPOINT_HEADER] == "llm-a"
    assert not source.closed  # a PoolClient passed in belongs to the caller
    assert pool.balancer.inflight("llm-a") == 0


def test_no_endpoint_inside_the_client_is_an_httpx_transport_error_with_the_request():
    with httpx_client(StaticTable(routing(eligible=False))) as http, pytest.raises(httpx.TransportError) as caught:
        http.get("/v1/models")
    assert isinstance(caught.value, NoEndpointError)
    assert caught.value.request.url.path == "/v1/models"
