"""python -m clusterpool: run the operator."""

from __future__ import annotations

import argparse
import os
import sys

import kopf


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
        "--metrics",
        default=os.environ.get("CLUSTERPOOL_METRICS", "none"),
        help="serve Prometheus metrics at this URL, e.g. http://0.0.0.0:9090/metrics (default: none)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)

    kopf.configure(verbose=args.verbose, log_prefix=True)
    import clusterpool.handlers  # noqa: F401  (registers the handlers and their metrics)

    if args.metrics != "none":
        from clusterpool.metrics import REGISTRY, serve

        serve(args.metrics, REGISTRY)

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
