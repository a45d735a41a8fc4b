#!/usr/bin/env python3
"""A real Consul agent for tests: built from the Go module proxy, started in -dev mode on
loopback ports.

    python scripts/consul.py build     # build (or find) consul 1.16.3 in the cache
    python scripts/consul.py up DIR    # start `consul agent -dev` on free loopback ports

1.16.x is the last line under MPL-2.0 (1.17 and later are BUSL-1.1); the module proxy here
refuses 1.16.4 ("not available"), so 1.16.3 it is. $CONSUL_BIN, when
set, names an existing binary and wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import cache_root, cached_or_built, free_port, go_build, go_env, log, module_gomod, stop_pid

CONSUL_VERSION = "v1.16.3"
NO_SUMDB = ["github.com/hashicorp/hcp-sdk-go", "github.com/hashicorp/consul/envoyextensions"]


def binary_path() -> Path:
    env = os.environ.get("CONSUL_BIN")
    if env:
        return Path(env)
    return cache_root() / "assets" / f"consul-{CONSUL_VERSION}" / "consul"


def wrapper_gomod(upstream: str) -> str:
    """Require consul; copy its non-local replace and exclude lines (a dependency's are
    ignored); pin its locally-replaced submodules (api, sdk, ...) at the tag's versions."""
    lines = upstream.splitlines()
    go_line = next((ln for ln in lines if ln.startswith("go ")), "go 1.20")
    keep: list[str] = []
    block: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped in ("replace (", "exclude ("):
            block = stripped.split()[0]
            continue
        if block and stripped == ")":
            block = None
            continue
        if block or stripped.startswith(("replace ", "exclude ")):
            body = stripped if block is None else f"{block} {stripped}"
            if "=>" in body and body.split("=>", 1)[1].strip().startswith(("./", "../")):
                continue  # local submodules: resolved through the require below
            if body and not body.startswith("//"):
                keep.append(body)
    return "\n".join(
        [
            "module clusterpool.local/consulwrapper",
            "",
            go_line,
            "",
            f"require github.com/hashicorp/consul {CONSUL_VERSION}",
            "",
            *keep,
            "",
        ]
    )


def build() -> Path:
    return cached_or_built(binary_path(), "CONSUL_BIN", "consul", _build)


def _build() -> None:
    work = cache_root() / "src" / f"consul-{CONSUL_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    log(f"resolving github.com/hashicorp/consul {CONSUL_VERSION}")
    (work / "go.mod").write_text(wrapper_gomod(module_gomod("github.com/hashicorp/consul", CONSUL_VERSION, work)))
    log(f"building consul {CONSUL_VERSION} (cold: several minutes on 2 cores)")
    ldflags = f"-s -w -X github.com/hashicorp/consul/version.GitVersion={CONSUL_VERSION}"
    # The checksum database reached here answers 404 for a few HashiCorp modules of this
    # release (hcp-sdk-go v0.55.0, consul/envoyextensions v0.4.1): those paths alone skip the
    # lookup; they still come from the module proxy, and everything else is verified.
    os.environ["GONOSUMDB"] = ",".join(filter(None, [os.environ.get("GONOSUMDB", ""), *NO_SUMDB]))
    go_build(work, "github.com/hashicorp/consul", binary_path(), ldflags, "consul")


@dataclass
class Agent:
    pid: int
    http: str  # http://127.0.0.1:PORT
    data_dir: str
    https: str | None = None  # https://127.0.0.1:PORT, when started with TLS


def up(
    state_dir: Path,
    timeout: float = 60.0,
    http_port: int | None = None,
    tls: tuple[str, str, str] | None = None,
    acl_token: str | None = None,
) -> Agent:
    """With `tls` (certificate, key and CA files) the agent serves its API over https on a
    port of its own as well. With `acl_token` it enforces ACLs (default deny) and that token
    is the management token."""
    binary = build()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = http_port or free_port()
    ports = {
        "http": port,
        "dns": -1,
        "grpc": -1,
        "grpc_tls": -1,
        "serf_lan": free_port(),
        "serf_wan": free_port(),
        "server": free_port(),
    }
    config: dict[str, object] = {"ports": ports}
    if tls is not None:
        ports["https"] = free_port()
        cert, key, ca = tls
        config["tls"] = {"defaults": {"cert_file": cert, "key_file": key, "ca_file": ca, "verify_incoming": False}}
    if acl_token is not None:
        config["acl"] = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": acl_token}}
    cfg = state_dir / "ports.json"
    cfg.write_text(json.dumps(config))
    out = (state_dir / "consul.log").open("wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "agent",
            "-dev",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            f"-config-file={cfg}",
            "-log-level=warn",
            "-disable-host-node-id",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=go_env(),
    )
    http = f"http://127.0.0.1:{port}"
    agent = Agent(proc.pid, http, str(state_dir), f"https://127.0.0.1:{ports['https']}" if tls else None)
    (state_dir / "agent.json").write_text(json.dumps(asdict(agent)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"consul exited with {proc.returncode}; see {state_dir / 'consul.log'}")
        try:
            with urllib.request.urlopen(f"{http}/v1/status/leader", timeout=1) as r:
                if r.status == 200 and r.read().strip() not in (b'""', b""):
                    log(f"consul ready at {http}")
                    return agent
        except OSError:
            pass
        time.sleep(0.2)
    stop_pid(proc.pid)
    raise SystemExit(f"consul not ready after {timeout:.0f}s; see {state_dir / 'consul.log'}")


def down(agent: Agent) -> None:
    stop_pid(agent.pid)


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "build"
    if cmd == "build":
        print(build())
    elif cmd == "up":
        print(up(Path(sys.argv[2])).http)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
