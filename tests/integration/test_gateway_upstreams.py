"""The gateway's connections to endpoints: kept alive while a table routes to the endpoint,
closed once the endpoint has left every routing table."""

from __future__ import annotations

import httpx
from gateway_process import GatewayProcess, routing_table, write_table

from conftest import wait_for

BODY = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


def upstream_connections(gw: GatewayProcess, host: str, port: int) -> float:
    return gw.value("clusterpool_gateway_upstream_connections", endpoint=f"{host}:{port}")


def test_connections_to_an_endpoint_that_left_every_table_are_closed(openai_backends, gateway):
    kept, leaving = openai_backends(2)
    gw = gateway([kept, leaving])
    with httpx.Client(timeout=10) as client:
        served = {client.post(gw.url + "/v1/chat/completions", json=BODY).headers["x-clusterpool-endpoint"]
                  for _ in range(10)}  # fmt: skip
    assert served == {kept.name, leaving.name}
    for b in (kept, leaving):
        assert upstream_connections(gw, b.host, b.port) >= 1
        assert b.open_connections >= 1  # kept alive by the gateway for the next request

    write_table(gw.table_path, routing_table([kept], revision="r2"))  # type: ignore[attr-defined]

    wait_for(lambda: leaving.open_connections == 0, 10, "the gateway closes its connections to the endpoint")
    assert upstream_connections(gw, leaving.host, leaving.port) == 0
    assert kept.open_connections >= 1 and upstream_connections(gw, kept.host, kept.port) >= 1
    r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 200 and r.headers["x-clusterpool-endpoint"] == kept.name
