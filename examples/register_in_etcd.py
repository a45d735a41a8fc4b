"""Register a backend in etcd for a ClusterPool that follows the prefix (spec.discovery.etcd).

    python examples/register_in_etcd.py http://127.0.0.1:2379 /services/vllm/ gpu-0 198.18.0.20 8000 \\
        [--ttl 10] [--weight 2] [--label model=llama-3-8b]

The key (prefix + name) holds the JSON value the operator reads, under a lease that this
process renews every ttl/3 seconds: when the process stops (or hangs, or its machine goes
away) the key expires after at most `ttl` seconds and the pool drops the endpoint; on
SIGTERM or Ctrl-C it revokes the lease, and the key goes at once. When etcd cannot be
reached to renew the lease it exits with the error (and the key expires). It speaks etcd's
v3 JSON gateway with httpx, like the operator (docs/etcd.md); add a user's token or TLS
options to the client for an etcd with auth or TLS.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
from typing import Any

import httpx


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def call(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(path, json=body)
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("etcd", help="etcd's client URL, e.g. http://127.0.0.1:2379")
    p.add_argument("prefix", help="the prefix the pool follows, e.g. /services/vllm/")
    p.add_argument("name", help="the endpoint's name: the rest of its key")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("--ttl", type=int, default=10, help="seconds the key outlives this process (default 10)")
    p.add_argument("--weight", type=int, default=1)
    p.add_argument("--label", action="append", default=[], help="key=value, repeatable")
    args = p.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    value = {"address": args.address, "port": args.port, "weight": args.weight, "labels": labels}

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with httpx.Client(base_url=args.etcd, timeout=5) as http:
        lease = call(http, "/v3/lease/grant", {"TTL": str(args.ttl)})["ID"]
        call(http, "/v3/kv/put", {"key": b64(args.prefix + args.name), "value": b64(json.dumps(value)), "lease": lease})
        print(f"registered {args.prefix}{args.name} under lease {lease} (ttl {args.ttl}s)", flush=True)
        while not stop.wait(args.ttl / 3):
            call(http, "/v3/lease/keepalive", {"ID": lease})
        call(http, "/v3/lease/revoke", {"ID": lease})
        print(f"deregistered {args.prefix}{args.name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
