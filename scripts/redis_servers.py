#!/usr/bin/env python3
"""Real Redis servers for tests and benchmarks: redis-server from the distribution's
packages, on free loopback ports, started and stopped (or killed) by the caller.

    python scripts/redis_servers.py install    # apt-get install redis-server when missing
    python scripts/redis_servers.py up DIR     # one server, prints its port (for manual use)

A Redis Cluster is N redis-server processes in cluster mode whose slots are assigned by
`redis-cli --cluster create`. Nothing is persisted (no RDB, no AOF): a killed server comes
back empty, as a restarted cache would.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import free_port


def log(msg: str) -> None:
    print(f"[redis] {msg}", file=sys.stderr, flush=True)


def install() -> None:
    """redis-server and redis-cli from the distribution's packages, when not on PATH."""
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    if not shutil.which("apt-get"):
        raise SystemExit("redis-server is not installed and there is no apt-get: install Redis 7 and retry")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log("installing redis-server from the distribution's packages (apt-get; about a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    log(subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout.strip())


def cluster_port() -> int:
    """A port for a cluster node: at most 55535, with the cluster bus port (port + 10000)
    free as well."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def cli(port: int, *args: str, password: str | None = None, host: str = "127.0.0.1", tls_ca: str | None = None) -> str:
    auth = ["--no-auth-warning", "-a", password] if password else []
    tls = ["--tls", "--cacert", tls_ca] if tls_ca else []
    out = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *tls, *auth, *args], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


@dataclass
class RedisServer:
    """One redis-server. `stop(kill=True)` is a SIGKILL; `start()` again uses the same port.
    With `tls` (certificate, key, CA files) it speaks only TLS on its port."""

    dir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    cluster: bool = False
    host: str = "127.0.0.1"
    tls: tuple[str, str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls:
            cert, key, ca = self.tls
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca]
            args += ["--tls-auth-clients", "no"]
        if self.cluster:
            # a fresh node each start: a killed node forgets its slots, as a lost disk would
            (self.dir / "nodes.conf").unlink(missing_ok=True)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "2000"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited: see {self.dir / 'redis.log'}")
            try:
                tls_ca = self.tls[2] if self.tls else None
                if cli(self.port, "ping", password=self.password, host=self.host, tls_ca=tls_ca) == "PONG":
                    return self
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        self.stop(kill=True)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING within {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisCluster:
    """`masters` redis-server processes in cluster mode, slots spread by redis-cli."""

    dir: Path
    masters: int = 3
    password: str | None = None
    nodes: list[RedisServer] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> RedisCluster:
        self.nodes = []
        for i in range(self.masters):  # one by one, so that stop() finds every node started
            node = RedisServer(self.dir / f"node-{i}", port=cluster_port(), password=self.password, cluster=True)
            self.nodes.append(node)
            node.start()
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(
            ["redis-cli", *auth, "--cluster", "create", *(n.address for n in self.nodes), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in cli(n.port, "cluster", "info", password=self.password) for n in self.nodes):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"the Redis Cluster on {self.addresses} did not reach cluster_state:ok")

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node_of_slot(self, slot: int) -> RedisServer:
        for line in cli(self.nodes[0].port, "cluster", "nodes", password=self.password).splitlines():
            parts = line.split()
            address = parts[1].split("@")[0]
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue  # a slot in migration
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return next(n for n in self.nodes if n.address == address)
        raise LookupError(f"no node serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return cli(node.port, "cluster", "myid", password=self.password)

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """Migrate one slot (and its keys) to another master, as `redis-cli --cluster
        reshard` does, so clients with the old slot map get MOVED."""
        src = self.node_of_slot(slot)
        if src is to:
            return
        pw = self.password
        src_id, dst_id = self.node_id(src), self.node_id(to)
        cli(to.port, "cluster", "setslot", str(slot), "importing", src_id, password=pw)
        cli(src.port, "cluster", "setslot", str(slot), "migrating", dst_id, password=pw)
        while True:
            keys = cli(src.port, "cluster", "getkeysinslot", str(slot), "100", password=pw).split()
            if not keys:
                break
            auth = ["AUTH", pw] if pw else []
            cli(src.port, "migrate", to.host, str(to.port), "", "0", "5000", *auth, "KEYS", *keys, password=pw)
        for node in self.nodes:
            cli(node.port, "cluster", "setslot", str(slot), "node", dst_id, password=pw)

    def stop(self, kill: bool = False) -> None:
        for n in self.nodes:
            n.stop(kill=kill)


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "install"
    if cmd == "install":
        install()
    elif cmd == "up" and len(sys.argv) == 3:
        server = RedisServer(Path(sys.argv[2])).start()
        print(server.port)
        server.proc = None  # leave it running
    else:
        raise SystemExit("usage: redis_servers.py install | up DIR")


if __name__ == "__main__":
    main()
