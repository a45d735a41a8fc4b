"""Probes against misbehaving backends (real servers, scripts/hostile.py): each probe fails
with a reason that names what happened, within its timeout taken as a deadline for the
whole exchange (not per read), reading a bounded number of bytes; and in the running
operator a pool of such backends does not hold up a healthy pool's rounds."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

import controlplane
from backends import HTTPBackend, free_port
from clusterpool.api import MAX_ENDPOINTS, HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint
from clusterpool.health.probes import Prober, probe_all, probe_http, probe_tcp
from conftest import endpoints_of, wait_for
from hostile import HostileServer

TIMEOUT = 1.0
SLACK = 1.0  # for a loaded machine; every server here would hold a probe for far longer than this
CHECK = HTTPCheck()
BODY_CHECK = HTTPCheck(body_contains='"status":"ready"')
HOST = "127.0.0.7"


@pytest.fixture
def hostile():
    started: list[HostileServer] = []

    def make(mode: str, tls=None, host: str = HOST) -> HostileServer:
        server = HostileServer(mode, host, free_port(host)).start(tls)
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


async def timed_probe(host: str, port: int, check: HTTPCheck = CHECK, timeout: float = TIMEOUT):
    start = time.monotonic()
    r = await probe_http(host, port, check, timeout)
    return r, time.monotonic() - start


# mode, check, timeout, (ok, reason), what the message must say
FAILURES = [
    # 0.2 s a byte: the status line alone takes 3.4 s, the whole answer 18 s; each read is quick
    ("slowloris", CHECK, 5.0, "Timeout", "timed out after 5s while reading the headers"),
    ("endless-headers", CHECK, TIMEOUT, "ProtocolError", "more than 100 header lines"),
    ("oversized-header", CHECK, TIMEOUT, "ProtocolError", "a header line longer than 8 KiB"),
    ("garbage", CHECK, TIMEOUT, "ProtocolError", "the status line is not HTTP/1.x: b'SSH-2.0-OpenSSH_9.6 not"),
    ("endless-garbage", CHECK, TIMEOUT, "ProtocolError", "a status line longer than 8 KiB"),
    ("reset-headers", CHECK, TIMEOUT, "ConnectionClosed", "connection reset by the backend while reading the headers"),
    ("reset-body", CHECK, TIMEOUT, "ConnectionClosed", "connection reset by the backend while reading the body"),
    ("silent", CHECK, TIMEOUT, "Timeout", "timed out after 1s while waiting for the status line"),
    ("close", CHECK, TIMEOUT, "ConnectionClosed", "by the backend while"),
    ("huge-body", BODY_CHECK, TIMEOUT, "UnexpectedBody", 'body lacks \'"status":"ready"\' in its first 64 KiB'),
    ("endless-body", BODY_CHECK, TIMEOUT, "UnexpectedBody", "in its first 64 KiB"),
    ("endless-chunked", BODY_CHECK, TIMEOUT, "UnexpectedBody", "in its first 64 KiB"),
]


@pytest.mark.parametrize(("mode", "check", "timeout", "reason", "says"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_hostile_backend_fails_the_probe_with_its_reason_within_the_timeout(
    hostile, mode, check, timeout, reason, says
):
    server = hostile(mode)
    r, took = await timed_probe(server.host, server.port, check, timeout)
    assert (r.ok, r.reason) == (False, reason), r
    assert says in r.message, r.message
    assert took < timeout + SLACK, f"{mode}: the probe took {took:.2f}s with a timeout of {timeout}s"


@pytest.mark.parametrize("mode", ["huge-body", "endless-body", "endless-chunked"])
async def test_a_huge_body_is_not_read_when_only_the_status_is_checked(hostile, mode):
    server = hostile(mode)
    r, took = await timed_probe(server.host, server.port)
    assert (r.ok, r.reason) == (True, "ProbeSucceeded"), r
    assert took < TIMEOUT, f"{mode}: a 200 took {took:.2f}s to count"


async def test_a_body_that_has_the_text_passes_however_slowly_it_ends(hostile):
    """The slow drip ends its (complete, 17-byte) body with the wanted text: with time
    enough, a body check on it passes, so the dripping case above failed on time alone."""
    server = hostile("slowloris")
    server.drip = 0.01
    r, _ = await timed_probe(server.host, server.port, BODY_CHECK, 10.0)
    assert r.ok, r


async def test_a_listener_that_never_accepts_times_out_while_connecting():
    """A listener with its backlog full: the kernel drops further SYNs, connects hang."""
    listener = socket.socket()
    filler: list[socket.socket] = []
    try:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect((HOST, port))
            filler.append(c)
        r, took = await timed_probe(HOST, port)
        assert (r.ok, r.reason) == (False, "Timeout"), r
        assert "timed out after 1s while connecting" in r.message, r.message
        assert took < TIMEOUT + SLACK
        start = time.monotonic()
        r = await probe_tcp(HOST, port, TIMEOUT)
        assert (r.ok, r.reason) == (False, "Timeout") and "while connecting" in r.message, r
        assert time.monotonic() - start < TIMEOUT + SLACK
    finally:
        for c in filler:
            c.close()
        listener.close()


# -- TLS -----------------------------------------------------------------------------


def _leaf(ca_dir: Path, name: str, ips: tuple[str, ...], expired: bool) -> tuple[str, str]:
    """A serving certificate signed by the CA in ca_dir, for `ips`, expired or not."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (
        (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
        if expired
        else (
            now - datetime.timedelta(minutes=5),
            now + datetime.timedelta(days=1),
        )
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crt, pem = ca_dir / f"{name}.crt", ca_dir / f"{name}.key"
    crt.write_bytes(controlplane._pem_cert(cert))
    pem.write_bytes(controlplane._pem_key(key))
    return str(crt), str(pem)


@pytest.fixture
def trusted_ca(tmp_path, monkeypatch):
    """A CA the prober trusts (through SSL_CERT_FILE, as a mounted bundle would be)."""
    controlplane.make_certs(tmp_path, ips=("127.0.0.1",))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))
    return tmp_path


@pytest.fixture
def tls_backends(trusted_ca):
    started: list[HTTPBackend] = []

    def make(name: str, ips: tuple[str, ...] = ("127.0.0.1",), expired: bool = False) -> HTTPBackend:
        b = HTTPBackend("127.0.0.1", free_port(), tls=_leaf(trusted_ca, name, ips, expired)).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


async def test_expired_and_wrong_host_certificates_fail_with_what_is_wrong(tls_backends):
    https = HTTPCheck(scheme="HTTPS")
    good = tls_backends("good")
    r, _ = await timed_probe(good.host, good.port, https)
    assert r.ok, r  # the CA is trusted: what fails below fails for its own reason
    expired = tls_backends("expired", expired=True)
    r, took = await timed_probe(expired.host, expired.port, https)
    assert (r.ok, r.reason) == (False, "TLSError") and "certificate has expired" in r.message, r
    assert took < TIMEOUT + SLACK
    wrong = tls_backends("wrong-host", ips=("198.18.0.99",))
    r, took = await timed_probe(wrong.host, wrong.port, https)
    assert (r.ok, r.reason) == (False, "TLSError"), r
    assert "in the TLS handshake: IP address mismatch, certificate is not valid for '127.0.0.1'" in r.message
    assert took < TIMEOUT + SLACK


TLS_FAILURES = [
    ("garbage", "TLSError", "TLS failed in the TLS handshake: WRONG_VERSION_NUMBER"),
    ("silent", "Timeout", "timed out after 1s in the TLS handshake"),
    ("close", "ConnectionClosed", "by the backend in the TLS handshake"),
]


@pytest.mark.parametrize(("mode", "reason", "says"), TLS_FAILURES, ids=[f[0] for f in TLS_FAILURES])
async def test_tls_handshake_failures_name_the_handshake(hostile, mode, reason, says):
    server = hostile(mode)
    r, took = await timed_probe(server.host, server.port, HTTPCheck(scheme="HTTPS"))
    assert (r.ok, r.reason) == (False, reason), r
    assert says in r.message, r.message
    assert took < TIMEOUT + SLACK


# -- memory --------------------------------------------------------------------------

PEAK_BOUND = 1024 * 1024  # bytes a probe may allocate at its peak, whatever the backend sends


@pytest.fixture
def hostile_process():
    """A hostile server in a process of its own: its allocations stay out of tracemalloc's."""
    procs: list[subprocess.Popen[str]] = []

    def make(mode: str) -> int:
        script = Path(controlplane.__file__).with_name("hostile.py")
        p = subprocess.Popen(
            [sys.executable, str(script), mode, HOST, str(free_port(HOST))], stdout=subprocess.PIPE, text=True
        )
        procs.append(p)
        assert p.stdout is not None
        return int(p.stdout.readline())

    yield make
    for p in procs:
        p.kill()
        p.wait()


MEMORY_CASES = [
    "huge-body",
    "endless-body",
    "endless-chunked",
    "endless-headers",
    "oversized-header",
    "endless-garbage",
]


@pytest.mark.parametrize("mode", MEMORY_CASES)
async def test_a_probe_allocates_a_bounded_amount_whatever_the_backend_sends(hostile_process, mode):
    port = hostile_process(mode)
    await probe_http(HOST, port, BODY_CHECK, TIMEOUT)  # warm up: imports, the loop's first allocations
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = await probe_http(HOST, port, BODY_CHECK, TIMEOUT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not r.ok, r
    print(f"{mode}: peak {peak} bytes, {r.reason}")
    assert peak < PEAK_BOUND, f"{mode}: a probe allocated {peak} bytes at its peak (bound {PEAK_BOUND})"


# -- many refused --------------------------------------------------------------------


async def test_a_full_pool_of_refused_connections_each_get_their_reason_within_the_timeout():
    """A pool's most endpoints (256), on a port nothing listens on, probed at once; the
    operator test below makes thousands of such attempts across pools and rounds."""
    port = free_port()  # closed again: every 127.0.x.y refuses it
    members = tuple(Endpoint(f"e{i}", f"127.0.{20 + i // 250}.{i % 250 + 2}", port) for i in range(MAX_ENDPOINTS))
    prober = Prober(HealthCheck(http={}, interval_seconds=2, timeout_seconds=int(TIMEOUT)))
    start = time.monotonic()
    try:
        results = await probe_all(members, prober)
    finally:
        await prober.close()
    took = time.monotonic() - start
    reasons = {r.reason for r in results.values()}
    assert len(results) == MAX_ENDPOINTS and reasons == {"ConnectionRefused"}, reasons
    assert took < TIMEOUT + SLACK, f"{MAX_ENDPOINTS} refused probes took {took:.2f}s"


# -- the operator: a healthy pool next to hostile ones ---------------------------------

HEALTHY_INTERVAL = 2
HOSTILE_TIMEOUT = 5  # the hostile pool's probes each hold out this long (slow drip, silence)
WINDOW = 20.0  # seconds each phase is watched
NET_HOST = "198.18.0.252"  # the hostile servers, inside scripts/netns-run
CLOSED_HOST = "198.18.0.253"  # nothing listens here: every connect is refused
REFUSED_POOLS, REFUSED_ENDPOINTS = 4, 64  # pools of endpoints on closed ports, probed every 2 s


def _sample(text: str, name: str, namespace: str | None = None, pool: str | None = None) -> float | None:
    labels = "" if namespace is None else f'{{namespace="{namespace}",pool="{pool}"}}'
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def _metrics(operator) -> str:
    with urllib.request.urlopen(operator.metrics, timeout=5) as r:
        return str(r.read().decode())


def watch_rounds(operator, pools, name: str, healthy: int, seconds: float) -> dict[str, float]:
    """Watch one pool's rounds for `seconds` through the operator's round metrics (polled
    every 0.5 s) and its status (every 2 s): rounds, their mean duration, the longest gap
    seen between round counts growing, and whether the pool stayed Ready throughout."""
    count_name, sum_name = "clusterpool_round_duration_seconds_count", "clusterpool_round_duration_seconds_sum"
    text = _metrics(operator)
    count0, sum0 = _sample(text, count_name, pools.namespace, name), _sample(text, sum_name, pools.namespace, name)
    assert count0 is not None and sum0 is not None, f"no round metrics for {name}"
    last, last_change, max_gap, not_ready = count0, time.monotonic(), 0.0, []
    start = time.monotonic()
    next_status = start
    while (now := time.monotonic()) - start < seconds:
        count = _sample(_metrics(operator), count_name, pools.namespace, name) or last
        now = time.monotonic()
        if count > last:
            max_gap = max(max_gap, now - last_change)
            last, last_change = count, now
        if now >= next_status:
            status = pools.status(name)
            if pools.condition(name, "Ready").get("status") != "True" or status.get("healthy") != healthy:
                not_ready.append(round(now - start, 1))
            next_status = now + 2.0
        time.sleep(0.5)
    max_gap = max(max_gap, time.monotonic() - last_change)
    text = _metrics(operator)
    count1, sum1 = _sample(text, count_name, pools.namespace, name), _sample(text, sum_name, pools.namespace, name)
    assert count1 is not None and sum1 is not None
    rounds = count1 - count0
    return {
        "seconds": round(time.monotonic() - start, 1),
        "rounds": rounds,
        "mean_round_s": round((sum1 - sum0) / rounds, 4) if rounds else -1.0,
        "max_gap_s": round(max_gap, 2),
        "not_ready_at_s": not_ready,  # type: ignore[dict-item]
        "loop_lag_max_s": _sample(text, "clusterpool_event_loop_lag_max_seconds") or 0.0,
    }


HOSTILE_MODES = [m for m in ("slowloris", "endless-headers", "oversized-header", "huge-body", "endless-body")]
HOSTILE_MODES += ["endless-chunked", "garbage", "endless-garbage", "reset-headers", "reset-body", "silent", "close"]


def test_a_hostile_neighbour_does_not_delay_a_healthy_pools_rounds(pools, net_backends, hostile, operator):
    healthy_spec = {
        "discovery": {"static": {"endpoints": endpoints_of(net_backends(3))}},
        "healthCheck": {
            "intervalSeconds": HEALTHY_INTERVAL,
            "timeoutSeconds": 1,
            "intervalJitterPercent": 0,
            "http": {},
        },
    }
    pools.create("healthy", healthy_spec)
    pools.wait_ready("healthy", 3)
    alone = watch_rounds(operator, pools, "healthy", 3, WINDOW)

    servers = [hostile(mode, host=NET_HOST) for mode in HOSTILE_MODES]
    hostile_spec = {
        "discovery": {
            "static": {"endpoints": [{"name": f"h-{s.mode}", "address": s.host, "port": s.port} for s in servers]}
        },
        "healthCheck": {
            "intervalSeconds": HOSTILE_TIMEOUT + 1,
            "timeoutSeconds": HOSTILE_TIMEOUT,
            "unhealthyThreshold": 1,
            "http": {"bodyContains": '"status":"ready"'},
        },
    }
    pools.create("hostile", hostile_spec)
    refused_spec = {  # breakers that stay closed: one Event per endpoint, not a cycle of ejections
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "tcp": {}},
        "failover": {"circuitBreaker": {"failureThreshold": 100}},
    }
    for i in range(REFUSED_POOLS):
        endpoints = [
            {"name": f"r-{j}", "address": CLOSED_HOST, "port": 20000 + i * REFUSED_ENDPOINTS + j}
            for j in range(REFUSED_ENDPOINTS)
        ]
        pools.create(f"refused-{i}", {**refused_spec, "discovery": {"static": {"endpoints": endpoints}}})

    def first_round_done(name: str, total: int) -> bool:
        s = pools.status(name)
        return s.get("total") == total and len([e for e in s.get("endpoints", []) if e.get("reason")]) == total

    wait_for(lambda: first_round_done("hostile", len(servers)), 60, "the hostile pool's first round in its status")
    for i in range(REFUSED_POOLS):
        wait_for(lambda i=i: first_round_done(f"refused-{i}", REFUSED_ENDPOINTS), 60, f"refused-{i}'s first round")

    text = _metrics(operator)
    refused_before = sum(
        _sample(text, "clusterpool_round_duration_seconds_count", pools.namespace, f"refused-{i}") or 0
        for i in range(REFUSED_POOLS)
    )
    beside = watch_rounds(operator, pools, "healthy", 3, WINDOW)
    text = _metrics(operator)
    refused_rounds = (
        sum(
            _sample(text, "clusterpool_round_duration_seconds_count", pools.namespace, f"refused-{i}") or 0
            for i in range(REFUSED_POOLS)
        )
        - refused_before
    )
    hostile_round = _sample(text, "clusterpool_round_duration_seconds_sum", pools.namespace, "hostile")
    reasons = {e["name"]: (e.get("health"), e.get("reason")) for e in pools.status("hostile")["endpoints"]}
    figures = {
        "alone": alone,
        "beside_hostile": beside,
        "refused_connects_during_window": int(refused_rounds * REFUSED_ENDPOINTS),
        "hostile_rounds_total_s": hostile_round,
        "hostile_reasons": reasons,
    }
    print("hostile-neighbour figures:", json.dumps(figures))

    # every hostile endpoint is Unhealthy with its own reason, none of them a ProbeError (a bug)
    assert all(h == "Unhealthy" and r not in (None, "ProbeError") for h, r in reasons.values()), reasons
    for phase in (alone, beside):
        assert phase["not_ready_at_s"] == [], f"the healthy pool was not Ready throughout: {phase}"
        assert phase["rounds"] >= 2, f"the healthy pool's rounds stopped: {phase}"
        # held up by the hostile probes, a round would wait out their timeout: interval + timeout apart
        assert phase["max_gap_s"] < HEALTHY_INTERVAL + HOSTILE_TIMEOUT, phase
        assert phase["mean_round_s"] < HOSTILE_TIMEOUT, phase
