"""The gateway (`python -m clusterpool.gateway --routing-file ...`) in front of real
OpenAI-compatible backends on loopback: routing, streaming, retries before the first byte
and none after it, passive ejection, overload back-off, client disconnects, and the openai
client and curl unchanged."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
from gateway_process import GatewayProcess

from conftest import wait_for

CHAT = "/v1/chat/completions"
BODY = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


def post(gw: GatewayProcess, body: dict[str, Any] = BODY, path: str = CHAT, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, timeout=10, **kw)


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            if not got:
                return out
            out += got
        raise AssertionError(f"the gateway did not close the connection; it sent {out[:300]!r}")


# -- routing ----------------------------------------------------------------------------------


def test_routes_by_model_host_and_path_prefix_and_lists_models(openai_backends, gateway):
    bs = openai_backends(2)
    gw = gateway(bs)
    r = post(gw)
    assert r.status_code == 200
    assert r.headers["x-clusterpool-endpoint"] in ("ep-0", "ep-1")
    assert r.json()["choices"][0]["message"]["content"] == f"hello from {r.headers['x-clusterpool-endpoint']}"
    by_host = httpx.post(gw.url + CHAT, json={"messages": []}, headers={"Host": "chat.team"}, timeout=10)
    assert by_host.status_code == 200
    by_prefix = httpx.post(gw.url + "/pools/team/chat" + CHAT, json={"messages": []}, timeout=10)
    assert by_prefix.status_code == 200
    assert any(b.last_headers.get("x-forwarded-for") == "127.0.0.1" for b in bs)
    assert all(b.last_headers.get("x-forwarded-proto") == "http" for b in bs if b.requests)
    models = httpx.get(gw.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["llama"]
    unknown = post(gw, {"model": "gpt-9", "messages": []})
    assert unknown.status_code == 404
    err = unknown.json()["error"]
    assert err["code"] == "model_not_found" and "llama" in err["message"] and "gpt-9" in err["message"]
    assert httpx.get(gw.url + "/pools/team/nope/v1/models", timeout=10).status_code == 404
    wait_for(lambda: len(gw.access_log()) >= 6, 5, "an access-log line per request")
    line = gw.access_log()[0]
    assert line["pool"] == "team/chat" and line["status"] == 200 and line["endpoint"] in ("ep-0", "ep-1")
    assert "hi" not in json.dumps(gw.access_log())  # no prompt text without --log-bodies


def test_requests_are_spread_with_the_tables_strategy(openai_backends, gateway):
    bs = openai_backends(3)
    gw = gateway(bs)
    seen = Counter(post(gw).headers["x-clusterpool-endpoint"] for _ in range(30))
    assert seen == {"ep-0": 10, "ep-1": 10, "ep-2": 10}  # RoundRobin, the SDK's own


def test_openai_client_sync_async_and_streaming_unchanged(openai_backends, gateway):
    bs = openai_backends(2, chunks=4)
    gw = gateway(bs)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith("hello from ep-")
    stream = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], stream=True)
    parts = [c.choices[0].delta.content for c in stream if c.choices]
    assert len(parts) == 4 and all(p.startswith("ep-") for p in parts)
    emb = client.embeddings.create(model="llama", input="hi")
    assert emb.data[0].embedding == [0.1, 0.2]

    async def run() -> tuple[str, list[str]]:
        aclient = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        r = await aclient.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
        s = await aclient.chat.completions.create(model="llama", messages=[], stream=True)
        got = [c.choices[0].delta.content async for c in s if c.choices]
        await aclient.close()
        return r.choices[0].message.content or "", got

    content, chunks = asyncio.run(run())
    assert content.startswith("hello from ep-") and len(chunks) == 4


def test_curl_streams_sse_chunk_by_chunk_without_buffering(openai_backends, gateway):
    (b,) = openai_backends(1, chunks=6, chunk_delay=0.4)
    gw = gateway([b])
    proc = subprocess.Popen(
        ["curl", "-sN", "-H", "Content-Type: application/json", "-d", json.dumps({**BODY, "stream": True}),
         gw.url + CHAT],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    start = time.monotonic()
    first = proc.stdout.readline()
    first_at = time.monotonic() - start
    rest = proc.stdout.read()
    total = time.monotonic() - start
    proc.wait(10)
    assert first.startswith(b"data: ") and b"ep-0-0" in first
    assert b"data: [DONE]" in rest
    assert first_at < 1.0 and total > 2.0, (first_at, total)  # the first event came while the rest was still made


# -- failures before and after the first byte -------------------------------------------------


def test_post_is_retried_on_other_endpoints_before_the_first_byte(openai_backends, gateway):
    bs = openai_backends(3)
    bs[0].mode, bs[1].mode = "unavailable", "reset"
    gw = gateway(bs, "--retries", "2", "--retry-budget-burst", "100")
    for _ in range(6):
        r = post(gw)
        assert r.status_code == 200, r.text
        assert r.headers["x-clusterpool-endpoint"] == "ep-2"
    assert gw.value("clusterpool_gateway_retries_total", reason="status_503") >= 1
    assert gw.value("clusterpool_gateway_retries_total", reason="reset") >= 1
    assert gw.value("clusterpool_gateway_requests_total", endpoint="ep-2", code="200") == 6


def test_connect_errors_move_to_another_endpoint(openai_backends, gateway):
    bs = openai_backends(2)
    gw = gateway(bs)
    bs[0].stop()
    codes = Counter(post(gw).status_code for _ in range(8))
    assert codes == {200: 8}
    assert gw.value("clusterpool_gateway_retries_total", reason="connect") >= 1


def test_a_post_to_another_path_is_not_resent_after_it_reached_a_backend(openai_backends, gateway):
    bs = openai_backends(2)
    bs[0].mode = bs[1].mode = "unavailable"
    gw = gateway(bs)
    r = post(gw, {"model": "llama"}, path="/v1/files")
    assert r.status_code == 503
    assert sum(b.requests for b in bs) == 1


def test_nothing_is_retried_after_the_first_byte_and_the_client_sees_the_break(openai_backends, gateway):
    bs = openai_backends(2, chunks=6, mode="break_stream", break_after=2)
    gw = gateway(bs)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    got: list[str] = []

    def consume() -> None:
        for c in client.chat.completions.create(model="llama", messages=[], stream=True):
            if c.choices:
                got.append(c.choices[0].delta.content or "")

    with pytest.raises((openai.APIError, httpx.HTTPError)):
        consume()
    assert len(got) == 2  # what arrived before the break, and nothing after
    assert sum(b.requests for b in bs) == 1  # not resent
    assert gw.value("clusterpool_gateway_retries_total") == 0


def test_first_byte_timeout_moves_the_request_on(openai_backends, gateway):
    bs = openai_backends(2)
    bs[0].mode = "hang"
    gw = gateway(bs, "--first-byte-timeout", "0.5")
    codes = [post(gw).status_code for _ in range(4)]
    assert codes == [200] * 4
    assert gw.value("clusterpool_gateway_retries_total", reason="first_byte_timeout") >= 1
    bs[0].release()


# -- passive outlier detection and overload ----------------------------------------------------


def test_a_failing_endpoint_is_ejected_passively_and_comes_back(openai_backends, gateway):
    bs = openai_backends(2)
    bs[0].mode = "fail"
    gw = gateway(bs, "--consecutive-5xx", "3", "--base-ejection-time", "5")  # room for six requests under load
    wait_for(
        lambda: post(gw).status_code == 200 and gw.value("clusterpool_gateway_ejections_total", endpoint="ep-0") == 1,
        10,
        "ep-0 ejected after three 500s",
    )
    before = bs[0].requests
    assert {post(gw).headers["x-clusterpool-endpoint"] for _ in range(6)} == {"ep-1"}
    assert bs[0].requests == before  # no traffic while ejected
    bs[0].mode = "ok"
    wait_for(lambda: post(gw).headers["x-clusterpool-endpoint"] == "ep-0", 20, "ep-0 back after its ejection time")


def test_an_overloaded_endpoint_is_backed_off_for_its_retry_after_not_ejected(openai_backends, gateway):
    bs = openai_backends(2)
    bs[0].mode, bs[0].retry_after = "overloaded", 2
    gw = gateway(bs)
    replies = [post(gw) for _ in range(6)]
    assert all(r.status_code == 200 and r.headers["x-clusterpool-endpoint"] == "ep-1" for r in replies)
    assert bs[0].requests == 1  # told once, then left alone for its Retry-After
    assert gw.value("clusterpool_gateway_retries_total", reason="overloaded") == 1
    assert gw.value("clusterpool_gateway_ejections_total") == 0
    bs[0].mode = "ok"
    wait_for(lambda: post(gw).headers["x-clusterpool-endpoint"] == "ep-0", 10, "ep-0 back after 2 s")


def test_a_client_that_disconnects_cancels_its_upstream_request(openai_backends, gateway):
    (b,) = openai_backends(1, chunks=100, chunk_delay=0.1)
    gw = gateway([b])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        body = json.dumps({**BODY, "stream": True}).encode()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (CHAT.encode(), len(body), body))  # fmt: skip
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    wait_for(lambda: b.abandoned == 1, 5, "the backend's stream abandoned after the client left")
    assert b.completed == 0
    wait_for(lambda: gw.value("clusterpool_gateway_in_flight") == 0, 5, "nothing in flight")


def test_expect_100_continue_is_answered_before_the_body(openai_backends, gateway):
    bs = openai_backends(1)
    gw = gateway(bs)
    body = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % (CHAT.encode(), len(body))
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        answer = b""
        while not answer.endswith(b"}"):
            answer += s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert "expect" not in bs[0].last_headers


def test_the_retry_budget_bounds_retries_under_an_outage(openai_backends, gateway):
    bs = openai_backends(3)
    bs[0].mode = bs[1].mode = "unavailable"
    gw = gateway(bs, "--retry-budget-burst", "2", "--retry-budget-ratio", "0", "--consecutive-gateway-failure", "0")
    assert post(gw).status_code == 200  # two retries from the burst reach ep-2
    assert post(gw).status_code == 503  # none left: the first answer stands
    assert gw.value("clusterpool_gateway_retries_total") == 2
