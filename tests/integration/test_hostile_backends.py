"""Probes against misbehaving backends (real servers, scripts/hostile.py): each probe fails
with a reason that names what happened, within its timeout taken as a deadline for the
whole exchange (not per read), reading a bounded number of bytes; and in the running
operator a pool of such backends does not hold up a healthy pool's rounds."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import controlplane
from backends import HTTPBackend, free_port
from clusterpool.api import MAX_ENDPOINTS, HealthCheck, HTTPCheck
from clusterpool.core.health import Endpoint
from clusterpool.health.probes import MAX_BODY, Prober, probe_all, probe_http
from hostile import HostileServer

TIMEOUT = 1.0
SLACK = 1.0  # for a loaded machine; every server here would hold a probe for far longer than this
CHECK = HTTPCheck()
BODY_CHECK = HTTPCheck(body_contains='"status":"ready"')
HOST = "127.0.0.7"


@pytest.fixture
def hostile():
    started: list[HostileServer] = []

    def make(mode: str, tls=None) -> HostileServer:
        server = HostileServer(mode, HOST, free_port(HOST)).start(tls)
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
    assert MAX_BODY < PEAK_BOUND


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
