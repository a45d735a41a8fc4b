"""python -m clusterpool: run the operator."""

from __future__ import annotations

import argparse
import os
import socket
import sys

import kopf

from clusterpool.memory import GIVE_BACK_EVERY


def default_identity() -> str:
    """Unique per process on one host; in a pod the chart sets POD_NAME instead."""
    return f"{socket.gethostname()}-{os.getpid()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clusterpool", description="Run the ClusterPool operator.")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; globs allowed); default: all namespaces",
    )
    p.add_argument(
        "--liveness",
        default=os.environ.get("CLUSTERPOOL_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="liveness endpoint URL (default http://0.0.0.0:8080/healthz); 'none' disables it",
    )
    p.add_argument(
        "--readiness",
        default=os.environ.get("CLUSTERPOOL_READINESS", "none"),
        help="readiness endpoint URL, e.g. http://0.0.0.0:8081/readyz: 200 once this replica drives its share "
        "of the pools (holds its shard Lease, hand-over wait over), 503 before (default: none)",
    )
    p.add_argument(
        "--metrics",
        default=os.environ.get("CLUSTERPOOL_METRICS", "none"),
        help="serve Prometheus metrics at this URL, e.g. http://0.0.0.0:9090/metrics (default: none)",
    )
    p.add_argument(
        "--identity",
        default=os.environ.get("CLUSTERPOOL_IDENTITY") or os.environ.get("POD_NAME") or default_identity(),
        help="this replica's name in Leases and Events (default: $POD_NAME, else <hostname>-<pid>)",
    )
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "default",
        help="namespace of the replicas' shard Leases (default: $POD_NAMESPACE, else default)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=float(os.environ.get("CLUSTERPOOL_LEASE_SECONDS") or 15),
        help="how long a replica's Lease lasts unrenewed; its pools move to the others after that (default 15)",
    )
    p.add_argument(
        "--give-back-seconds",
        type=float,
        default=float(os.environ.get("CLUSTERPOOL_GIVE_BACK_SECONDS") or GIVE_BACK_EVERY),
        help="give memory the operator freed back to the system this often (glibc's malloc_trim; "
        f"0: only after pools are deleted; default {GIVE_BACK_EVERY:g})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.identity = args.identity or default_identity()  # never empty: kopf would ask getpass then

    if args.readiness != "none":
        from clusterpool.readiness import parse_url

        try:
            parse_url(args.readiness)
        except ValueError as exc:
            p.error(str(exc))

    kopf.configure(verbose=args.verbose, log_prefix=True)
    import clusterpool.handlers  # noqa: F401  (registers the handlers and their metrics)

    if args.metrics != "none":
        from clusterpool.handlers import METRICS
        from clusterpool.metrics import serve

        serve(args.metrics, METRICS)

    from clusterpool.memory import collect_less_often

    collect_less_often()

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
        # Given, so kopf never derives one from getpass.getuser(): that raises in an image
        # whose uid has no passwd entry (the chart runs as 65532, which has none).
        identity=args.identity,
        memo=kopf.Memo(
            identity=args.identity,
            lease_namespace=args.lease_namespace,
            lease_seconds=args.lease_seconds,
            give_back_seconds=args.give_back_seconds,
            readiness=args.readiness,
            # Namespaces given by name: the published objects are listed in each (namespaced
            # RBAC grants no list in other namespaces); with a glob, in every namespace.
            list_namespaces=() if any(set("*?[!,") & set(n) for n in args.namespace) else tuple(args.namespace),
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
