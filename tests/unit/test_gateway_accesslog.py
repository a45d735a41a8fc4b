"""The access log's hand-formatted line is the JSON it promises, whatever the client sent."""

from __future__ import annotations

import io
import json

from clusterpool.gateway.accesslog import MAX_PENDING, AccessLog
from clusterpool.gateway.http1 import Request
from clusterpool.gateway.proxy import Outcome


def line(target: bytes, body: bytes, bodies: bool, out: Outcome) -> dict[str, object]:
    req = Request(b"POST", target, "1.1", [], [])
    req.body += body
    stream = io.StringIO()
    log = AccessLog(stream)
    log.write(req, "::1", out, 10.0, 10.0125, bodies)
    assert stream.getvalue() == ""  # written at the next flush (the gateway's tick)
    log.flush()
    text = stream.getvalue()
    assert text.endswith("}\n") and text.count("\n") == 1
    parsed: dict[str, object] = json.loads(text)
    return parsed


def test_a_line_escapes_what_the_client_controls_and_omits_the_query():
    out = Outcome()
    out.status, out.endpoint, out.attempts, out.ttfb, out.reason = 200, "ep-0", 2, 0.0004, "status_503"
    got = line(b'/v1/"x\\\xe9\x01?key=secret', b'{"prompt":"caf\xc3\xa9 \\"q\\""}', True, out)
    assert got["path"] == '/v1/"x\\\xe9\x01' and "secret" not in json.dumps(got)
    assert got["body"] == '{"prompt":"café \\"q\\""}'
    assert (got["client"], got["method"], got["status"], got["endpoint"], got["attempts"]) == (
        "::1",
        "POST",
        200,
        "ep-0",
        2,
    )
    assert (got["ttfb_ms"], got["duration_ms"], got["request_bytes"], got["reason"]) == (0.4, 12.5, 24, "status_503")
    assert got["pool"] is None


def test_a_refused_request_has_nulls_and_no_body_without_log_bodies():
    got = line(b"/", b"secret prompt", False, Outcome())
    assert "body" not in got and (got["endpoint"], got["ttfb_ms"], got["reason"]) == (None, None, None)
    assert got["status"] == 0 and got["request_bytes"] == 13


def test_lines_are_written_in_order_at_each_flush_and_when_many_wait():
    stream = io.StringIO()
    log = AccessLog(stream)
    out = Outcome()
    for n in range(MAX_PENDING + 3):
        out.attempts = n
        log.write(Request(b"GET", b"/", "1.1", [], []), "::1", out, 1.0, 1.0, False)
    assert [json.loads(x)["attempts"] for x in stream.getvalue().splitlines()] == list(range(MAX_PENDING))
    log.flush()
    assert [json.loads(x)["attempts"] for x in stream.getvalue().splitlines()] == list(range(MAX_PENDING + 3))
