"""python -m clusterpool.gateway: run the gateway (flags: --help, docs/gateway.md)."""

from __future__ import annotations

import logging
import sys

import uvloop

from clusterpool.gateway.server import run
from clusterpool.gateway.settings import parse


def main() -> None:
    settings = parse()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(run(settings))


if __name__ == "__main__":
    main()
