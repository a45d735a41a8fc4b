"""The gateway's request reader (limits, smuggling shapes) and its `model` scan."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterpool.gateway.http1 import RequestError, RequestReader, model_of
from clusterpool.gateway.settings import Limits


def read(data: bytes, **limits: int) -> RequestReader:
    r = RequestReader(Limits(**limits))  # type: ignore[arg-type]
    r.feed(data)
    return r


def test_a_request_is_read_with_its_headers_and_body():
    r = read(b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
    req = r.ready.popleft()
    assert (req.method, req.target, bytes(req.body), req.header(b"host")) == (b"POST", b"/v1/x?a=1", b"{}", b"h")
    assert req.keep_alive


def test_a_request_split_byte_by_byte_and_pipelined_requests_are_read():
    data = (
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    r = RequestReader(Limits())
    for i in range(len(data)):
        r.feed(data[i : i + 1])
    assert [(q.target, bytes(q.body)) for q in r.ready] == [(b"/a", b""), (b"/b", b"hi")]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 501),
        (b"CONNECT h:1 HTTP/1.1\r\n\r\n", 501),
    ],
)
def test_smuggling_shapes_are_refused(data, status):
    with pytest.raises(RequestError) as e:
        read(data)
    assert e.value.status == status


def test_limits_answer_414_431_413():
    with pytest.raises(RequestError) as e:
        read(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", max_request_line=50)
    assert e.value.status == 414
    with pytest.raises(RequestError) as e:
        read(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", max_headers=2)
    assert e.value.status == 431
    with pytest.raises(RequestError) as e:
        read(b"GET / HTTP/1.1\r\nA: " + b"x" * 200 + b"\r\n\r\n", max_header_bytes=100)
    assert e.value.status == 431
    with pytest.raises(RequestError) as e:
        read(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", max_body_bytes=10)
    assert e.value.status == 413
    with pytest.raises(RequestError) as e:
        read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n",
            max_body_bytes=10,
        )
    assert e.value.status == 413


def test_expect_continue_is_noticed():
    r = read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert r.wants_continue and not r.ready


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"model": "llama-3", "messages": []}', "llama-3"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model":"m"}', "m"),
        (b'{"messages": [{"content": "say \\"model\\": \\"x\\""}], "model": "real"}', "real"),
        (b'{"tools": [{"parameters": {"model": {"type": "string"}}}], "model": "top"}', "top"),
        (b'{"model": "a\\u00e9b"}', "a\u00e9b"),
        (b'{"model": 3}', None),
        (b'{"messages": []}', None),
        (b"not json", None),
        (b'["model"]', None),
    ],
)
def test_model_is_the_top_level_field(body, model):
    assert model_of(body) == model


@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=4),
    st.text(max_size=12),
    st.booleans(),
)
def test_model_scan_agrees_with_a_full_parse(extra, model, first):
    doc = {"model": model, **extra} if first else {**extra, "model": model}
    assert model_of(json.dumps(doc).encode()) == model
