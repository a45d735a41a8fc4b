"""The gateway facing hostile clients: smuggling shapes and size limits refused with the
connection closed, slowloris and idle connections timed out, connection and in-flight caps
answered 503 + Retry-After, and a graceful shutdown that lets streams in flight finish."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import httpx
import pytest
from test_gateway import BODY, CHAT, post, raw

from conftest import wait_for

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        ("CL and TE", HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("duplicate CL", HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"),
        ("TE not chunked", HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", HEAD + b"X-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\n{}"),
        ("bad chunk size", HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        ("space before colon", HEAD + b"Content-Length : 2\r\n\r\n{}"),
        ("bare LF", b"POST / HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}"),
    ],
)
def test_smuggling_shapes_are_refused_with_400_and_the_connection_closed(openai_backends, gateway, name, request_bytes):
    bs = openai_backends(1)
    gw = gateway(bs)
    answer = raw(gw.port, request_bytes + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), (name, answer[:200])
    assert b"\nHTTP/1.1 " not in answer, name  # the smuggled second request was never read
    assert bs[0].requests == 0
    assert gw.value("clusterpool_gateway_rejected_total", reason="bad_request") == 1


def test_size_limits_are_enforced(openai_backends, gateway):
    bs = openai_backends(1)
    gw = gateway(bs, "--max-request-line", "200", "--max-headers", "10", "--max-body-bytes", "1000")
    assert raw(gw.port, b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 414 ")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(20))
    assert raw(gw.port, b"GET / HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    big = json.dumps({**BODY, "pad": "x" * 2000}).encode()
    assert raw(gw.port, HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(big), big)).startswith(b"HTTP/1.1 413 ")
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n"
    assert raw(gw.port, chunked + b"x" * 1024 + b"\r\n0\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    assert bs[0].requests == 0
    assert post(gw).status_code == 200  # a request within the limits still passes


def test_a_slowloris_client_is_cut_off_at_the_header_deadline(openai_backends, gateway):
    bs = openai_backends(1)
    gw = gateway(bs, "--header-timeout", "1")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        out = b""
        for i in range(30):  # one header line every 0.2 s: never done
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % i)
            except OSError:
                break
            s.settimeout(0.2)
            try:
                got = s.recv(4096)
            except TimeoutError:
                continue
            out += got
            if not got or b"408" in out:
                break
        elapsed = time.monotonic() - start
    assert out.startswith(b"HTTP/1.1 408 "), out
    assert 0.9 < elapsed < 3, elapsed
    assert gw.value("clusterpool_gateway_rejected_total", reason="header_timeout") == 1


def test_an_idle_keepalive_connection_is_closed(openai_backends, gateway):
    bs = openai_backends(1)
    gw = gateway(bs, "--keepalive-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        body = json.dumps(BODY).encode()
        s.sendall(HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while not answer.endswith(b"}"):  # the whole JSON answer
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert s.recv(100) == b""  # closed by the gateway
        assert time.monotonic() - start < 3


def test_the_connection_cap_answers_503_with_retry_after(openai_backends, gateway):
    bs = openai_backends(1)
    gw = gateway(bs, "--max-connections", "2")
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    try:
        wait_for(lambda: True, 0.1, "")
        answer = raw(gw.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        assert gw.value("clusterpool_gateway_rejected_total", reason="connections") >= 1
    finally:
        for s in held:
            s.close()
    wait_for(lambda: post(gw).status_code == 200, 5, "room again once the held connections closed")


def test_the_in_flight_cap_per_pool_answers_503_with_retry_after(openai_backends, gateway):
    bs = openai_backends(1, mode="hang")
    gw = gateway(bs, "--max-in-flight-per-pool", "1")
    first = threading.Thread(target=lambda: httpx.post(gw.url + CHAT, json=BODY, timeout=10), daemon=True)
    first.start()
    wait_for(lambda: gw.value("clusterpool_gateway_in_flight") == 1, 5, "one request in flight")
    r = post(gw)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert gw.value("clusterpool_gateway_rejected_total", reason="pool_in_flight") == 1
    bs[0].release()
    first.join(10)


def test_sigterm_lets_streams_in_flight_finish_and_refuses_new_connections(openai_backends, gateway):
    (b,) = openai_backends(1, chunks=10, chunk_delay=0.2)
    gw = gateway([b], "--grace-period", "10")
    procs = [
        subprocess.Popen(
            [
                "curl",
                "-sN",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps({**BODY, "stream": True}),
                gw.url + CHAT,
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    wait_for(lambda: b.streaming == 3, 5, "three streams in flight")
    gw.terminate()
    wait_for(lambda: not gw.ready() if gw.proc.poll() is None else True, 5, "not ready after SIGTERM")
    outputs = [p.communicate(timeout=15)[0] for p in procs]
    for out in outputs:
        assert out.count(b"data: {") == 10 and out.rstrip().endswith(b"data: [DONE]"), out[-200:]
    assert gw.proc.wait(15) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
