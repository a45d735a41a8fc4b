"""etcd discovery against a real etcd (the binary the control plane uses), started by this
module on loopback ports of its own: registrations, bad values, an outage and a restart,
a compaction while the watch is away, and TLS with a client certificate and etcd auth."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import controlplane
from backends import free_port
from conftest import ROOT, wait_for

PROMPT = 10  # a change reaches the pool within a round trip of the watch; generous for a loaded machine


def b64(raw: str | bytes) -> str:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


class Etcd:
    """One etcd member on loopback; `kill` and `start` again keep its data and port."""

    def __init__(self, data: Path, tls: Path | None = None) -> None:
        self.data, self.tls = data, tls
        self.port, self.peer_port = free_port(), free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None  # root's, once auth is on
        verify = ssl.create_default_context(cafile=str(tls / "ca.crt")) if tls else True
        if tls:
            verify.load_cert_chain(str(tls / "pool-client.crt"), str(tls / "pool-client.key"))
        self.http = httpx.Client(base_url=self.url, verify=verify, timeout=10)

    def start(self) -> Etcd:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            str(controlplane.assets_dir() / "etcd"),
            "--name=default",
            f"--data-dir={self.data}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
        ]
        if self.tls:
            cmd += [
                f"--cert-file={self.tls / 'apiserver.crt'}",
                f"--key-file={self.tls / 'apiserver.key'}",
                f"--trusted-ca-file={self.tls / 'ca.crt'}",
                "--client-cert-auth",
            ]
        log = (self.data.parent / f"{self.data.name}.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 30, f"etcd on {self.url}")
        return self

    def _healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        headers = {"Authorization": self.token} if self.token else {}
        r = self.http.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def put(self, key: str, value: object) -> int:
        raw = value if isinstance(value, str) else json.dumps(value)
        return int(self.call("/v3/kv/put", {"key": b64(key), "value": b64(raw)})["header"]["revision"])  # type: ignore[index]

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": b64(key)})

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def close(self) -> None:
        self.kill()
        self.http.close()


class Relay:
    """A TCP relay between the operator and etcd that the test can cut and mend."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                conn.close()
                continue
            up = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def cut(self) -> None:
        self.open = False
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.sockets = []

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data").start()
    yield server
    server.close()


def spec(endpoints, prefix, **extra):
    endpoints = endpoints if isinstance(endpoints, list) else [endpoints]
    return {
        "discovery": {"etcd": {"endpoints": endpoints, "prefix": prefix, **extra}},
        "healthCheck": {"intervalSeconds": 30, "timeoutSeconds": 1, "http": {}},
    }


def register(server, prefix, name, backend, **extra):
    return server.put(f"{prefix}{name}", {"address": backend.host, "port": backend.port, **extra})


def member_names(pools, pool):
    return sorted(e["name"] for e in pools.status(pool).get("endpoints", []))


def test_etcd_keys_reach_the_pool_and_bad_values_are_named(pools, http_backends, etcd):
    prefix = "/services/reach/"
    backends = http_backends(3)
    register(etcd, prefix, "vllm-0", backends[0], weight=3, labels={"model": "llama", "bad key": "x"}, capacity=4)
    register(etcd, prefix, "vllm-1", backends[1])
    etcd.put("/services/reachable/other", {"address": "127.0.0.9", "port": 1})  # a sibling prefix: not ours
    down = f"http://127.0.0.1:{free_port()}"  # an endpoint that does not answer: the next one is used
    pools.create("p", spec([down, etcd.url], prefix))
    status = pools.wait_ready("p", healthy=2)
    assert status["source"] == "Etcd" and pools.condition("p", "DiscoveryDegraded")["status"] == "False"
    first = pools.endpoint("p", "vllm-0")
    assert (first["weight"], first["labels"], first["capacity"]) == (3, {"model": "llama"}, 4)

    register(etcd, prefix, "vllm-2", backends[2])
    pools.wait_ready("p", healthy=3, timeout=PROMPT)
    etcd.put(f"{prefix}broken", {"address": "127.0.0.9", "port": 70000})
    cond = wait_for(
        lambda: (c := pools.condition("p", "DiscoveryDegraded")).get("reason") == "InvalidRegistrations" and c,
        PROMPT,
        "the bad value named",
    )
    assert f"{prefix}broken" in cond["message"] and "port" in cond["message"] and cond["status"] == "True"
    assert pools.status("p")["total"] == 3
    etcd.delete(f"{prefix}vllm-0")
    wait_for(lambda: member_names(pools, "p") == ["vllm-1", "vllm-2"], PROMPT, "vllm-0 gone")
    etcd.delete(f"{prefix}broken")
    wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "False", PROMPT, "no bad value left")
    assert not pools.events("p", "DiscoveryDegraded")  # one endpoint down is no outage while another answers


def test_an_etcd_outage_keeps_the_last_membership_then_converges(pools, http_backends, tmp_path):
    prefix = "/services/outage/"
    server = Etcd(tmp_path / "data").start()
    try:
        backends = http_backends(3)
        for i in range(2):
            register(server, prefix, f"vllm-{i}", backends[i])
        pools.create("p", spec(server.url, prefix))
        pools.wait_ready("p", healthy=2)
        server.kill()
        cond = wait_for(
            lambda: (c := pools.condition("p", "DiscoveryDegraded")).get("status") == "True" and c,
            PROMPT,
            "DiscoveryDegraded",
        )
        assert cond["reason"] == "SourceUnreachable" and "last known endpoints stay in use" in cond["message"]
        assert member_names(pools, "p") == ["vllm-0", "vllm-1"] and pools.condition("p", "Ready")["status"] == "True"
        wait_for(lambda: pools.events("p", "DiscoveryDegraded"), 5, "a DiscoveryDegraded Event")

        server.start()  # the same data and port: the watch resumes where it was
        server.delete(f"{prefix}vllm-0")
        register(server, prefix, "vllm-2", backends[2])
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "False", 40, "recovery")
        wait_for(lambda: member_names(pools, "p") == ["vllm-1", "vllm-2"], PROMPT, "the changes followed")
        wait_for(lambda: pools.events("p", "DiscoveryRecovered"), 5, "a DiscoveryRecovered Event")
        assert not pools.events("p", "DiscoveryResynced")  # resumed from its revision: no full read needed
    finally:
        server.close()


def rounds_done(operator, namespace, pool):
    """Rounds the (new) operator process has finished for the pool, from its metrics."""
    with urllib.request.urlopen(operator.metrics, timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clusterpool_round_duration_seconds_count" and sample.labels == {
                "namespace": namespace,
                "pool": pool,
            }:
                return sample.value
    return 0


def test_an_operator_restart_while_etcd_is_down_starts_from_the_membership_in_status(
    pools, http_backends, operator, tmp_path
):
    prefix = "/services/restart/"
    server = Etcd(tmp_path / "data").start()
    try:
        backends = http_backends(2)
        for i, b in enumerate(backends):
            register(server, prefix, f"vllm-{i}", b)
        pools.create("p", spec(server.url, prefix))
        pools.wait_ready("p", healthy=2)
        server.kill()
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "True", PROMPT, "the outage seen")
        operator.restart(kill=True)
        wait_for(lambda: rounds_done(operator, pools.namespace, "p") >= 2, 30, "two rounds of the new operator")
        assert member_names(pools, "p") == ["vllm-0", "vllm-1"]
        assert pools.condition("p", "Ready")["status"] == "True"
        assert pools.condition("p", "DiscoveryDegraded")["status"] == "True"
        server.start()
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "False", 40, "recovery")
        assert member_names(pools, "p") == ["vllm-0", "vllm-1"]
    finally:
        server.close()


def test_a_watch_behind_a_compaction_reads_everything_again(pools, http_backends, etcd):
    prefix = "/services/compaction/"
    relay = Relay(etcd.port)
    try:
        backends = http_backends(3)
        for i in range(2):
            register(etcd, prefix, f"vllm-{i}", backends[i])
        pools.create("p", spec(f"http://127.0.0.1:{relay.port}", prefix))
        pools.wait_ready("p", healthy=2)
        relay.cut()
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "True", PROMPT, "the cut seen")

        etcd.delete(f"{prefix}vllm-0")
        register(etcd, prefix, "vllm-2", backends[2])
        etcd.compact(etcd.put("/services/unrelated", "x"))  # the history the watch needs is gone
        relay.mend()
        resync = wait_for(lambda: pools.events("p", "DiscoveryResynced"), 40, "a DiscoveryResynced Event")
        assert "compacted" in resync[0].message
        wait_for(lambda: member_names(pools, "p") == ["vllm-1", "vllm-2"], PROMPT, "the membership read again")
        wait_for(lambda: pools.condition("p", "DiscoveryDegraded").get("status") == "False", PROMPT, "reachable")
        register(etcd, prefix, "vllm-0", backends[0])  # and the watch goes on from the new revision
        wait_for(lambda: member_names(pools, "p") == ["vllm-0", "vllm-1", "vllm-2"], PROMPT, "watching again")
    finally:
        relay.close()


def registrar(server, prefix, name, backend, ttl):
    """examples/register_in_etcd.py, running: the key lives as long as its lease."""
    cmd = [sys.executable, str(ROOT / "examples" / "register_in_etcd.py"), server.url, prefix, name]
    proc = subprocess.Popen(
        [*cmd, backend.host, str(backend.port), "--ttl", str(ttl), "--label", "model=llama"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("registered"), "the registrar did not start"
    return proc


def test_the_example_registrar_comes_and_goes_with_its_lease(pools, http_backends, etcd):
    prefix, ttl = "/services/lease/", 3
    backends = http_backends(2)
    stays, dies = (registrar(etcd, prefix, f"lease-{i}", b, ttl) for i, b in enumerate(backends))
    try:
        pools.create("p", spec(etcd.url, prefix))
        pools.wait_ready("p", healthy=2)
        dies.kill()  # no revoke: the lease runs out
        dies.wait(10)
        wait_for(lambda: member_names(pools, "p") == ["lease-0"], ttl + PROMPT, "the expired key dropped")
        time.sleep(ttl)  # the survivor's lease is renewed meanwhile
        assert member_names(pools, "p") == ["lease-0"]
        stays.terminate()  # revokes its lease: the key goes at once
        stays.wait(10)
        wait_for(lambda: member_names(pools, "p") == [], PROMPT, "the revoked key dropped")
    finally:
        for proc in (stays, dies):
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory):
    certs = tmp_path_factory.mktemp("etcd-certs")
    # a CA; a serving certificate for 127.0.0.1 that is also a client one (etcd's gateway dials
    # its own server with it under --client-cert-auth); a client certificate without a common
    # name (with auth on, the gateway refuses one that has a name: it cannot carry it to etcd)
    controlplane.make_certs(certs, clients={"pool-client": ("", "clusterpool")}, serving_cert_for_clients_too=True)
    server = Etcd(tmp_path_factory.mktemp("etcd-tls") / "data", tls=certs).start()
    prefix = "/services/secure/"
    server.call("/v3/auth/user/add", {"name": "root", "password": "root-password"})
    server.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
    server.call("/v3/auth/role/add", {"name": "pool-reader"})
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    perm = {"permType": "READ", "key": b64(prefix), "range_end": b64(end)}
    server.call("/v3/auth/role/grant", {"name": "pool-reader", "perm": perm})
    server.call("/v3/auth/user/add", {"name": "clusterpool", "password": "s3cret"})
    server.call("/v3/auth/user/grant", {"user": "clusterpool", "role": "pool-reader"})
    server.call("/v3/auth/enable", {})
    server.token = str(server.call("/v3/auth/authenticate", {"name": "root", "password": "root-password"})["token"])
    server.prefix = prefix
    server.certs = certs
    yield server
    server.close()


def test_tls_client_certificate_and_etcd_user_from_secrets(pools, http_backends, etcd_tls):
    server, prefix, certs = etcd_tls, etcd_tls.prefix, etcd_tls.certs
    backends = http_backends(2)
    register(server, prefix, "secure-0", backends[0])
    data = {
        "ca.crt": (certs / "ca.crt").read_text(),
        "tls.crt": (certs / "pool-client.crt").read_text(),
        "tls.key": (certs / "pool-client.key").read_text(),
        "named.crt": (certs / "admin.crt").read_text(),
        "named.key": (certs / "admin.key").read_text(),
    }
    pools.core.create_namespaced_secret(pools.namespace, {"metadata": {"name": "etcd-tls"}, "stringData": data})
    for name, password in (("etcd-user", "s3cret"), ("etcd-wrong", "guess")):
        body = {"metadata": {"name": name}, "stringData": {"password": password}}
        pools.core.create_namespaced_secret(pools.namespace, body)

    def ref(secret, key):
        return {"name": secret, "key": key}

    tls = {
        "caSecretRef": ref("etcd-tls", "ca.crt"),
        "certSecretRef": ref("etcd-tls", "tls.crt"),
        "keySecretRef": ref("etcd-tls", "tls.key"),
    }
    user = {"username": "clusterpool", "passwordSecretRef": ref("etcd-user", "password")}
    pools.create("trusted", spec(server.url, prefix, **tls, **user))
    pools.create(
        "wrong-password", spec(server.url, prefix, **tls, **user | {"passwordSecretRef": ref("etcd-wrong", "password")})
    )
    pools.create("no-client-cert", spec(server.url, prefix, caSecretRef=ref("etcd-tls", "ca.crt"), **user))
    pools.create("missing-ca", spec(server.url, prefix, **tls | {"caSecretRef": ref("nope", "ca.crt")}, **user))
    pools.create("no-user", spec(server.url, prefix, **tls))
    named = {"certSecretRef": ref("etcd-tls", "named.crt"), "keySecretRef": ref("etcd-tls", "named.key")}
    pools.create("named-client-cert", spec(server.url, prefix, **tls | named, **user))
    wait_for(lambda: member_names(pools, "trusted") == ["secure-0"], 30, "the trusted pool to read etcd")
    assert pools.condition("trusted", "DiscoveryDegraded")["status"] == "False"
    for name, text in (
        ("wrong-password", "authentication failed"),
        ("no-client-cert", "set certSecretRef and keySecretRef"),
        ("missing-ca", "named by caSecretRef"),
        ("no-user", "user name is empty"),
        ("named-client-cert", "CommonName"),
    ):
        cond = wait_for(
            lambda n=name: (c := pools.condition(n, "DiscoveryDegraded")).get("status") == "True" and c,
            30,
            f"{name}: DiscoveryDegraded",
        )
        assert text in cond["message"], (name, cond)
        assert "s3cret" not in cond["message"] and "guess" not in cond["message"]
        assert pools.status(name).get("total", 0) == 0

    # a restarted etcd has forgotten every auth token: the trusted pool asks for a new one
    server.kill()
    server.start()
    server.token = None
    server.token = str(server.call("/v3/auth/authenticate", {"name": "root", "password": "root-password"})["token"])
    register(server, prefix, "secure-1", backends[1])
    wait_for(lambda: member_names(pools, "trusted") == ["secure-0", "secure-1"], 40, "the trusted pool after a restart")
